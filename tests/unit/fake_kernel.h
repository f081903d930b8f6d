// FakeKernel: a test double of the dm-userspace control device that applies
// the validation rules the protocol header documents (every field checked,
// write() stops at the first bad message, whole-write refusal for lengths
// that are not a multiple of 64) and keeps track of pending requests.  The
// test daemon's unit tests run against it; the same daemon runs against the
// real module in tests/vm/cases/kmod-*.sh.
#pragma once

#include <cerrno>
#include <cstring>
#include <deque>
#include <map>
#include <set>
#include <vector>

#include "mapper/protocol.h"
#include "tests/kmod/daemon_channel.h"

namespace dmu::testd {

class FakeKernel final : public DaemonChannel {
 public:
  FakeKernel(uint64_t target_sectors, uint32_t block_sectors, std::vector<uint64_t> dev_sectors)
      : target_sectors_(target_sectors),
        block_sectors_(block_sectors),
        dev_sectors_(std::move(dev_sectors)) {}

  BindInfo bind_info(uint64_t resent = 0) const {
    return {DMU_VERSION_MAJOR,
            DMU_VERSION_MINOR,
            DMU_VERSION_PATCH,
            DMU_FEATURE_ALL,
            target_sectors_,
            block_sectors_,
            static_cast<uint32_t>(dev_sectors_.size()),
            resent};
  }

  // Queues a request for the daemon and marks MAP/COMMIT ids pending.
  void issue(const dmu_request& q) {
    inbox_.push_back(q);
    if (q.type == DMU_REQ_MAP) pending_maps_.insert(q.id);
    if (q.type == DMU_REQ_COMMIT) pending_commits_.insert(q.id);
  }

  Result<size_t> read_requests(std::span<dmu_request> out, std::chrono::milliseconds) override {
    size_t n = 0;
    while (n < out.size() && !inbox_.empty()) {
      out[n++] = inbox_.front();
      inbox_.pop_front();
    }
    return n;
  }

  Result<WriteOutcome> write_responses(std::span<const dmu_response> batch) override {
    long r = write_raw({reinterpret_cast<const uint8_t*>(batch.data()), batch.size_bytes()});
    return interpret_write(r < 0 ? -1 : r, r < 0 ? static_cast<int>(-r) : 0, batch.size_bytes(),
                           "fake");
  }

  long write_raw(std::span<const uint8_t> bytes) override {
    ++writes;
    if (bytes.size() % DMU_MSG_SIZE != 0 || bytes.empty()) return -EINVAL;
    const size_t n = bytes.size() / DMU_MSG_SIZE;
    for (size_t i = 0; i < n; ++i) {
      dmu_response r;
      std::memcpy(&r, bytes.data() + i * DMU_MSG_SIZE, sizeof r);
      if (!valid(r)) {
        ++bad_messages;
        if (pending_maps_.erase(r.id)) failed[r.id] = -EIO;
        answers_.erase(r.id);
        return i == 0 ? -EINVAL : static_cast<long>(i * DMU_MSG_SIZE);
      }
      apply(r);
    }
    return static_cast<long>(bytes.size());
  }

  Result<std::vector<dmu_extent_info>> list_extents() override { return cache; }

  bool pending(uint64_t id) const { return pending_maps_.count(id) || pending_commits_.count(id); }

  // Accepted messages, in order; and how each request ended.
  std::vector<dmu_response> accepted;
  std::map<uint64_t, int> completed;  // MAP id -> 0 (answered) or status of COMPLETE
  std::map<uint64_t, int> failed;     // MAP id -> -EIO (bad answer)
  std::map<uint64_t, int> committed;
  std::vector<dmu_extent_info> cache;
  int writes = 0;
  int bad_messages = 0;

 private:
  uint64_t blocks() const { return (target_sectors_ + block_sectors_ - 1) / block_sectors_; }
  bool id_ok(uint64_t id) const { return proto::is_push_id(id) || pending_maps_.count(id); }

