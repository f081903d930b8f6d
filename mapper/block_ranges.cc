#include "mapper/block_ranges.h"

#include <algorithm>
#include <limits>

namespace dmu::mapper {

void BlockRanges::add(uint64_t first, uint64_t count) {
  if (count == 0) return;
  by_first_.emplace(first, first + count);
  longest_ = std::max(longest_, count);
}

void BlockRanges::remove(uint64_t first, uint64_t count) {
  if (count == 0) return;
  auto [lo, hi] = by_first_.equal_range(first);
  for (auto it = lo; it != hi; ++it)
    if (it->second == first + count) {
      by_first_.erase(it);
      break;
    }
  if (by_first_.empty()) longest_ = 0;
}

void BlockRanges::clear() {
  by_first_.clear();
  longest_ = 0;
}

uint64_t BlockRanges::end_of_ranges_at(uint64_t block) const {
  // Only ranges starting at most longest_ - 1 blocks before can reach block.
  const uint64_t from = block >= longest_ ? block - longest_ + 1 : 0;
  uint64_t end = block;
  for (auto it = by_first_.lower_bound(from); it != by_first_.end() && it->first <= block; ++it)
    end = std::max(end, it->second);
  return end;
}

bool BlockRanges::overlaps(uint64_t first, uint64_t count) const {
  if (count == 0 || by_first_.empty()) return false;
  if (end_of_ranges_at(first) > first) return true;
  return next_start_after(first) - first < count;
}

uint64_t BlockRanges::covered_until(uint64_t block) const {
  uint64_t end = block;
  for (uint64_t next = end_of_ranges_at(block); next > end; next = end_of_ranges_at(next)) end = next;
  return end;
}

uint64_t BlockRanges::next_start_after(uint64_t block) const {
  auto it = by_first_.upper_bound(block);
  return it == by_first_.end() ? std::numeric_limits<uint64_t>::max() : it->first;
}

}  // namespace dmu::mapper
