// The on-disk format of the test daemon's "model" mode (a stateful daemon
// that allocates, for the kernel target's concurrency tests), shared by the
// daemon that writes it and the flush auditor that replays dm-log-writes
// logs and reads it back.
//
// Data device 0 is laid out as
//   [slot 0 | slot 1 | cluster 0 | cluster 1 | ...]
// Each slot is kSlotBytes: a 4 KiB superblock followed by the entries.  A
// commit writes the whole map into the slot not holding the newest valid
// map, with generation + 1, then fdatasync()s; so a torn commit leaves the
// other slot intact.  The newest valid slot (magic, crc and bounds right,
// highest generation) is the committed map.  Virtual blocks without an
// entry read as zeros.  Clusters are block_bytes long; cluster c starts at
// byte data_start + c * block_bytes of device 0.
#pragma once

#include <cstdint>

namespace dmu::testd::model {

inline constexpr char kMagic[8] = {'D', 'M', 'U', 'M', 'O', 'D', 'L', '1'};
inline constexpr uint64_t kSlotBytes = 2 << 20;         // 2 MiB per slot
inline constexpr uint64_t kSuperBytes = 4096;           // superblock, then entries
inline constexpr uint64_t kDataStart = 2 * kSlotBytes;  // cluster 0
inline constexpr uint64_t kMaxEntries = (kSlotBytes - kSuperBytes) / 16;

// Little-endian, at byte 0 of a slot.
struct Superblock {
  char magic[8];
  uint64_t generation;   // 1 for the first commit
  uint64_t block_bytes;  // the dm table's block size in bytes
  uint64_t nr_entries;   // <= kMaxEntries
  uint64_t data_start;   // kDataStart
  uint32_t crc;          // zlib crc32 of this struct with crc = 0, then of the entries
  uint32_t reserved;     // zero
};

// Little-endian, nr_entries of them at byte kSuperBytes of a slot, sorted by
// vblock, each vblock at most once.
struct Entry {
  uint64_t vblock;   // virtual block
  uint64_t cluster;  // where it lives on device 0
};

static_assert(sizeof(Superblock) == 48);
static_assert(sizeof(Entry) == 16);

// The stamp the flush auditor's writer puts at the start of every 4 KiB it
// writes (the rest of the 4 KiB is a pattern derived from the stamp), so a
// replayed device can be checked block by block.
inline constexpr char kStampMagic[8] = {'D', 'M', 'U', 'F', 'A', 'U', 'D', '1'};
struct Stamp {
  char magic[8];
  uint32_t thread;    // writer thread
  uint32_t reserved;  // zero
  uint64_t seq;       // per-thread write counter, from 1
  uint64_t offset;    // byte offset of this 4 KiB in the virtual device
  uint64_t run;       // random per writer run, so stale data from earlier runs never matches
};
static_assert(sizeof(Stamp) == 40);

}  // namespace dmu::testd::model
