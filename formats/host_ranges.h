// Byte ranges of a file that are in use, for engines without refcounts (qcow
// v1, sparse vmdk): adopt_write must refuse host ranges that overlap the
// committed metadata or data, or another adoption, and these formats can only
// tell by walking their tables once.
#pragma once

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <map>

namespace dmu::formats {

class HostRanges {
 public:
  // Marks [start, start + length) used (overlaps are allowed: compressed
  // clusters share file clusters).
  void add(uint64_t start, uint64_t length) {
    if (length == 0) return;
    uint64_t end = start + length;
    auto it = ranges_.upper_bound(start);
    if (it != ranges_.begin() && std::prev(it)->second >= start) {
      --it;
      start = it->first;
      end = std::max(end, it->second);
    }
    while (it != ranges_.end() && it->first <= end) {
      end = std::max(end, it->second);
      it = ranges_.erase(it);
    }
    ranges_[start] = end;
  }
  // True when some byte of [start, start + length) is used.
  bool overlaps(uint64_t start, uint64_t length) const {
    auto it = ranges_.lower_bound(start + length);
    return it != ranges_.begin() && std::prev(it)->second > start;
  }

 private:
  std::map<uint64_t, uint64_t> ranges_;  // start -> end, disjoint, not touching
};

}  // namespace dmu::formats
