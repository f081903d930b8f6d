// A multiset of block ranges [first, first + count) with the two questions
// the map service asks on every answer: does a request overlap one, and
// where does the next one start.  Ranges may overlap each other; each add()
// is undone by one remove() with the same values.  Queries cost
// O(log n + ranges starting within the longest range's length before the
// block), which the service keeps small (one write answer maps at most a
// few MiB).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>

namespace dmu::mapper {

class BlockRanges {
 public:
  void add(uint64_t first, uint64_t count);
  void remove(uint64_t first, uint64_t count);
  void clear();
  bool empty() const { return by_first_.empty(); }
  size_t size() const { return by_first_.size(); }

  bool overlaps(uint64_t first, uint64_t count) const;
  // The end of the ranges containing `block`, transitively (a range that
  // contains the end of one continues it); `block` itself if none does.
  uint64_t covered_until(uint64_t block) const;
  // The smallest start above `block`, UINT64_MAX if none.
  uint64_t next_start_after(uint64_t block) const;

 private:
  // The largest end of the ranges containing block, or block.
  uint64_t end_of_ranges_at(uint64_t block) const;

  std::multimap<uint64_t, uint64_t> by_first_;  // first -> end
  uint64_t longest_ = 0;                        // never shrinks: a bound, not exact
};

}  // namespace dmu::mapper
