// FakeKernel: a test double of the dm-userspace control device (protocol 2)
// that applies the validation rules the protocol header documents (every
// field checked, write() stops at the first bad message, whole-write refusal
// for lengths that are not a multiple of 64) and keeps the state a daemon
// restart depends on:
//   - allocation records: every answer that must report DONE (a write MAP
//     whatever the answer, a discard MAP, an answer or push with NEW
//     extents), in the order the answers were applied.  LIST_ALLOCATIONS
//     lists their NEW extents and the ranges of applied discards;
//   - DONE: the test says when an answer's work is finished (finish(), or
//     auto_done for "at once"); the DONE carries the MAP's flags, block and
//     nr_blocks.  A discard's DONE is refused while an answer applied before
//     it has not reported DONE yet, as the header orders;
//   - publishing: COMMITTED(0) publishes (drops) every record whose DONE was
//     read before that COMMIT was read;
//   - restart: rebind() is a new daemon binding after the old one went away:
//     it reads again every DONE the old one read that no successful COMMITTED
//     covered (original order), then the MAP/COMMIT requests read but not
//     answered (BIND's resent), then the rest.
// The test daemon's unit tests run against it; the same daemon runs against
// the real module in tests/vm/cases/kmod-*.sh.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <map>
#include <optional>
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
        dev_sectors_(std::move(dev_sectors)),
        writable_devs_(static_cast<uint32_t>(dev_sectors_.size())) {}

  // What BIND reports; `resent` overrides the count of requests handed again.
  mapper::BindInfo bind_info(std::optional<uint64_t> resent = std::nullopt) const {
    mapper::BindInfo b;
    b.version_major = DMU_VERSION_MAJOR;
    b.version_minor = DMU_VERSION_MINOR;
    b.version_patch = DMU_VERSION_PATCH;
    b.features = DMU_FEATURE_ALL;
    b.target_sectors = target_sectors_;
    b.block_sectors = block_sectors_;
    b.nr_devs = static_cast<uint32_t>(dev_sectors_.size());
    b.resent = resent ? *resent : resent_;
    b.allocations = listed().size();
    b.writable_devs = writable_devs_;
    return b;
  }
  // The table's `writable_devs <n>`.
  void set_writable_devs(uint32_t n) { writable_devs_ = n; }
  // Queue DONE (status 0) as soon as an answer that reports DONE is applied.
  bool auto_done = false;

  // Queues a request for the daemon and marks MAP/COMMIT ids pending.
  void issue(const dmu_request& q) {
    inbox_.push_back(q);
    if (q.type == DMU_REQ_MAP) {
      pending_maps_.insert(q.id);
      maps_[q.id] = q;
    }
    if (q.type == DMU_REQ_COMMIT) pending_commits_.insert(q.id);
  }

  // The work of the answer to `id` (a MAP or push id) is finished: its DONE
  // is queued with `status`.  False when no answer awaits a DONE under that
  // id, or for a discard while an answer applied before it has not reported
  // DONE yet (the kernel orders those).
  bool finish(uint64_t id, int32_t status = 0) {
    auto it = std::find_if(records_.begin(), records_.end(),
                           [&](const Record& r) { return r.id == id && !r.done_queued; });
    if (it == records_.end()) return false;
    if (it->discard)
      for (auto e = records_.begin(); e != it; ++e)
        if (!e->done_queued) return false;
    queue_done(*it, it->status ? it->status : status);
    return true;
  }
  // Finishes every answer awaiting DONE, in application order.
  void finish_all(int32_t status = 0) {
    for (Record& r : records_)
      if (!r.done_queued) queue_done(r, r.status ? r.status : status);
  }

  // The daemon went away and a new one binds: returns BIND's resent.
  uint64_t rebind() {
    std::vector<Record*> redeliver;
    for (Record& r : records_)
      if (r.done_read) redeliver.push_back(&r);
    std::sort(redeliver.begin(), redeliver.end(),
              [](const Record* a, const Record* b) { return a->done_read_seq < b->done_read_seq; });
    std::deque<dmu_request> inbox;
    for (Record* r : redeliver) {
      inbox.push_back(r->done);
      r->done_read = false;
    }
    for (const dmu_request& q : read_unanswered_) inbox.push_back(q);
    resent_ = read_unanswered_.size();
    read_unanswered_.clear();
    commit_read_seq_.clear();
    inbox.insert(inbox.end(), inbox_.begin(), inbox_.end());
    inbox_ = std::move(inbox);
    answers_.clear();  // a half-written answer dies with its daemon
    return resent_;
  }

  Result<size_t> read_requests(std::span<dmu_request> out, std::chrono::milliseconds) override {
    size_t n = 0;
    while (n < out.size() && !inbox_.empty()) {
      const dmu_request q = inbox_.front();
      inbox_.pop_front();
      out[n++] = q;
      read_log.push_back(q);
      ++read_seq_;
      if (q.type == DMU_REQ_DONE) {
        for (Record& r : records_)
          if (r.id == q.id && r.done_queued && !r.done_read) {
            r.done_read = true;
            r.done_read_seq = read_seq_;
            break;
          }
      } else if (q.type == DMU_REQ_COMMIT) {
        commit_read_seq_[q.id] = read_seq_;
        read_unanswered_.push_back(q);
      } else if (q.type == DMU_REQ_MAP) {
        read_unanswered_.push_back(q);
      }
    }
    return n;
  }

  Result<mapper::WriteOutcome> write_responses(std::span<const dmu_response> batch) override {
    long r = write_raw({reinterpret_cast<const uint8_t*>(batch.data()), batch.size_bytes()});
    return mapper::interpret_write(r < 0 ? -1 : r, r < 0 ? static_cast<int>(-r) : 0,
                                   batch.size_bytes(), "fake");
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
        if (pending_maps_.erase(r.id)) {
          failed[r.id] = -EIO;
          answered(r.id);
          // A bad answer to a write MAP still reports DONE, with -EIO.
          if (maps_[r.id].flags & DMU_MAP_WRITE) add_record(r.id, {}, -EIO);
        }
        answers_.erase(r.id);
        return i == 0 ? -EINVAL : static_cast<long>(i * DMU_MSG_SIZE);
      }
      apply(r);
    }
    return static_cast<long>(bytes.size());
  }

  Result<std::vector<dmu_extent_info>> list_extents() override { return cache; }

  Result<std::vector<dmu_allocation>> list_allocations() override {
    ++list_allocation_calls;
    return listed();
  }

  bool pending(uint64_t id) const { return pending_maps_.count(id) || pending_commits_.count(id); }
  // Answers still awaiting publication (DONE read + COMMITTED(0) after it).
  size_t unpublished() const { return records_.size(); }
  size_t queued() const { return inbox_.size(); }

  // Every request a daemon read, in order (across rebinds).
  std::vector<dmu_request> read_log;
  // Accepted messages, in order; and how each request ended.
  std::vector<dmu_response> accepted;
  std::map<uint64_t, int> completed;  // MAP id -> 0 (answered) or status of COMPLETE
  std::map<uint64_t, int> failed;     // MAP id -> -EIO (bad answer)
  std::map<uint64_t, int> committed;
  std::set<uint64_t> published;  // ids whose records a COMMITTED(0) published
  std::vector<dmu_extent_info> cache;
  int writes = 0;
  int bad_messages = 0;
  int list_allocation_calls = 0;

 private:
  struct Record {
    uint64_t id = 0;
    bool discard = false;  // an applied discard: listed as its range
    std::vector<dmu_response> new_extents;
    int32_t status = 0;  // forced status of its DONE (a bad answer: -EIO)
    dmu_request done{};  // once queued
    bool done_queued = false;
    bool done_read = false;
    uint64_t done_read_seq = 0;
  };

  uint64_t blocks() const { return (target_sectors_ + block_sectors_ - 1) / block_sectors_; }
  bool id_ok(uint64_t id) const { return proto::is_push_id(id) || pending_maps_.count(id); }

  std::vector<dmu_allocation> listed() const {
    std::vector<dmu_allocation> out;
    for (const Record& r : records_) {
      const uint32_t done = r.done_queued ? DMU_ALLOC_DONE : 0;
      if (r.discard) {
        const dmu_request& q = maps_.at(r.id);
        out.push_back({r.id, q.block, q.nr_blocks, 0, 0, DMU_ALLOC_DISCARD | done});
      }
      for (const dmu_response& e : r.new_extents)
        out.push_back({r.id, e.block, e.nr_blocks, e.sector, e.dev,
                       (proto::is_push_id(r.id) ? DMU_ALLOC_PUSH : 0u) | done});
    }
    return out;
  }

  void queue_done(Record& r, int32_t status) {
    if (proto::is_push_id(r.id)) {
      r.done = proto::done_request(r.id, status);
    } else {
      r.done = proto::done_for(maps_.at(r.id), status);
    }
    r.done_queued = true;
    inbox_.push_back(r.done);
  }

  void add_record(uint64_t id, std::vector<dmu_response> new_extents, int32_t status,
                  bool discard = false) {
    Record rec;
    rec.id = id;
    rec.discard = discard;
    rec.new_extents = std::move(new_extents);
    rec.status = status;
    records_.push_back(std::move(rec));
    if (auto_done) queue_done(records_.back(), status);
  }

  // The request `id` got its whole answer: it is no longer read-unanswered.
  void answered(uint64_t id) {
    read_unanswered_.erase(std::remove_if(read_unanswered_.begin(), read_unanswered_.end(),
                                          [&](const dmu_request& q) { return q.id == id; }),
                           read_unanswered_.end());
  }

  // Applies a whole answer (FINAL or COMPLETE) to MAP or push `id`.
  void answer_applied(uint64_t id, const std::vector<dmu_response>& extents, int32_t status) {
    std::vector<dmu_response> fresh;
    for (const dmu_response& e : extents)
      if (e.ext_flags & DMU_EXT_NEW) fresh.push_back(e);
    const uint32_t flags = proto::is_push_id(id) ? 0 : maps_[id].flags;
    const bool discard = flags & DMU_MAP_DISCARD;
    if ((flags & DMU_MAP_WRITE) || discard || !fresh.empty())
      add_record(id, std::move(fresh), 0, discard && status == 0);
  }

  void publish(uint64_t commit_id) {
    auto seq = commit_read_seq_.find(commit_id);
    if (seq == commit_read_seq_.end()) return;
    for (auto it = records_.begin(); it != records_.end();) {
      if (it->done_read && it->done_read_seq < seq->second) {
        published.insert(it->id);
        it = records_.erase(it);
      } else {
        ++it;
      }
    }
    commit_read_seq_.erase(seq);
  }

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
        if ((r.ext_flags & DMU_EXT_WRITABLE) && r.dev >= writable_devs_) return false;
        if (!proto::is_push_id(r.id) && (maps_.at(r.id).flags & DMU_MAP_DISCARD) &&
            (r.ext_flags & DMU_EXT_NEW))
          return false;
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
        answered(r.id);
        answer_applied(r.id, {}, r.status);
        return;
      case DMU_RSP_COMMITTED:
        committed[r.id] = r.status;
        pending_commits_.erase(r.id);
        answered(r.id);
        if (r.status == 0) publish(r.id);
        commit_read_seq_.erase(r.id);
        return;
      default:
        break;
    }
    if (r.flags & DMU_RSP_FINAL) {
      const bool was_pending = pending_maps_.erase(r.id);
      if (was_pending) completed[r.id] = 0;
      if (was_pending || proto::is_push_id(r.id)) {
        answered(r.id);
        answer_applied(r.id, answers_[r.id], 0);
      }
      answers_.erase(r.id);
    }
  }

  uint64_t target_sectors_;
  uint32_t block_sectors_;
  std::vector<uint64_t> dev_sectors_;
  uint32_t writable_devs_;
  std::deque<dmu_request> inbox_;
  std::set<uint64_t> pending_maps_;
  std::set<uint64_t> pending_commits_;
  std::map<uint64_t, dmu_request> maps_;                   // every MAP issued, by id
  std::map<uint64_t, std::vector<dmu_response>> answers_;  // extents of answers in progress
  std::vector<Record> records_;                            // in application order
  std::vector<dmu_request> read_unanswered_;               // MAP/COMMIT, in read order
  std::map<uint64_t, uint64_t> commit_read_seq_;           // COMMIT id -> when it was read
  uint64_t read_seq_ = 0;
  uint64_t resent_ = 0;
};

}  // namespace dmu::testd
