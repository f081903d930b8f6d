// Sparse extent write side: grain allocation, zeroing and the ordered commit
// (see sparse_extent.h).
#include <algorithm>

#include "common/checked.h"
#include "common/endian.h"
#include "formats/vmdk/sparse_extent.h"

namespace dmu::formats::vmdk {
namespace {

constexpr uint64_t kMaxAllocBytes = uint64_t(16) << 20;
// Grain table entries are 32-bit sector numbers.
constexpr uint64_t kMaxHostBytes = (uint64_t(1) << 32) * 512;

}  // namespace

bool SparseExtent::busy(uint64_t first, uint64_t count) const {
  for (const auto& [token, f] : inflight_)
    if (f.count && first < f.first_grain + f.count && f.first_grain < first + count) return true;
  return false;
}

Result<WriteTarget> SparseExtent::prepare(uint64_t offset, uint64_t length, uint64_t token) {
  if (header_.compressed()) return fail(EROFS, name_ + ": stream-optimized extents are read-only");
  const uint64_t gb = grain_bytes();
  const uint64_t first = offset / gb;
  const uint64_t end_grain = (std::min(offset + length, size()) + gb - 1) / gb;
  if (busy(first, 1))
    return fail(EBUSY,
                name_ + ": grain at offset " + hex(first * gb) + " is already being written");
  DMU_ASSIGN_OR_RETURN(Grain g, lookup(first));
  WriteTarget t;
  t.offset = first * gb;
  uint64_t count = 1;
  if (g.kind == Grain::Data) {
    while (first + count < end_grain) {
      DMU_ASSIGN_OR_RETURN(Grain k, lookup(first + count));
      if (k.kind != Grain::Data || k.offset != g.offset + count * gb) break;
      ++count;
    }
    t.host_offset = g.offset;
    inflight_[token] = Inflight{first, 0, g.offset};
  } else {
    const uint64_t max_count = std::max<uint64_t>(1, kMaxAllocBytes / gb);
    while (first + count < end_grain && count < max_count && !busy(first + count, 1)) {
      DMU_ASSIGN_OR_RETURN(Grain k, lookup(first + count));
      if (k.kind == Grain::Data) break;
      ++count;
    }
    auto host = align_up(next_free_, gb);
    auto host_end = host ? checked_add(*host, count * gb) : std::nullopt;
    if (!host_end || *host_end > kMaxHostBytes)
      return fail(EFBIG, name_ + ": no room for new grains past " + hex(next_free_) +
                             " (grain table entries hold 32-bit sectors)");
    next_free_ = *host_end;
    t.host_offset = *host;
    t.fresh = true;
    inflight_[token] = Inflight{first, count, *host};
  }
  t.length = std::min(count * gb, size() - t.offset);
  t.token = token;
  return t;
}

bool SparseExtent::done(uint64_t token, bool ok) {
  auto it = inflight_.find(token);
  if (it == inflight_.end()) return false;
  Inflight f = it->second;
  inflight_.erase(it);
  if (ok)
    for (uint64_t i = 0; i < f.count; ++i)
      pending_[f.first_grain + i] = uint32_t((f.host_offset + i * grain_bytes()) / 512);
  return true;
}

Result<void> SparseExtent::zero(uint64_t offset, uint64_t length, bool has_parent, bool dry_run) {
  if (header_.compressed()) return fail(EROFS, name_ + ": stream-optimized extents are read-only");
  const uint64_t gb = grain_bytes();
  const uint64_t end = offset + length;
  const uint64_t first = offset / gb, last = (end - 1) / gb;
  if (busy(first, last - first + 1))
    return fail(EBUSY, name_ + ": zeroing at " + hex(offset) + " overlaps a write in progress");
  auto whole = [&](uint64_t g) {
    return offset <= g * gb && std::min((g + 1) * gb, size()) <= end;
  };
  auto reads_zero = [&](uint32_t e) {
    return (e == kGteZeroed && header_.zero_grain()) || (e == 0 && !has_parent);
  };
  // The entry that makes a grain read zeros: a zeroed grain, or nothing at
  // all when nothing lies below.
  const bool can_zero = header_.zero_grain() || !has_parent;
  const uint32_t zero_entry = header_.zero_grain() ? kGteZeroed : 0;
  for (uint64_t g = first; g <= last;) {
    if (!has_parent && table_range_empty(g)) {
      g = (g / header_.gtes_per_gt + 1) * header_.gtes_per_gt;
      continue;
    }
    DMU_ASSIGN_OR_RETURN(uint32_t e, entry(g));
    if (!reads_zero(e) && !(whole(g) && can_zero))
      return fail(ENOTSUP, name_ + ": cannot express zeros at offset " + hex(g * gb) +
                               (whole(g) ? " (no zeroed-grain support over a parent)"
                                         : " (part of an allocated grain)"));
    ++g;
  }
  if (dry_run) return {};
  for (uint64_t g = first; g <= last;) {
    if (!has_parent && table_range_empty(g)) {
      g = (g / header_.gtes_per_gt + 1) * header_.gtes_per_gt;
      continue;
    }
    DMU_ASSIGN_OR_RETURN(uint32_t e, entry(g));
    if (!reads_zero(e)) pending_[g] = zero_entry;
    ++g;
  }
  return {};
}

// Step 2 of commit(): grain table entries, in both copies; whole new tables
// for directory entries that had none (`new_tables`: index -> primary sector,
// redundant sector packed as primary | redundant << 32).
Result<void> SparseExtent::write_tables(std::map<uint64_t, uint64_t>& new_tables) {
  const uint64_t per = header_.gtes_per_gt;
  const uint64_t table_bytes = per * 4;
  for (auto it = pending_.begin(); it != pending_.end();) {
    const uint64_t index = it->first / per;
    auto group_end = pending_.lower_bound((index + 1) * per);
    if (gd_[index] != 0) {
      DMU_ASSIGN_OR_RETURN(const std::vector<uint32_t>* table, grain_table(index));
      uint64_t lo = it->first % per, hi = std::prev(group_end)->first % per;
      std::vector<uint8_t> raw((hi - lo + 1) * 4);
      for (uint64_t i = lo; i <= hi; ++i) store_le32(&raw[(i - lo) * 4], (*table)[i]);
      for (auto p = it; p != group_end; ++p) store_le32(&raw[(p->first % per - lo) * 4], p->second);
      DMU_TRY(file_.write(uint64_t(gd_[index]) * 512 + lo * 4, raw));
      if (!rgd_.empty() && rgd_[index] != 0 && rgd_[index] != gd_[index]) {
        DMU_ASSIGN_OR_RETURN(uint64_t fsize, file_size(false));
        if (!range_within(uint64_t(rgd_[index]) * 512, table_bytes, fsize))
          return fail(EIO, name_ + ": redundant grain table at sector " +
                               std::to_string(rgd_[index]) + " runs past the end of the file");
        DMU_TRY(file_.write(uint64_t(rgd_[index]) * 512 + lo * 4, raw));
      }
    } else {
      bool any = false;
      std::vector<uint8_t> raw(*align_up(table_bytes, 512), 0);
      for (auto p = it; p != group_end; ++p) {
        store_le32(&raw[(p->first % per) * 4], p->second);
        any |= p->second != 0;
      }
      if (any) {
        uint64_t copies = rgd_.empty() ? 1 : 2;
        uint64_t at = *align_up(next_free_, 512);
        if (at + copies * raw.size() > kMaxHostBytes)
          return fail(EFBIG, name_ + ": no room for a new grain table");
        next_free_ = at + copies * raw.size();
        DMU_TRY(file_.write(at, raw));
        uint64_t packed = at / 512;
        if (copies == 2) {
          DMU_TRY(file_.write(at + raw.size(), raw));
          packed |= ((at + raw.size()) / 512) << 32;
        }
        new_tables[index] = packed;
      }
    }
    it = group_end;
  }
  return {};
}

Result<void> SparseExtent::commit() {
  if (pending_.empty()) return {};
  // 1. Data: every new grain whole inside the file, then durable.
  uint64_t data_end = 0;
  for (const auto& [grain, e] : pending_)
    if (e > kGteZeroed || (e == kGteZeroed && !header_.zero_grain()))
      data_end = std::max(data_end, uint64_t(e) * 512 + grain_bytes());
  DMU_ASSIGN_OR_RETURN(uint64_t fsize, file_size(true));
  if (data_end > fsize) DMU_TRY(file_.truncate(data_end));
  DMU_TRY(file_.sync());
  // 2. Grain tables, then durable.
  std::map<uint64_t, uint64_t> new_tables;
  DMU_TRY(write_tables(new_tables));
  DMU_TRY(file_.sync());
  // 3. Directory entries of new tables, in both directories.
  if (!new_tables.empty()) {
    for (const auto& [index, packed] : new_tables) {
      uint8_t raw[4];
      store_le32(raw, uint32_t(packed));
      DMU_TRY(file_.write(header_.gd_offset * 512 + index * 4, raw));
      if (!rgd_.empty()) {
        store_le32(raw, uint32_t(packed >> 32));
        DMU_TRY(file_.write(header_.rgd_offset * 512 + index * 4, raw));
      }
    }
    DMU_TRY(file_.sync());
  }
  for (const auto& [index, packed] : new_tables) {
    gd_[index] = uint32_t(packed);
    if (!rgd_.empty()) rgd_[index] = uint32_t(packed >> 32);
  }
  for (const auto& [grain, e] : pending_)
    if (auto t = gt_cache_.find(grain / header_.gtes_per_gt); t != gt_cache_.end())
      t->second[grain % header_.gtes_per_gt] = e;
  pending_.clear();
  DMU_ASSIGN_OR_RETURN(known_file_size_, file_.size());
  return {};
}

}  // namespace dmu::formats::vmdk
