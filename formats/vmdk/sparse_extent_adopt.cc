// Sparse extent adoptions (see SparseExtent::adopt and formats/image.h).
// vmdk has no refcounts: the bytes in use are found by walking the
// directories and grain tables once per adoption phase (used_), as check()
// does; grains are appended and never reused, so moving next_free_ past an
// adopted range keeps every later allocation off it.
#include <algorithm>

#include "common/checked.h"
#include "formats/vmdk/sparse_extent.h"

namespace dmu::formats::vmdk {
namespace {

// Grain table entries are 32-bit sector numbers.
constexpr uint64_t kMaxAdoptHostBytes = (uint64_t(1) << 32) * 512;

}  // namespace

Result<void> SparseExtent::load_used() {
  if (used_) return {};
  HostRanges used;
  const uint64_t table_bytes = uint64_t(header_.gtes_per_gt) * 4;
  used.add(0, std::max<uint64_t>(header_.grain_offset * 512, 512));  // header and overhead
  if (header_.desc_offset) used.add(header_.desc_offset * 512, header_.desc_size * 512);
  used.add(header_.gd_offset * 512, gd_.size() * 4);
  if (!rgd_.empty()) used.add(header_.rgd_offset * 512, rgd_.size() * 4);
  for (uint32_t sector : rgd_)
    if (sector) used.add(uint64_t(sector) * 512, table_bytes);
  for (uint64_t index = 0; index < gd_.size(); ++index) {
    if (gd_[index] == 0) continue;
    used.add(uint64_t(gd_[index]) * 512, table_bytes);
    DMU_ASSIGN_OR_RETURN(const std::vector<uint32_t>* table, grain_table(index));
    for (uint32_t e : *table)
      if (e > kGteZeroed || (e == kGteZeroed && !header_.zero_grain()))
        used.add(uint64_t(e) * 512, grain_bytes());
  }
  used_ = std::move(used);
  return {};
}

Result<SparseExtent::Inflight> SparseExtent::plan_adoption(uint64_t offset, uint64_t end,
                                                           uint64_t host) {
  const uint64_t gb = grain_bytes();
  if (offset % gb || (end % gb && end != size()))
    return fail(EINVAL, "the range is not made of whole " + std::to_string(gb) + "-byte grains");
  if (host % 512) return fail(EINVAL, "the host offset is not sector-aligned");
  const uint64_t first = offset / gb, count = (end - offset + gb - 1) / gb;
  uint64_t allocated = 0;
  for (uint64_t i = 0; i < count; ++i) {
    if (busy(first + i, 1))
      return fail(EINVAL, "the grain at " + hex((first + i) * gb) + " is already adopted");
    DMU_ASSIGN_OR_RETURN(Grain g, lookup(first + i));
    if (g.kind != Grain::Data) continue;
    if (g.offset != host + i * gb)
      return fail(EINVAL,
                  "the grain at " + hex((first + i) * gb) + " is allocated at " + hex(g.offset));
    ++allocated;
  }
  if (allocated == count) return Inflight{first, 0, host};
  if (allocated != 0)
    return fail(EINVAL, "the range mixes allocated and new grains (no one preparation does)");
  if (host > kMaxAdoptHostBytes || kMaxAdoptHostBytes - host < count * gb)
    return fail(EINVAL, "the host range is beyond what grain table entries hold");
  DMU_TRY(load_used());
  if (used_->overlaps(host, count * gb))
    return fail(EINVAL,
                "the host range overlaps the extent's metadata, another guest range's "
                "data or another adoption");
  return Inflight{first, count, host};
}

Result<void> SparseExtent::adopt(uint64_t offset, uint64_t length, uint64_t host_offset,
                                 uint64_t token) {
  if (header_.compressed()) return fail(EROFS, "stream-optimized extents are read-only");
  DMU_ASSIGN_OR_RETURN(Inflight f, plan_adoption(offset, offset + length, host_offset));
  inflight_[token] = f;
  if (f.count) {
    used_->add(f.host_offset, f.count * grain_bytes());
    next_free_ = std::max(next_free_, f.host_offset + f.count * grain_bytes());
  }
  return {};
}

}  // namespace dmu::formats::vmdk
