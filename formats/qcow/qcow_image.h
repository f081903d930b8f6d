// The qcow (version 1) engine.
//
// State: the L1 table lives in memory; L2 tables are read on demand into a
// bounded cache that always equals what is on disk.  Writes follow the
// protocol in formats/image.h: prepare_write hands out new clusters at the end
// of the file (`inflight_`), write_done moves them to `pending_` (guest
// cluster -> new L2 entry, visible to map() at once), and commit() makes
// pending_ durable in the order data -> L2 tables -> L1 entries, with a sync
// after each step.  qcow has no refcounts and no zero clusters: space of
// replaced clusters is simply never reused, and zeroing is only possible
// without a backing file, by deallocating.
//
// Adoptions (adopt_write, qcow_adopt.cc) are checked against the committed
// tables walked once into used_, and reserve their ranges by moving
// next_free_ past them: space is never reused, so nothing allocated later
// (clusters, the L2 tables commit places) can land on them.
//
// Not thread-safe: the caller serializes calls and never prepares two
// overlapping writes at once (EBUSY).
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>

#include "formats/host_ranges.h"
#include "formats/image.h"
#include "formats/qcow/header.h"

namespace dmu::formats::qcow {

class QcowImage final : public Image {
 public:
  static Result<std::unique_ptr<Image>> open(Env& env, const std::string& path, Access access);

  const ImageInfo& info() const override { return info_; }
  std::vector<File*> data_files() override { return {file_.get()}; }
  Result<Mapping> map(uint64_t offset, uint64_t length) override;
  Result<void> read_compressed(uint64_t offset, std::span<uint8_t> out) override;
  Result<WriteTarget> prepare_write(uint64_t offset, uint64_t length) override;
  Result<void> write_done(uint64_t token, bool ok) override;
  Result<uint64_t> adopt_write(uint64_t offset, uint64_t length, unsigned file,
                               uint64_t host_offset) override;
  Result<void> write_zeroes(uint64_t offset, uint64_t length, bool may_unmap) override;
  Result<void> discard(uint64_t offset, uint64_t length) override;
  Result<void> commit() override;
  Result<CheckReport> check(Repair repair) override;

 private:
  // What one guest cluster is, decoded from its L2 entry.
  struct Cluster {
    enum Kind { Unallocated, Normal, Compressed } kind = Unallocated;
    uint64_t offset = 0;  // Normal: host offset; Compressed: offset of the compressed bytes
    uint64_t csize = 0;   // Compressed: bytes
  };
  // A preparation awaiting write_done.
  struct Inflight {
    uint64_t first_cluster = 0;
    uint64_t count = 0;  // 0 for in-place preparations
    uint64_t host_offset = 0;
  };

  QcowImage(std::unique_ptr<File> file, Access access, Header header, ImageInfo info)
      : file_(std::move(file)), access_(access), header_(header), info_(std::move(info)) {}

  uint64_t cluster_size() const { return header_.cluster_size(); }
  uint64_t cluster_count() const;
  uint64_t l1_index(uint64_t cluster) const { return cluster >> header_.l2_bits; }
  uint64_t l2_index(uint64_t cluster) const { return cluster & (header_.l2_entries() - 1); }

  Result<void> check_range(uint64_t offset, uint64_t length, const char* what) const;
  Result<void> require_writable(const char* what) const;
  Result<uint64_t> file_size(bool refresh);
  // The on-disk L2 table of L1 entry `index`, or nullptr if it has none.
  Result<const std::vector<uint64_t>*> l2_table(uint64_t index);
  // The L2 entry of `cluster` as map() sees it: pending_ first, then disk.
  Result<uint64_t> entry(uint64_t cluster);
  Result<Cluster> decode(uint64_t cluster, uint64_t entry);
  Result<Cluster> lookup(uint64_t cluster);
  // True when no on-disk table nor pending entry maps anything in
  // [cluster, end of its L1 entry): map() skips such stretches whole.
  bool l1_range_empty(uint64_t cluster) const;
  bool busy(uint64_t first, uint64_t count) const;
  Result<void> decompress(const Cluster& c, uint64_t cluster);

  // --- qcow_adopt.cc ---
  Result<void> check_adopt_shape(uint64_t offset, uint64_t length, unsigned file,
                                 uint64_t host_offset) const;
  // Fills used_ from the committed tables (header, L1, L2 tables, clusters).
  Result<void> load_used();
  Result<Inflight> plan_adoption(uint64_t offset, uint64_t end, uint64_t host);
  // The first call that is not an adoption: no more adoptions until a
  // commit leaves nothing in flight.
  void end_adoption();

  std::unique_ptr<File> file_;
  Access access_;
  Header header_;
  ImageInfo info_;
  std::vector<uint64_t> l1_;
  std::unordered_map<uint64_t, std::vector<uint64_t>> l2_cache_;  // by L1 index
  std::map<uint64_t, uint64_t> pending_;                          // guest cluster -> L2 entry
  std::unordered_map<uint64_t, Inflight> inflight_;               // by token
  uint64_t next_free_ = 0;  // where the next cluster or table goes
  uint64_t known_file_size_ = 0;
  uint64_t next_token_ = 1;
  bool adopting_ = true;            // nothing but adoptions since open or commit
  std::optional<HostRanges> used_;  // while adopting: file bytes in use
  // The last decompressed cluster (sequential reads hit it repeatedly).
  uint64_t cached_entry_ = 0;
  std::vector<uint8_t> cached_data_;

  friend class QcowChecker;
  friend struct QcowCommit;
};

}  // namespace dmu::formats::qcow
