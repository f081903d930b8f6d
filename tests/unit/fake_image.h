// A small in-memory format engine for the map service and transport tests:
// behaves like a sparse cluster format (qcow2-like: data, zero, unallocated
// and compressed granules; optional subclusters sharing their cluster's host
// space) so protocol logic can be tested on shapes a given real engine may
// not produce, independently of the real engines.  Metadata lives in memory;
// it tracks which allocations were committed so tests can check that commit
// never publishes an allocation before its write_done.
#pragma once

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <vector>

#include "fileio/mem_env.h"
#include "formats/image.h"

namespace dmu::test {

class FakeImage final : public formats::Image {
 public:
  enum class Kind { Unallocated, Data, Zero, Compressed };
  struct Granule {
    Kind kind = Kind::Unallocated;
    uint64_t host = 0;
    std::vector<uint8_t> compressed;  // Compressed: the plain bytes
  };

  // cluster: allocation unit; granularity: mapping unit (== cluster unless
  // subclusters are wanted).
  FakeImage(MemEnv& env, const std::string& path, uint64_t size, uint64_t cluster,
            uint64_t granularity = 0, bool writable = true)
      : writable_(writable) {
    info_.format = "fake";
    info_.filename = path;
    info_.virtual_size = size;
    info_.cluster_size = cluster;
    info_.granularity = granularity ? granularity : cluster;
    file_ = *env.open(path, OpenMode::CreateTruncate);
    granules_.resize(size / info_.granularity + (size % info_.granularity != 0));
    next_host_ = cluster;  // host cluster 0 is "the header"
  }

  // --- test setup ---
  void put_data(uint64_t offset, const std::vector<uint8_t>& bytes) {
    const uint64_t g = info_.granularity;
    for (uint64_t pos = 0; pos < bytes.size();) {
      const uint64_t at = offset + pos;
      Granule& gr = granules_[at / g];
      if (gr.kind != Kind::Data) gr = Granule{Kind::Data, host_for(at - at % g), {}};
      const uint64_t n = std::min<uint64_t>(g - at % g, bytes.size() - pos);
      (void)file_->write(gr.host + at % g, std::span(bytes).subspan(pos, n));
      pos += n;
    }
  }
  void put_zero(uint64_t offset, uint64_t length) {
    for (uint64_t pos = 0; pos < length; pos += info_.granularity)
      granules_[(offset + pos) / info_.granularity] = Granule{Kind::Zero, 0, {}};
  }
  void put_compressed(uint64_t offset, const std::vector<uint8_t>& bytes) {
    const uint64_t g = info_.granularity;
    for (uint64_t pos = 0; pos < bytes.size(); pos += g) {
      const uint64_t n = std::min<uint64_t>(g, bytes.size() - pos);
      granules_[(offset + pos) / g] =
          Granule{Kind::Compressed, 0, {bytes.begin() + pos, bytes.begin() + pos + n}};
    }
  }
  void set_backing(const std::string& name) { info_.backing_file = name; }
  void fail_next_prepare(int code) { fail_prepare_ = code; }
  void fail_commit(int code) { fail_commit_ = code; }
  // write_done(token, true) fails from now on: the write not applied (as
  // qcow2's does after a failed metadata update), or applied (as qcow2's
  // does when an early commit after it fails).
  void fail_write_done(int code, bool applied = false) {
    fail_write_done_ = code;
    fail_write_done_applied_ = applied;
  }

  // --- observations ---
  size_t prepares() const { return prepares_; }
  std::set<uint64_t> done_tokens, failed_tokens;
  struct Adoption {
    uint64_t offset, length;
    unsigned file;
    uint64_t host_offset;
  };
  std::vector<Adoption> adopted;
  // Granules whose allocation a commit has made durable.
  std::set<uint64_t> committed_granules;
  const Granule& granule(uint64_t offset) const { return granules_[offset / info_.granularity]; }

  // --- Image ---
  const formats::ImageInfo& info() const override { return info_; }
  std::vector<File*> data_files() override { return {file_.get()}; }

  Result<formats::Mapping> map(uint64_t offset, uint64_t length) override {
    const uint64_t g = info_.granularity;
    const uint64_t end = std::min(info_.virtual_size, offset + length);
    const Granule& first = granules_[offset / g];
    formats::Mapping m;
    m.kind = kind_of(first.kind);
    m.host_offset = first.host + offset % g;
    m.writable = first.kind == Kind::Data;
    uint64_t pos = (offset / g + 1) * g;
    while (pos < end) {
      const Granule& next = granules_[pos / g];
      if (next.kind != first.kind) break;
      if (next.kind == Kind::Data && next.host != m.host_offset + (pos - offset)) break;
      if (next.kind == Kind::Compressed) break;  // one compressed granule per answer
      pos += g;
    }
    m.length = std::min(pos, end) - offset;
    return m;
  }