  bool valid(const dmu_response& r) const {
    if (r.flags & ~uint32_t{DMU_RSP_FINAL} || r.reserved) return false;
    switch (r.type) {
      case DMU_RSP_EXTENT: {
        if (!id_ok(r.id) || r.status || r.nr_blocks == 0) return false;
        if (r.block >= blocks() || r.nr_blocks > blocks() - r.block) return false;
        if (r.kind == DMU_EXT_ZERO) return r.dev == 0 && r.sector == 0 && r.ext_flags == 0;
        if (r.kind != DMU_EXT_REMAP) return false;
        if (r.ext_flags & ~uint32_t{DMU_EXT_WRITABLE | DMU_EXT_NEW}) return false;
        if ((r.ext_flags & DMU_EXT_NEW) && !(r.ext_flags & DMU_EXT_WRITABLE)) return false;
        if (r.dev >= dev_sectors_.size()) return false;
        const uint64_t len = r.nr_blocks * block_sectors_;
        return r.sector <= dev_sectors_[r.dev] && len <= dev_sectors_[r.dev] - r.sector;
      }
      case DMU_RSP_COPY: {
        if (!id_ok(r.id) || r.status || r.kind || r.ext_flags || r.nr_blocks == 0) return false;
        if (r.dev >= dev_sectors_.size() || r.sector > dev_sectors_[r.dev] ||
            r.nr_blocks > dev_sectors_[r.dev] - r.sector)
          return false;
        auto it = answers_.find(r.id);
        if (it == answers_.end()) return false;
        for (const auto& e : it->second) {  // must lie inside a NEW extent of this answer
          const uint64_t first = e.block * block_sectors_, count = e.nr_blocks * block_sectors_;
          if ((e.ext_flags & DMU_EXT_NEW) && r.block >= first && r.block - first < count &&
              r.nr_blocks <= count - (r.block - first))
            return true;
        }
        return false;
      }
      case DMU_RSP_COMPLETE:
        return pending_maps_.count(r.id) && r.status <= 0 && !r.block && !r.nr_blocks && !r.kind &&
               !r.ext_flags && !r.dev && !r.sector;
      case DMU_RSP_COMMITTED:
        return pending_commits_.count(r.id) && r.status <= 0;
      case DMU_RSP_INVALIDATE:
        return r.id == 0 && r.nr_blocks && r.block < blocks() &&
               r.nr_blocks <= blocks() - r.block && !r.kind && !r.dev && !r.sector;
      default:
        return false;
    }
  }

  void apply(const dmu_response& r) {
    accepted.push_back(r);
    switch (r.type) {
      case DMU_RSP_EXTENT:
        answers_[r.id].push_back(r);
        cache.push_back({r.block, r.nr_blocks, r.sector, r.dev, r.kind,
                         r.ext_flags & DMU_EXT_WRITABLE,
                         proto::is_push_id(r.id) ? DMU_EXTENT_PUSHED : 0u});
        break;
      case DMU_RSP_COMPLETE:
        completed[r.id] = r.status;
        pending_maps_.erase(r.id);
        answers_.erase(r.id);
        return;
      case DMU_RSP_COMMITTED:
        committed[r.id] = r.status;
        pending_commits_.erase(r.id);
        return;
      default:
        break;
    }
    if (r.flags & DMU_RSP_FINAL) {
      if (pending_maps_.erase(r.id)) completed[r.id] = 0;
      answers_.erase(r.id);
    }
  }

  uint64_t target_sectors_;
  uint32_t block_sectors_;
  std::vector<uint64_t> dev_sectors_;
  std::deque<dmu_request> inbox_;
  std::set<uint64_t> pending_maps_;
  std::set<uint64_t> pending_commits_;
  std::map<uint64_t, std::vector<dmu_response>> answers_;  // extents of answers in progress
};

}  // namespace dmu::testd
