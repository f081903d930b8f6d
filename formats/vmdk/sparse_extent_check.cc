// Sparse extent check.  qemu-img check -f vmdk walks every grain and stops
// at the first grain outside the file with one corruption and a failed check
// (exit 1); we report every such grain the same way (a corruption and a check
// error each).  Beyond QEMU we report, as corruptions only, grain tables
// outside the file in either directory (QEMU reads them as zeros) and grains
// used twice or overlapping metadata (counted at grain granularity; skipped
// for compressed extents, whose grains are packed).  Like QEMU we report no
// leaks: vmdk has no notion of them.
#include <algorithm>

#include "common/checked.h"
#include "formats/vmdk/sparse_extent.h"

namespace dmu::formats::vmdk {
namespace {

constexpr size_t kMaxMessages = 100;

}  // namespace

Result<void> SparseExtent::check(CheckReport& r, const std::string& label) {
  if (!pending_.empty() || !inflight_.empty())
    return fail(EBUSY, name_ + ": check with uncommitted writes; commit first");
  auto corrupt = [&](const std::string& msg) {
    ++r.corruptions;
    if (r.messages.size() < kMaxMessages) r.messages.push_back("ERROR " + label + ": " + msg);
  };
  DMU_ASSIGN_OR_RETURN(uint64_t fsize, file_size(true));
  const uint64_t gb = grain_bytes();
  const uint64_t per = header_.gtes_per_gt;
  const uint64_t table_bytes = per * 4;
  const uint64_t units = fsize / gb + 2;
  const bool overlap_checks = !header_.compressed();
  std::vector<bool> meta(units), data(units);
  auto mark_meta = [&](uint64_t start, uint64_t len) {
    for (uint64_t u = start / gb; u <= (start + len - 1) / gb && u < units; ++u) meta[u] = true;
  };
  if (overlap_checks) {
    mark_meta(0, 512);
    if (header_.desc_offset && header_.desc_size)
      mark_meta(header_.desc_offset * 512, std::min(header_.desc_size * 512, fsize));
    mark_meta(header_.gd_offset * 512, gd_.size() * 4);
    if (!rgd_.empty()) mark_meta(header_.rgd_offset * 512, rgd_.size() * 4);
  }
  for (const std::vector<uint32_t>* dir : {&gd_, &rgd_}) {
    const char* which = dir == &gd_ ? "grain directory" : "redundant grain directory";
    for (uint64_t i = 0; i < dir->size(); ++i) {
      uint64_t sector = (*dir)[i];
      if (sector == 0) continue;
      if (!range_within(sector * 512, table_bytes, fsize))
        corrupt(std::string(which) + " entry " + std::to_string(i) + ": grain table at sector " +
                std::to_string(sector) + " runs past the end of the file");
      else if (overlap_checks)
        mark_meta(sector * 512, table_bytes);
    }
  }
  const uint64_t grains = (size() + gb - 1) / gb;
  for (uint64_t index = 0; index < gd_.size(); ++index) {
    if (gd_[index] == 0 || !range_within(uint64_t(gd_[index]) * 512, table_bytes, fsize)) continue;
    DMU_ASSIGN_OR_RETURN(const std::vector<uint32_t>* table, grain_table(index));
    for (uint64_t i = 0; i < per; ++i) {
      uint64_t grain = index * per + i;
      uint32_t e = (*table)[i];
      if (grain >= grains || e == 0 || (e == kGteZeroed && header_.zero_grain())) continue;
      auto g = decode(grain, e);
      if (!g) {
        // qemu-img check stops here with "Check failed" (exit 1): count a
        // check error too, so dmu check exits as it does.
        corrupt(g.error().message);
        ++r.check_errors;
        continue;
      }
      if (!overlap_checks) continue;
      uint64_t len = std::min(gb, size() - grain * gb);
      bool clash = false;
      for (uint64_t u = g->offset / gb; u <= (g->offset + len - 1) / gb && u < units; ++u) {
        clash |= meta[u] || data[u];
        data[u] = true;
      }
      if (clash)
        corrupt("grain for offset " + hex(grain * gb) + " at sector " + std::to_string(e) +
                " is used twice or overlaps metadata");
    }
  }
  return {};
}

}  // namespace dmu::formats::vmdk
