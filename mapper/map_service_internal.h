// Helpers shared by the map service's source files (not part of its interface).
#pragma once

#include <linux/dm-userspace.h>

#include <cstdint>
#include <vector>

#include "common/checked.h"  // ceil_div, used by the service's files

namespace dmu::mapper {

// Appends extent e, merging it into the previous one when it continues it
// (same kind and flags, adjacent blocks, and for REMAP adjacent sectors).
void merge_remap(std::vector<dmu_response>& extents, const dmu_response& e, uint64_t block_sectors);

}  // namespace dmu::mapper
