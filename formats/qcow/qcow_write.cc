// The qcow engine's write side: cluster allocation, deallocation and the
// ordered commit (see qcow_image.h for the state it works on).
#include <algorithm>

#include "common/checked.h"
#include "common/endian.h"
#include "formats/qcow/qcow_image.h"

namespace dmu::formats::qcow {
namespace {

// A single preparation allocates at most this much, so one huge guest write
// does not reserve gigabytes the caller must fill.
constexpr uint64_t kMaxAllocBytes = uint64_t(16) << 20;

}  // namespace

bool QcowImage::busy(uint64_t first, uint64_t count) const {
  for (const auto& [token, f] : inflight_)
    if (f.count && first < f.first_cluster + f.count && f.first_cluster < first + count)
      return true;
  return false;
}

Result<WriteTarget> QcowImage::prepare_write(uint64_t offset, uint64_t length) {
  DMU_TRY(require_writable("write"));
  DMU_TRY(check_range(offset, length, "write"));
  end_adoption();
  const uint64_t cs = cluster_size();
  const uint64_t first = offset / cs;
  const uint64_t end_cluster = (offset + length + cs - 1) / cs;
  if (busy(first, 1))
    return fail(EBUSY, info_.filename + ": cluster at guest offset " + hex(first * cs) +
                           " is already being written");
  DMU_ASSIGN_OR_RETURN(Cluster c, lookup(first));

  WriteTarget t;
  t.offset = first * cs;
  t.token = next_token_++;
  uint64_t count = 1;
  if (c.kind == Cluster::Normal) {
    // In place: as far as the clusters stay allocated and contiguous.
    while (first + count < end_cluster) {
      DMU_ASSIGN_OR_RETURN(Cluster k, lookup(first + count));
      if (k.kind != Cluster::Normal || k.offset != c.offset + count * cs) break;
      ++count;
    }
    t.host_offset = c.offset;
    t.fresh = false;
    inflight_[t.token] = Inflight{first, 0, c.offset};
  } else {
    // New clusters at the end of the file for every cluster of the range
    // that is unallocated or compressed (compressed ones are rewritten whole).
    const uint64_t max_count = std::max<uint64_t>(1, kMaxAllocBytes / cs);
    while (first + count < end_cluster && count < max_count && !busy(first + count, 1)) {
      DMU_ASSIGN_OR_RETURN(Cluster k, lookup(first + count));
      if (k.kind == Cluster::Normal) break;
      ++count;
    }
    auto host = align_up(next_free_, cs);
    auto host_end = host ? checked_add(*host, count * cs) : std::nullopt;
    if (!host_end || *host_end > header_.compressed_offset_mask())
      return fail(EFBIG, info_.filename + ": no room for new clusters past " + hex(next_free_));
    next_free_ = *host_end;
    t.host_offset = *host;
    t.fresh = true;
    inflight_[t.token] = Inflight{first, count, *host};
  }
  t.length = std::min(count * cs, info_.virtual_size - t.offset);
  return t;
}

Result<void> QcowImage::write_done(uint64_t token, bool ok) {
  auto it = inflight_.find(token);
  if (it == inflight_.end())
    return fail(EINVAL, info_.filename + ": write_done for unknown token " + std::to_string(token));
  end_adoption();
  Inflight f = it->second;
  inflight_.erase(it);
  // A failed write leaves its new clusters unreferenced (leaked space).
  if (ok)
    for (uint64_t i = 0; i < f.count; ++i)
      pending_[f.first_cluster + i] = f.host_offset + i * cluster_size();
  return {};
}

Result<void> QcowImage::write_zeroes(uint64_t offset, uint64_t length, bool) {
  DMU_TRY(require_writable("write_zeroes"));
  DMU_TRY(check_range(offset, length, "write_zeroes"));
  end_adoption();
  // Without zero clusters the only way to read zeros is to read nothing,
  // which with a backing file would expose the backing image.
  if (info_.backing_file)
    return fail(ENOTSUP, info_.filename + ": qcow cannot express zeros over a backing file");
  const uint64_t cs = cluster_size();
  const uint64_t end = offset + length;
  const uint64_t first = offset / cs;
  const uint64_t last = (end - 1) / cs;
  if (busy(first, last - first + 1))
    return fail(EBUSY, info_.filename + ": write_zeroes at " + hex(offset) +
                           " overlaps a write in progress");
  // Partial clusters can only stay as they are if they already read as zeros.
  auto whole = [&](uint64_t cluster) {
    return offset <= cluster * cs && std::min((cluster + 1) * cs, info_.virtual_size) <= end;
  };
  for (uint64_t edge : {first, last}) {
    if (whole(edge)) continue;
    DMU_ASSIGN_OR_RETURN(uint64_t e, entry(edge));
    if (e != 0)
      return fail(ENOTSUP, info_.filename + ": write_zeroes at " + hex(offset) +
                               " covers part of an allocated cluster");
  }
  for (uint64_t c = first; c <= last;) {
    if (l1_range_empty(c)) {
      c = (l1_index(c) + 1) << header_.l2_bits;
      continue;
    }
    if (whole(c)) {
      DMU_ASSIGN_OR_RETURN(uint64_t e, entry(c));
      if (e != 0) pending_[c] = 0;
    }
    ++c;
  }
  return {};
}

Result<void> QcowImage::discard(uint64_t offset, uint64_t length) {
  // QEMU's qcow driver has no discard: a no-op keeps the contents stable.
  DMU_TRY(require_writable("discard"));
  return check_range(offset, length, "discard");
}

Result<void> QcowImage::commit() {
  DMU_TRY(require_writable("commit"));
  end_adoption();
  // Committed metadata is all there is again when nothing is in flight: a
  // restart's adoptions may be checked against it.
  if (pending_.empty()) {
    adopting_ = inflight_.empty();
    return {};
  }
  const uint64_t cs = cluster_size();

  // 1. Data: every new cluster whole inside the file, then durable.
  uint64_t data_end = 0;
  for (const auto& [cluster, e] : pending_)
    if (e != 0) data_end = std::max(data_end, e + cs);
  DMU_ASSIGN_OR_RETURN(uint64_t fsize, file_size(true));
  if (data_end > fsize) DMU_TRY(file_->truncate(data_end));
  DMU_TRY(file_->sync());

  // 2. L2 tables: changed entries of existing tables, whole new tables.
  std::map<uint64_t, uint64_t> new_tables;  // L1 index -> table offset
  const uint64_t l2_bytes = header_.l2_bytes();
  for (auto it = pending_.begin(); it != pending_.end();) {
    const uint64_t index = l1_index(it->first);
    const uint64_t group_end = (index + 1) << header_.l2_bits;
    auto group_last = pending_.lower_bound(group_end);
    if (l1_[index] != 0) {
      DMU_ASSIGN_OR_RETURN(const std::vector<uint64_t>* table, l2_table(index));
      uint64_t lo = l2_index(it->first);
      uint64_t hi = l2_index(std::prev(group_last)->first);
      std::vector<uint8_t> raw((hi - lo + 1) * 8);
      for (uint64_t i = lo; i <= hi; ++i) store_be64(&raw[(i - lo) * 8], (*table)[i]);
      for (auto p = it; p != group_last; ++p)
        store_be64(&raw[(l2_index(p->first) - lo) * 8], p->second);
      DMU_TRY(file_->write(l1_[index] + lo * 8, raw));
    } else {
      bool any = false;
      std::vector<uint8_t> raw(l2_bytes, 0);
      for (auto p = it; p != group_last; ++p) {
        store_be64(&raw[l2_index(p->first) * 8], p->second);
        any |= p->second != 0;
      }
      if (any) {
        uint64_t at = *align_up(next_free_, cs);
        next_free_ = at + *align_up(l2_bytes, cs);
        DMU_TRY(file_->write(at, raw));
        new_tables[index] = at;
      }
    }
    it = group_last;
  }
  DMU_TRY(file_->sync());

  // 3. L1 entries of the new tables.
  if (!new_tables.empty()) {
    for (const auto& [index, at] : new_tables) {
      uint8_t raw[8];
      store_be64(raw, at);
      DMU_TRY(file_->write(header_.l1_table_offset + index * 8, raw));
    }
    DMU_TRY(file_->sync());
  }

  // Durable: now the in-memory tables may say so too.
  for (const auto& [index, at] : new_tables) l1_[index] = at;
  for (const auto& [cluster, e] : pending_)
    if (auto t = l2_cache_.find(l1_index(cluster)); t != l2_cache_.end())
      t->second[l2_index(cluster)] = e;
  pending_.clear();
  adopting_ = inflight_.empty();
  return {};
}

}  // namespace dmu::formats::qcow
