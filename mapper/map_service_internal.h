// Helpers shared by the map service's source files (not part of its interface).
#pragma once

#include <linux/dm-userspace.h>

#include <cstdint>
#include <vector>

namespace dmu::mapper {

inline uint64_t ceil_div(uint64_t a, uint64_t b) {
  return a / b + (a % b != 0);
}

// Appends extent e, merging it into the previous one when it continues it
// (same kind and flags, adjacent blocks, and for REMAP adjacent sectors).
void merge_remap(std::vector<dmu_response>& extents, const dmu_response& e, uint64_t block_sectors);

}  // namespace dmu::mapper