  Result<void> read_compressed(uint64_t offset, std::span<uint8_t> out) override {
    const uint64_t g = info_.granularity;
    const Granule& gr = granules_[offset / g];
    if (gr.kind != Kind::Compressed || offset % g + out.size() > g)
      return fail(EINVAL, info_.filename + ": not compressed at " + std::to_string(offset));
    std::memcpy(out.data(), gr.compressed.data() + offset % g, out.size());
    return {};
  }

  Result<formats::WriteTarget> prepare_write(uint64_t offset, uint64_t length) override {
    if (!writable_) return fail(EROFS, info_.filename + ": read-only");
    if (fail_prepare_) return fail(std::exchange(fail_prepare_, 0), info_.filename + ": injected");
    ++prepares_;
    const uint64_t g = info_.granularity, c = info_.cluster_size;
    const Granule& gr = granules_[offset / g];
    if (gr.kind == Kind::Data) {  // in place, as far as the run goes
      const uint64_t start = align(offset, g);
      auto m = *map(start, (offset + length + g - 1) / g * g - start);
      return formats::WriteTarget{start, m.length, 0, m.host_offset, false, 0};
    }
    // Fresh: the whole cluster (cluster mode) or the granule (subcluster mode).
    const uint64_t unit = g == c ? c : g;
    const uint64_t start = align(offset, unit);
    const uint64_t len = std::min(unit, info_.virtual_size - start);
    const uint64_t token = ++next_token_;
    pending_[token] = start;
    return formats::WriteTarget{start, len, 0, host_for(start), true, token};
  }

  Result<void> write_done(uint64_t token, bool ok) override {
    (ok ? done_tokens : failed_tokens).insert(token);
    auto it = pending_.find(token);
    if (it == pending_.end()) return {};
    const uint64_t start = it->second;
    pending_.erase(it);
    if (!ok) return {};
    if (fail_write_done_ && !fail_write_done_applied_)
      return fail(fail_write_done_, info_.filename + ": injected write_done failure");
    const uint64_t g = info_.granularity;
    const uint64_t unit = g == info_.cluster_size ? info_.cluster_size : g;
    for (uint64_t pos = start; pos < std::min(info_.virtual_size, start + unit); pos += g)
      granules_[pos / g] = Granule{Kind::Data, host_for(pos), {}};
    uncommitted_.insert(start / g);
    if (fail_write_done_)
      return fail(fail_write_done_, info_.filename + ": injected failure after the write_done");
    return {};
  }

  // Records the adoption; the host place is taken as given (the fake keeps
  // no free-space map to check it against).
  Result<uint64_t> adopt_write(uint64_t offset, uint64_t length, unsigned file,
                               uint64_t host_offset) override {
    if (!writable_) return fail(EROFS, info_.filename + ": read-only");
    adopted.push_back({offset, length, file, host_offset});
    cluster_host_.try_emplace(offset / info_.cluster_size,
                              host_offset - offset % info_.cluster_size);
    const uint64_t token = ++next_token_;
    pending_[token] = offset;
    return token;
  }

  Result<void> write_zeroes(uint64_t offset, uint64_t length, bool) override {
    return discard(offset, length);
  }
  Result<void> discard(uint64_t offset, uint64_t length) override {
    const uint64_t g = info_.granularity;
    for (uint64_t pos = align(offset + g - 1, g); pos + g <= offset + length; pos += g)
      granules_[pos / g] = Granule{Kind::Zero, 0, {}};
    return {};
  }
  Result<void> commit() override {
    if (fail_commit_) return fail(fail_commit_, info_.filename + ": injected commit failure");
    committed_granules.insert(uncommitted_.begin(), uncommitted_.end());
    uncommitted_.clear();
    return {};
  }
  Result<formats::CheckReport> check(formats::Repair) override { return formats::CheckReport{}; }

 private:
  static uint64_t align(uint64_t v, uint64_t a) { return v - v % a; }
  static formats::MapKind kind_of(Kind k) {
    switch (k) {
      case Kind::Data:
        return formats::MapKind::Data;
      case Kind::Zero:
        return formats::MapKind::Zero;
      case Kind::Compressed:
        return formats::MapKind::Compressed;
      default:
        return formats::MapKind::Unallocated;
    }
  }
  // Host place of a guest offset: clusters are allocated at the end of the
  // file in first-touch order; subclusters share their cluster's space.
  uint64_t host_for(uint64_t offset) {
    const uint64_t c = info_.cluster_size;
    auto [it, fresh] = cluster_host_.try_emplace(offset / c, 0);
    if (fresh) {
      it->second = next_host_;
      next_host_ += c;
    }
    return it->second + offset % c;
  }

  formats::ImageInfo info_;
  std::unique_ptr<File> file_;
  std::vector<Granule> granules_;
  std::map<uint64_t, uint64_t> cluster_host_;
  std::map<uint64_t, uint64_t> pending_;  // token -> first guest offset
  std::set<uint64_t> uncommitted_;
  uint64_t next_host_ = 0;
  uint64_t next_token_ = 0;
  size_t prepares_ = 0;
  int fail_prepare_ = 0;
  int fail_commit_ = 0;
  int fail_write_done_ = 0;
  bool fail_write_done_applied_ = false;
  bool writable_;
};

}  // namespace dmu::test
