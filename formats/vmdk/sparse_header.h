// The hosted sparse extent header ("KDMV", VMware Virtual Disk Format 1.1),
// little-endian, in the first sector of a sparse extent file:
//   0 magic   4 version   8 flags   12 capacity (sectors)   20 grainSize (sectors)
//   28 descriptorOffset   36 descriptorSize   44 numGTEsPerGT   48 rgdOffset
//   56 gdOffset   64 overHead (grain offset)   72 uncleanShutdown
//   73 "\n \r\n" check bytes   77 compressAlgorithm (u16)
// Offsets and sizes are in sectors.  A stream-optimized extent may say
// gdOffset = GD_AT_END; the real header is then a footer 1536 bytes before
// the end of the file (footer marker, header sector, end-of-stream marker).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "common/error.h"

namespace dmu::formats::vmdk {

inline constexpr uint32_t kSparseMagic = 0x564d444b;  // "KDMV" read little-endian
inline constexpr uint32_t kCowdMagic = 0x44574f43;    // "COWD": VMFS sparse (unsupported)
inline constexpr uint32_t kFlagNewlineDetect = 1 << 0;
inline constexpr uint32_t kFlagRedundantGd = 1 << 1;
inline constexpr uint32_t kFlagZeroGrain = 1 << 2;
inline constexpr uint32_t kFlagCompressed = 1 << 16;
inline constexpr uint32_t kFlagMarkers = 1 << 17;
inline constexpr uint64_t kGdAtEnd = ~uint64_t(0);
inline constexpr uint32_t kGteZeroed = 1;
inline constexpr uint16_t kCompressDeflate = 1;
// Limits for hostile headers (QEMU's, or tighter where memory is at stake).
inline constexpr uint64_t kMaxCapacitySectors = uint64_t(1) << 32;  // 2 TiB an extent
inline constexpr uint64_t kMaxGrainSectors = 1 << 15;               // 16 MiB grains
inline constexpr uint32_t kMaxGtesPerGt = 512;
inline constexpr uint64_t kMaxGdEntries = uint64_t(4) << 20;  // 16 MiB a directory

struct SparseHeader {
  uint32_t version = 0;
  uint32_t flags = 0;
  uint64_t capacity = 0;     // sectors
  uint64_t grain_size = 0;   // sectors
  uint64_t desc_offset = 0;  // sectors
  uint64_t desc_size = 0;    // sectors
  uint32_t gtes_per_gt = 0;
  uint64_t rgd_offset = 0;    // sectors
  uint64_t gd_offset = 0;     // sectors
  uint64_t grain_offset = 0;  // sectors ("overHead")
  uint16_t compress_algorithm = 0;

  bool compressed() const { return compress_algorithm == kCompressDeflate; }
  bool markers() const { return flags & kFlagMarkers; }
  bool zero_grain() const { return flags & kFlagZeroGrain; }
  bool has_rgd() const { return (flags & kFlagRedundantGd) && rgd_offset != 0; }
  uint64_t gd_entries() const;  // grain tables needed for the capacity
};

// Decodes a header sector (at least 79 bytes, magic included) without checks.
SparseHeader decode_header(std::span<const uint8_t> sector);
// The 512-byte header sector of h.
std::vector<uint8_t> encode_header(const SparseHeader& h);
// Checks every field against the limits and the file size; `what` names the
// extent file in messages.
Result<void> validate_header(const SparseHeader& h, uint64_t file_size, const std::string& what);

}  // namespace dmu::formats::vmdk
