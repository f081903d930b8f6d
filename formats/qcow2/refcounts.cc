// Refcount table and blocks, cluster allocation (see refcounts.h).
#include "formats/qcow2/refcounts.h"

#include <algorithm>

#include "common/checked.h"
#include "common/endian.h"
#include "formats/qcow2/header.h"

namespace dmu::formats::qcow2 {
namespace {

// Host offsets must fit bits 9..55 of an L2 entry.
constexpr uint64_t kMaxHostOffset = uint64_t(1) << 56;
// Bounds on searches over hostile refcount data.
constexpr int kMaxAllocationRestarts = 64;

}  // namespace

uint64_t get_refcount_entry(const uint8_t* b, unsigned order, uint64_t i) {
  switch (order) {
    case 0:
      return (b[i / 8] >> (i % 8)) & 0x1;
    case 1:
      return (b[i / 4] >> (2 * (i % 4))) & 0x3;
    case 2:
      return (b[i / 2] >> (4 * (i % 2))) & 0xf;
    case 3:
      return b[i];
    case 4:
      return load_be16(b + 2 * i);
    case 5:
      return load_be32(b + 4 * i);
    default:
      return load_be64(b + 8 * i);
  }
}

void set_refcount_entry(uint8_t* b, unsigned order, uint64_t i, uint64_t v) {
  switch (order) {
    case 0:
      b[i / 8] = uint8_t((b[i / 8] & ~(0x1 << (i % 8))) | (v << (i % 8)));
      break;
    case 1:
      b[i / 4] = uint8_t((b[i / 4] & ~(0x3 << (2 * (i % 4)))) | (v << (2 * (i % 4))));
      break;
    case 2:
      b[i / 2] = uint8_t((b[i / 2] & ~(0xf << (4 * (i % 2)))) | (v << (4 * (i % 2))));
      break;
    case 3:
      b[i] = uint8_t(v);
      break;
    case 4:
      store_be16(b + 2 * i, uint16_t(v));
      break;
    case 5:
      store_be32(b + 4 * i, uint32_t(v));
      break;
    default:
      store_be64(b + 8 * i, v);
      break;
  }
}

Refcounts::Refcounts(File& file, const Geometry& g, std::string path, size_t cache_blocks)
    : file_(file),
      g_(g),
      path_(std::move(path)),
      blocks_(file, g.cluster_size, cache_blocks, "refcount block") {
  // Never write a refcount block over other metadata of a corrupt image.
  blocks_.set_write_guard([this](uint64_t off) -> Result<void> {
    if (reserved(off >> g_.cluster_bits))
      return fail(corrupt("refcount block at " + hex(off) + " overlaps other metadata"));
    return {};
  });
}

Error Refcounts::corrupt(const std::string& what) const {
  return Error{EIO, path_ + ": qcow2 image is corrupt: " + what + " (run check with repair)"};
}

Result<void> Refcounts::load(uint64_t table_offset, uint32_t table_clusters, uint64_t file_size) {
  table_offset_ = table_offset;
  table_clusters_ = table_clusters;
  std::vector<uint8_t> raw(uint64_t(table_clusters) << g_.cluster_bits);
  if (auto r = read_padded(file_, table_offset, raw); !r)
    return fail(std::move(r).error().context("reading refcount table at " + hex(table_offset)));
  table_.resize(raw.size() / 8);
  for (size_t i = 0; i < table_.size(); ++i) table_[i] = load_be64(&raw[i * 8]);
  end_ = g_.clusters_for(file_size);
  free_hint_ = 0;
  blocks_.clear();
  dirty_entries_.clear();
  moved_ = false;
  deferred_.clear();
  return {};
}

void Refcounts::forget_changes() {
  blocks_.clear();
  dirty_entries_.clear();
  deferred_.clear();
}

Result<uint8_t*> Refcounts::block_for(uint64_t cluster, bool create_if_missing) {
  uint64_t r = cluster >> g_.refblock_bits;
  if (r >= table_.size() || !(table_[r] & kRefTableOffsetMask)) {
    if (!create_if_missing) return nullptr;
    DMU_TRY(ensure_block(r));
  }
  uint64_t entry = table_[r];
  if (entry & kRefTableReservedMask)
    return fail(corrupt("refcount table entry " + std::to_string(r) + " (" + hex(entry) +
                        ") is not cluster aligned"));
  uint64_t off = entry & kRefTableOffsetMask;
  if (g_.offset_in_cluster(off))
    return fail(corrupt("refcount block " + std::to_string(r) + " at " + hex(off) +
                        " is not cluster aligned"));
  if ((off >> g_.cluster_bits) >= end_)
    return fail(corrupt("refcount block " + std::to_string(r) + " at " + hex(off) +
                        " lies beyond the end of the image file"));
  return blocks_.get(off);
}

Result<uint64_t> Refcounts::get(uint64_t cluster) {
  DMU_ASSIGN_OR_RETURN(uint8_t * b, block_for(cluster, false));
  if (!b) return uint64_t(0);
  return get_refcount_entry(b, g_.refcount_order, cluster & (g_.refblock_entries - 1));
}

Result<void> Refcounts::set_in_block(uint64_t cluster, uint64_t value) {
  DMU_ASSIGN_OR_RETURN(uint8_t * b, block_for(cluster, true));
  set_refcount_entry(b, g_.refcount_order, cluster & (g_.refblock_entries - 1), value);
  blocks_.mark_dirty(table_[cluster >> g_.refblock_bits] & kRefTableOffsetMask);
  if (value && cluster >= end_) end_ = cluster + 1;
  if (!value && cluster < free_hint_) free_hint_ = cluster;
  return {};
}

Result<void> Refcounts::set(uint64_t cluster, uint64_t value) {
  if (value > g_.refcount_max)
    return fail(EOVERFLOW, path_ + ": refcount " + std::to_string(value) + " of cluster " +
                               std::to_string(cluster) + " exceeds " +
                               std::to_string(g_.refcount_bits) + " bits");
  if (value == 0) {
    DMU_ASSIGN_OR_RETURN(uint8_t * b, block_for(cluster, false));
    if (!b) return {};
  }
  return set_in_block(cluster, value);
}

Result<void> Refcounts::add(ClusterRun run, int64_t delta) {
  for (uint64_t c = run.first; c < run.first + run.count; ++c) {
    DMU_ASSIGN_OR_RETURN(uint64_t v, get(c));
    if (delta < 0 && v < uint64_t(-delta))
      return fail(corrupt("refcount of cluster " + std::to_string(c) + " would drop below zero"));
    uint64_t nv = v + uint64_t(delta);
    if (delta > 0 && (nv < v || nv > g_.refcount_max))
      return fail(EOVERFLOW, path_ + ": refcount of cluster " + std::to_string(c) +
                                 " would exceed " + std::to_string(g_.refcount_bits) + " bits");
    DMU_TRY(set_in_block(c, nv));
  }
  return {};
}

void Refcounts::create_block(uint64_t range, uint64_t at) {
  uint64_t off = at << g_.cluster_bits;
  uint8_t* b = blocks_.create(off);
  table_[range] = off;
  dirty_entries_.insert(range);
  if ((at >> g_.refblock_bits) == range)
    set_refcount_entry(b, g_.refcount_order, at & (g_.refblock_entries - 1), 1);
  if (at >= end_) end_ = at + 1;
}

Result<bool> Refcounts::is_free(uint64_t cluster) {
  if (reserved(cluster)) return false;
  DMU_ASSIGN_OR_RETURN(uint64_t v, get(cluster));
  return v == 0;
}

// A new block for `range`, placed at the end of the file: in its own range
// when possible (it then describes itself), otherwise counted by the block
// of the range it lands in.
Result<void> Refcounts::ensure_block(uint64_t range) {
  for (int guard = 0; guard < kMaxAllocationRestarts; ++guard) {
    if (range >= table_.size()) {
      DMU_TRY(grow_table(range + 1));
      continue;
    }
    if (table_[range] & kRefTableOffsetMask) return {};
    DMU_ASSIGN_OR_RETURN(uint64_t p, find_free(end_));
    uint64_t rp = p >> g_.refblock_bits;
    if (rp == range) {
      create_block(range, p);
      return {};
    }
    if (rp >= table_.size()) {
      DMU_TRY(grow_table(rp + 1));
      continue;
    }
    if (!(table_[rp] & kRefTableOffsetMask)) {
      create_block(rp, p);  // the end range first; it describes itself
      continue;
    }
    DMU_TRY(set_in_block(p, 1));
    blocks_.create(p << g_.cluster_bits);
    table_[range] = p << g_.cluster_bits;
    dirty_entries_.insert(range);
    return {};
  }
  return fail(EIO, path_ + ": could not place a refcount block for range " + std::to_string(range));
}

// The first cluster at or after `from` that is free (refcount 0, not
// reserved).  Ranges without a refcount block are free as a whole.
Result<uint64_t> Refcounts::find_free(uint64_t from) {
  const uint64_t max_cluster = kMaxHostOffset >> g_.cluster_bits;
  uint64_t c = from;
  while (c < max_cluster) {
    uint64_t r = c >> g_.refblock_bits;
    if (r >= table_.size() || !(table_[r] & kRefTableOffsetMask)) {
      if (!reserved(c)) return c;
      ++c;
      continue;
    }
    DMU_ASSIGN_OR_RETURN(uint8_t * b, block_for(c, false));
    uint64_t range_end = (r + 1) << g_.refblock_bits;
    for (; c < range_end; ++c)
      if (!get_refcount_entry(b, g_.refcount_order, c & (g_.refblock_entries - 1)) && !reserved(c))
        return c;
  }
  return fail(ENOSPC, path_ + ": no free cluster below the 64 PiB qcow2 limit");
}

// Relocates the refcount table to the end of the file with room for at
// least min_entries, together with the refcount blocks the new clusters
// need.  The old table is freed after the commit that switches the header.
Result<void> Refcounts::grow_table(uint64_t min_entries) {
  const uint64_t per_cluster = g_.cluster_size / 8;
  uint64_t want = std::max<uint64_t>(min_entries, table_.size() + table_.size() / 2 + 1);
  uint64_t start = end_;
  for (int guard = 0; guard < kMaxAllocationRestarts; ++guard) {
    uint64_t t = 0, nblocks = 0;
    for (int it = 0; it < 32; ++it) {
      uint64_t last = start + t + nblocks;  // exclusive
      uint64_t last_range = last ? (last - 1) >> g_.refblock_bits : 0;
      uint64_t entries = std::max(want, last_range + 1);
      uint64_t nt = (entries + per_cluster - 1) / per_cluster;
      uint64_t missing = 0;
      if (last > start)
        for (uint64_t r = start >> g_.refblock_bits; r <= last_range; ++r)
          if (r >= table_.size() || !(table_[r] & kRefTableOffsetMask)) ++missing;
      if (nt == t && missing == nblocks) break;
      t = nt;
      nblocks = missing;
    }
    if ((t << g_.cluster_bits) > kMaxRefTableBytes)
      return fail(ENOSPC, path_ + ": the refcount table would exceed 8 MiB");
    // Every cluster of the new span must be free.
    uint64_t busy = UINT64_MAX;
    for (uint64_t c = start; c < start + t + nblocks; ++c) {
      DMU_ASSIGN_OR_RETURN(bool f, is_free(c));
      if (!f) {
        busy = c;
        break;
      }
    }
    if (busy != UINT64_MAX) {
      start = busy + 1;
      continue;
    }
    std::vector<uint64_t> old = table_;
    uint64_t old_offset = table_offset_, old_clusters = table_clusters_;
    table_.assign(t * per_cluster, 0);
    std::copy(old.begin(), old.end(), table_.begin());
    uint64_t next_block = start + t;
    uint64_t last_range = (start + t + nblocks - 1) >> g_.refblock_bits;
    for (uint64_t r = start >> g_.refblock_bits; r <= last_range; ++r) {
      if (table_[r] & kRefTableOffsetMask) continue;
      blocks_.create(next_block << g_.cluster_bits);
      table_[r] = next_block << g_.cluster_bits;
      ++next_block;
    }
    table_offset_ = start << g_.cluster_bits;
    table_clusters_ = uint32_t(t);
    moved_ = true;
    dirty_entries_.clear();
    end_ = std::max(end_, start + t + nblocks);
    for (uint64_t c = start; c < start + t + nblocks; ++c) DMU_TRY(set_in_block(c, 1));
    defer_decrement({old_offset >> g_.cluster_bits, old_clusters});
    return {};
  }
  return fail(EIO, path_ + ": could not find room for a larger refcount table");
}

Result<ClusterRun> Refcounts::allocate(uint64_t want) {
  want = std::max<uint64_t>(want, 1);
  for (int guard = 0; guard < kMaxAllocationRestarts; ++guard) {
    DMU_ASSIGN_OR_RETURN(uint64_t start, find_free(free_hint_));
    uint64_t r = start >> g_.refblock_bits;
    if (r >= table_.size() || !(table_[r] & kRefTableOffsetMask)) {
      // The block for this range takes the free cluster itself.
      if (r >= table_.size()) {
        DMU_TRY(grow_table(r + 1));
        continue;
      }
      create_block(r, start);
      continue;
    }
    uint64_t n = 1;
    while (n < want) {
      uint64_t c = start + n;
      uint64_t rc = c >> g_.refblock_bits;
      if (rc != r && (rc >= table_.size() || !(table_[rc] & kRefTableOffsetMask))) break;
      DMU_ASSIGN_OR_RETURN(bool f, is_free(c));
      if (!f) break;
      ++n;
    }
    if (((start + n) << g_.cluster_bits) > kMaxHostOffset)
      return fail(ENOSPC, path_ + ": allocation beyond the 64 PiB qcow2 limit");
    for (uint64_t c = start; c < start + n; ++c) DMU_TRY(set_in_block(c, 1));
    free_hint_ = start + n;
    return ClusterRun{start, n};
  }
  return fail(EIO, path_ + ": cluster allocation did not converge (corrupt refcounts?)");
}

Result<ClusterRun> Refcounts::allocate_exact(uint64_t want) {
  want = std::max<uint64_t>(want, 1);
  // Each short run moves the search past itself; the end of the file is
  // free space, so the search ends there at the latest.  The bound keeps a
  // hostile image (refcounts freeing every other cluster of a huge file)
  // from costing more than a bounded scan.
  constexpr int kMaxShortRuns = 1 << 16;
  std::vector<ClusterRun> skipped;
  Result<ClusterRun> found =
      fail(EIO, path_ + ": no run of " + std::to_string(want) + " free clusters after " +
                    std::to_string(kMaxShortRuns) + " short ones");
  for (int i = 0; i < kMaxShortRuns; ++i) {
    auto run = allocate(want);
    if (!run || run->count == want) {
      found = std::move(run);
      break;
    }
    skipped.push_back(*run);
  }
  // Give the short runs back; their clusters suit single-cluster metadata.
  for (const ClusterRun& r : skipped)
    for (uint64_t c = r.first; c < r.first + r.count; ++c) DMU_TRY(set_in_block(c, 0));
  return found;
}

Result<std::vector<ClusterRun>> Refcounts::apply_deferred() {
  std::vector<Deferred> queued;
  queued.swap(deferred_);
  std::vector<ClusterRun> released;
  // A cluster already at zero means the image was corrupt before; leave it
  // for check() rather than failing a commit whose writes are durable.
  for (const Deferred& d : queued)
    for (uint64_t c = d.run.first; c < d.run.first + d.run.count; ++c) {
      DMU_ASSIGN_OR_RETURN(uint64_t v, get(c));
      if (!v) continue;
      DMU_TRY(set_in_block(c, v - 1));
      if (v == 1 && d.release) {
        if (!released.empty() && released.back().first + released.back().count == c)
          ++released.back().count;
        else
          released.push_back({c, 1});
      }
    }
  return released;
}

bool Refcounts::dirty() const {
  return moved_ || !dirty_entries_.empty() || blocks_.has_dirty();
}

Result<void> Refcounts::flush() {
  if (!dirty()) return {};
  DMU_TRY(blocks_.flush());
  DMU_TRY(file_.sync());
  if (!moved_ && dirty_entries_.empty()) return {};
  if (moved_) {
    std::vector<uint8_t> raw(table_.size() * 8);
    for (size_t i = 0; i < table_.size(); ++i) store_be64(&raw[i * 8], table_[i]);
    DMU_TRY(file_.write(table_offset_, raw));
  } else {
    // Contiguous runs of changed entries, one write each.
    auto it = dirty_entries_.begin();
    while (it != dirty_entries_.end()) {
      uint64_t first = *it, last = *it;
      while (++it != dirty_entries_.end() && *it == last + 1) last = *it;
      std::vector<uint8_t> raw((last - first + 1) * 8);
      for (uint64_t i = first; i <= last; ++i) store_be64(&raw[(i - first) * 8], table_[i]);
      if (((table_offset_ + first * 8) >> g_.cluster_bits) >= end_)
        return fail(corrupt("refcount table at " + hex(table_offset_) +
                            " lies beyond the end of the image file"));
      DMU_TRY(file_.write(table_offset_ + first * 8, raw));
    }
  }
  DMU_TRY(file_.sync());
  if (moved_) {
    uint8_t fields[12];
    store_be64(fields, table_offset_);
    store_be32(fields + 8, table_clusters_);
    DMU_TRY(file_.write(field::kRefcountTableOffset, fields));
    DMU_TRY(file_.sync());
    moved_ = false;
  }
  dirty_entries_.clear();
  return {};
}

}  // namespace dmu::formats::qcow2
