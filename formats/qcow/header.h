// The qcow (version 1) header: parsing with every field checked, and
// building one for create().  Layout (big-endian, 48 bytes):
//   0 magic "QFI\xfb"   4 version (1)   8 backing_file_offset   16 backing_file_size
//   20 mtime   24 size (bytes)   32 cluster_bits   33 l2_bits   34 padding
//   36 crypt_method   40 l1_table_offset
// The L1 table has ceil(size / 2^(cluster_bits + l2_bits)) 8-byte entries; an
// L2 table has 2^l2_bits.  An L2 entry is 0 (unallocated), a cluster offset,
// or, with bit 63 set, a compressed cluster: the low 63 - cluster_bits bits
// are its offset and the bits above them its compressed size in bytes.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/error.h"

namespace dmu::formats::qcow {

inline constexpr uint32_t kMagic = 0x514649fb;  // "QFI\xfb"
inline constexpr uint32_t kVersion = 1;
inline constexpr size_t kHeaderSize = 48;
inline constexpr uint64_t kCompressedFlag = uint64_t(1) << 63;
inline constexpr size_t kMaxBackingName = 1023;  // as QEMU
// Memory bound on the in-memory L1 table (8 bytes an entry): 64 MiB covers
// 16 TiB with the smallest tables qemu-img creates.
inline constexpr uint64_t kMaxL1Entries = uint64_t(8) << 20;

struct Header {
  uint64_t backing_file_offset = 0;
  uint32_t backing_file_size = 0;
  uint32_t mtime = 0;
  uint64_t size = 0;  // virtual size in bytes, as stored
  uint8_t cluster_bits = 0;
  uint8_t l2_bits = 0;
  uint32_t crypt_method = 0;
  uint64_t l1_table_offset = 0;

  uint64_t cluster_size() const { return uint64_t(1) << cluster_bits; }
  uint64_t l2_entries() const { return uint64_t(1) << l2_bits; }
  uint64_t l2_bytes() const { return l2_entries() * 8; }
  // Guest bytes one L1 entry covers.
  uint64_t l1_coverage() const { return uint64_t(1) << (cluster_bits + l2_bits); }
  uint64_t l1_entries() const;
  uint64_t compressed_offset_mask() const { return (uint64_t(1) << (63 - cluster_bits)) - 1; }
};

// Parses and validates the first kHeaderSize bytes of `path` (file_size is
// the file's length, for bounds).  Refuses encryption with a clear error.
Result<Header> parse_header(std::span<const uint8_t> bytes, uint64_t file_size,
                            const std::string& path);

// The 48 header bytes for h.
std::vector<uint8_t> serialize_header(const Header& h);

}  // namespace dmu::formats::qcow
