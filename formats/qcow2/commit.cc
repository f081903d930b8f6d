// Durability for the qcow2 engine: commit() writes what changed since the
// last commit in dependency order — data files synced, then refcounts
// (blocks, table, header pointer), then L2 tables, then the L1 table, with a
// sync between dependent steps — and only then releases freed clusters.
// Also here: L2 table allocation and copy-on-write, and the header fields the
// engine updates in place.
#include <cstring>

#include "common/endian.h"
#include "formats/qcow2/qcow2_image.h"

namespace dmu::formats::qcow2 {

Qcow2Image::~Qcow2Image() {
  // A clean shutdown makes completed writes durable; errors have nowhere to
  // go from a destructor (a crashed or failed image stays as it is).
  if (access_ == Access::ReadWrite && file_ && refcounts_ && !failed_ && !corrupt_)
    (void)do_commit();
}

Result<void> Qcow2Image::fail_writes(Error e) {
  if (!failed_) failed_ = e;
  return fail(std::move(e));
}

// A writable (refcount 1) L2 table for L1 entry l1_index: allocated when
// absent, copied when shared with a snapshot.  Returns its offset.
Result<uint64_t> Qcow2Image::ensure_l2(uint64_t l1_index) {
  if (l1_index >= l1_.size())
    return fail(corrupt("L1 index " + std::to_string(l1_index) + " beyond the L1 table"));
  const uint64_t e = l1_[l1_index];
  const uint64_t off = e & kL1OffsetMask;
  if (off && (e & kOflagCopied)) {
    if (g_.offset_in_cluster(off))
      return fail(
          corrupt("L1 entry " + std::to_string(l1_index) + " points at unaligned " + hex(off)));
    if ((off >> g_.cluster_bits) >= refcounts_->end_cluster())
      return fail(corrupt("L1 entry " + std::to_string(l1_index) + " points at " + hex(off) +
                          ", beyond the end of the image file"));
    return off;
  }
  std::vector<uint8_t> copy;
  if (off) {
    if (g_.offset_in_cluster(off))
      return fail(
          corrupt("L1 entry " + std::to_string(l1_index) + " points at unaligned " + hex(off)));
    DMU_ASSIGN_OR_RETURN(uint8_t * old, l2_cache_->get(off));
    copy.assign(old, old + g_.cluster_size);
  }
  DMU_ASSIGN_OR_RETURN(ClusterRun run, refcounts_->allocate(1));
  const uint64_t noff = run.first << g_.cluster_bits;
  uint8_t* t = l2_cache_->create(noff);
  if (off) {
    std::memcpy(t, copy.data(), copy.size());
    refcounts_->defer_decrement({off >> g_.cluster_bits, 1});
  }
  l1_[l1_index] = noff | kOflagCopied;
  dirty_l1_.insert(l1_index);
  return noff;
}

Result<void> Qcow2Image::write_header_u64(unsigned field_offset, uint64_t value) {
  uint8_t raw[8];
  store_be64(raw, value);
  DMU_TRY(file_->write(field_offset, raw));
  return file_->sync();
}

// The spec: "An implementation may only write to an image with unknown
// auto-clear features if it clears the respective bits from this field
// first."  Done once, before the first change of any kind.
Result<void> Qcow2Image::prepare_header_for_write() {
  if (header_ready_) return {};
  // Tables we would update in place must be inside the file; otherwise the
  // image is refused before anything at all is written.
  const uint64_t file_end = refcounts_->end_cluster() << g_.cluster_bits;
  if (header_.l1_size && header_.l1_table_offset + uint64_t(header_.l1_size) * 8 > file_end)
    return fail(corrupt("L1 table at " + hex(header_.l1_table_offset) +
                        " runs past the end of the image file"));
  if (refcounts_->table_offset() >= file_end)
    return fail(corrupt("refcount table at " + hex(refcounts_->table_offset()) +
                        " lies beyond the end of the image file"));
  if (header_.version >= 3 && (header_.autoclear & ~kAutoclearKnown)) {
    uint64_t kept = header_.autoclear & kAutoclearKnown;
    if (auto r = write_header_u64(field::kAutoclearFeatures, kept); !r)
      return fail_writes(r.error());
    header_.autoclear = kept;
  }
  header_ready_ = true;
  return {};
}

Result<void> Qcow2Image::do_commit() {
  // 1. The data the new entries point at.
  DMU_TRY(file_->sync());
  if (data_file_) DMU_TRY(data_file_->sync());
  // 2. Refcounts (blocks, table, header pointer), durable on return.
  DMU_TRY(refcounts_->flush());
  // 3. L2 tables.
  if (l2_cache_->has_dirty()) {
    DMU_TRY(l2_cache_->flush());
    DMU_TRY(file_->sync());
  }
  // 4. The L1 table, in runs of changed entries.
  if (!dirty_l1_.empty()) {
    auto it = dirty_l1_.begin();
    while (it != dirty_l1_.end()) {
      uint64_t first = *it, last = *it;
      while (++it != dirty_l1_.end() && *it == last + 1) last = *it;
      std::vector<uint8_t> raw((last - first + 1) * 8);
      for (uint64_t i = first; i <= last; ++i) store_be64(&raw[(i - first) * 8], l1_[i]);
      if (((header_.l1_table_offset + first * 8) >> g_.cluster_bits) >= refcounts_->end_cluster())
        return fail(corrupt("L1 table at " + hex(header_.l1_table_offset) +
                            " lies beyond the end of the image file"));
      DMU_TRY(file_->write(header_.l1_table_offset + first * 8, raw));
    }
    DMU_TRY(file_->sync());
    dirty_l1_.clear();
  }
  // 5. Nothing durable points at the freed clusters any more: release
  // them, and give the space of discarded ones back to the file system
  // (best effort, like QEMU's discard passthrough).
  if (refcounts_->has_deferred()) {
    DMU_ASSIGN_OR_RETURN(auto released, refcounts_->apply_deferred());
    DMU_TRY(refcounts_->flush());
    for (const ClusterRun& run : released)
      (void)file_->punch_hole(run.first << g_.cluster_bits, run.count << g_.cluster_bits);
  }
  l2_cache_->trim();
  refcounts_->trim();
  return {};
}

Result<void> Qcow2Image::commit() {
  if (access_ != Access::ReadWrite) return {};
  if (failed_)
    return fail(failed_->code,
                path_ + ": commit after a failed metadata update: " + failed_->message);
  DMU_TRY(end_adoption());
  if (auto r = do_commit(); !r) return fail_writes(r.error());
  // Committed metadata is all there is again: a restart's adoptions may be
  // checked against it.
  if (tokens_.empty()) adopting_ = true;
  return {};
}

// Keeps the caches within budget between operations: dirty tables cannot be
// dropped, so a cache full of them is committed early.
Result<void> Qcow2Image::after_operation() {
  l2_cache_->trim();
  refcounts_->trim();
  if (l2_cache_->over_budget() || refcounts_->over_budget()) return commit();
  return {};
}

}  // namespace dmu::formats::qcow2
