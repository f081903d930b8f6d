// The map slots of the test daemon's model format (tests/kmod/model_format.h
// is the contract): encoding a committed map into a slot, checking a slot,
// and finding the committed map (the newest valid slot) on device 0.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "common/error.h"
#include "fileio/file.h"
#include "tests/kmod/model_format.h"

namespace dmu::testd::model {

// One valid slot, decoded.
struct SlotMap {
  uint64_t generation = 0;
  uint64_t block_bytes = 0;
  std::vector<Entry> entries;  // sorted by vblock, each vblock once
};

// The bytes a commit writes at the start of a slot: the superblock padded to
// kSuperBytes, then the entries, padded with zeros to a multiple of 4 KiB
// (O_DIRECT).  entries must be sorted by vblock, each vblock once, and at
// most kMaxEntries of them.
std::vector<uint8_t> encode_slot(uint64_t generation, uint64_t block_bytes,
                                 std::span<const Entry> entries);

// The slot's map when magic, crc and bounds are right (nr_entries within
// kMaxEntries, data_start kDataStart, block_bytes a power of two of at least
// 512, entries strictly sorted); nullopt otherwise.  `slot` holds at least
// the superblock; the entries are read from it when they fit.
std::optional<SlotMap> decode_slot(std::span<const uint8_t> slot);

// What device 0 holds: the newest valid slot, if any.
struct Committed {
  std::optional<SlotMap> map;  // none: no slot is valid, the map is empty
  int slot = -1;               // 0 or 1; -1 when none is valid
  bool other_valid = false;    // the other slot is valid too (older)
};

// Reads both slots of `dev` and picks the newest valid one (highest
// generation; slot 0 on a tie, which a correct writer never produces).
Result<Committed> load_committed(File& dev);

// Byte offset of slot i (0 or 1) and of cluster c on device 0.
inline constexpr uint64_t slot_offset(int i) {
  return static_cast<uint64_t>(i) * kSlotBytes;
}
inline constexpr uint64_t cluster_offset(uint64_t cluster, uint64_t block_bytes) {
  return kDataStart + cluster * block_bytes;
}

}  // namespace dmu::testd::model
