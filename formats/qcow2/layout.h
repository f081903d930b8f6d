// The on-disk layout of qcow2 (QEMU docs/interop/qcow2.txt): header field
// offsets, feature bits, the bit fields of L1/L2/refcount-table entries and
// the geometry derived from cluster_bits, extended L2 and refcount_order.
// Everything here is pure arithmetic on values already validated by
// header.cc, so the rest of the engine can decode entries without repeating
// the spec's bit twiddling.
#pragma once

#include <cstdint>

namespace dmu::formats::qcow2 {

inline constexpr uint32_t kMagic = 0x514649fb;  // "QFI\xfb"
inline constexpr unsigned kMinClusterBits = 9;
inline constexpr unsigned kMaxClusterBits = 21;  // QEMU's implementation limit (2 MiB)
inline constexpr unsigned kMinExtendedL2ClusterBits = 14;
inline constexpr uint64_t kV2HeaderLength = 72;
inline constexpr uint64_t kV3MinHeaderLength = 104;
inline constexpr uint64_t kV3HeaderLengthWithCompression = 112;  // what QEMU writes
inline constexpr uint32_t kMaxBackingNameLength = 1023;
// QEMU's limits; images beyond them are refused (memory bounds).
inline constexpr uint64_t kMaxL1Bytes = 32ull << 20;
inline constexpr uint64_t kMaxRefTableBytes = 8ull << 20;
inline constexpr uint32_t kMaxSnapshots = 65536;
inline constexpr uint64_t kMaxSnapshotTableBytes = 64ull << 20;
inline constexpr uint32_t kMaxSnapshotExtraData = 1024;
inline constexpr uint32_t kMaxBitmaps = 65535;
inline constexpr uint64_t kMaxBitmapDirectoryBytes = 64ull << 20;
inline constexpr uint32_t kMaxBitmapNameLength = 1023;
inline constexpr unsigned kSubclustersPerCluster = 32;
inline constexpr uint64_t kSectorSize = 512;

// Header field offsets.
namespace field {
inline constexpr unsigned kVersion = 4;
inline constexpr unsigned kBackingFileOffset = 8;
inline constexpr unsigned kBackingFileSize = 16;
inline constexpr unsigned kClusterBits = 20;
inline constexpr unsigned kSize = 24;
inline constexpr unsigned kCryptMethod = 32;
inline constexpr unsigned kL1Size = 36;
inline constexpr unsigned kL1TableOffset = 40;
inline constexpr unsigned kRefcountTableOffset = 48;
inline constexpr unsigned kRefcountTableClusters = 56;
inline constexpr unsigned kNbSnapshots = 60;
inline constexpr unsigned kSnapshotsOffset = 64;
inline constexpr unsigned kIncompatibleFeatures = 72;
inline constexpr unsigned kCompatibleFeatures = 80;
inline constexpr unsigned kAutoclearFeatures = 88;
inline constexpr unsigned kRefcountOrder = 96;
inline constexpr unsigned kHeaderLength = 100;
inline constexpr unsigned kCompressionType = 104;
}  // namespace field

// Feature bits.
inline constexpr uint64_t kIncompatDirty = 1ull << 0;
inline constexpr uint64_t kIncompatCorrupt = 1ull << 1;
inline constexpr uint64_t kIncompatDataFile = 1ull << 2;
inline constexpr uint64_t kIncompatCompressionType = 1ull << 3;
inline constexpr uint64_t kIncompatExtendedL2 = 1ull << 4;
inline constexpr uint64_t kIncompatKnown = (1ull << 5) - 1;
inline constexpr uint64_t kCompatLazyRefcounts = 1ull << 0;
inline constexpr uint64_t kAutoclearBitmaps = 1ull << 0;
inline constexpr uint64_t kAutoclearDataFileRaw = 1ull << 1;
inline constexpr uint64_t kAutoclearKnown = kAutoclearBitmaps | kAutoclearDataFileRaw;

// Header extension types.
inline constexpr uint32_t kExtEnd = 0;
inline constexpr uint32_t kExtBackingFormat = 0xe2792aca;
inline constexpr uint32_t kExtFeatureTable = 0x6803f857;
inline constexpr uint32_t kExtBitmaps = 0x23852875;
inline constexpr uint32_t kExtCrypto = 0x0537be77;
inline constexpr uint32_t kExtDataFile = 0x44415441;

enum class CompressionType : uint8_t { Zlib = 0, Zstd = 1 };

// Entry bit fields.
inline constexpr uint64_t kOflagCopied = 1ull << 63;
inline constexpr uint64_t kOflagCompressed = 1ull << 62;
inline constexpr uint64_t kOflagZero = 1ull << 0;
inline constexpr uint64_t kL1OffsetMask = 0x00fffffffffffe00ull;
inline constexpr uint64_t kL1ReservedMask = 0x7f000000000001ffull;
inline constexpr uint64_t kL2OffsetMask = 0x00fffffffffffe00ull;
inline constexpr uint64_t kL2StdReservedMask = 0x3f000000000001feull;
inline constexpr uint64_t kRefTableOffsetMask = 0xfffffffffffffe00ull;
inline constexpr uint64_t kRefTableReservedMask = 0x1ffull;
inline constexpr uint64_t kBitmapAllAlloc = 0xffffffffull;
inline constexpr uint64_t kBitmapAllZero = 0xffffffffull << 32;

// Sizes derived from the header.
struct Geometry {
  unsigned cluster_bits = 16;
  uint64_t cluster_size = 1ull << 16;
  bool extended_l2 = false;
  unsigned l2_entry_bytes = 8;  // 16 with extended L2 (entry + subcluster bitmap)
  unsigned l2_bits = 13;        // log2(entries per L2 table)
  uint64_t l2_entries = 1ull << 13;
  unsigned subcluster_bits = 16;  // == cluster_bits without extended L2
  uint64_t subcluster_size = 1ull << 16;
  unsigned subclusters = 1;  // per cluster: 32 with extended L2
  unsigned refcount_order = 4;
  unsigned refcount_bits = 16;
  uint64_t refcount_max = 0xffff;
  unsigned refblock_bits = 15;  // log2(refcounts per refcount block)
  uint64_t refblock_entries = 1ull << 15;
  // Compressed cluster descriptor: offset in bits [0, csize_shift), extra
  // sectors in [csize_shift, 62).
  unsigned csize_shift = 54;
  uint64_t csize_mask = 0xff;
  uint64_t compressed_offset_mask = (1ull << 54) - 1;

  static Geometry make(unsigned cluster_bits, bool extended_l2, unsigned refcount_order) {
    Geometry g;
    g.cluster_bits = cluster_bits;
    g.cluster_size = 1ull << cluster_bits;
    g.extended_l2 = extended_l2;
    g.l2_entry_bytes = extended_l2 ? 16 : 8;
    g.l2_bits = cluster_bits - (extended_l2 ? 4 : 3);
    g.l2_entries = 1ull << g.l2_bits;
    g.subclusters = extended_l2 ? kSubclustersPerCluster : 1;
    g.subcluster_bits = extended_l2 ? cluster_bits - 5 : cluster_bits;
    g.subcluster_size = 1ull << g.subcluster_bits;
    g.refcount_order = refcount_order;
    g.refcount_bits = 1u << refcount_order;
    g.refcount_max = g.refcount_bits == 64 ? ~0ull : (1ull << g.refcount_bits) - 1;
    g.refblock_bits = cluster_bits + 3 - refcount_order;
    g.refblock_entries = 1ull << g.refblock_bits;
    g.csize_shift = 62 - (cluster_bits - 8);
    g.csize_mask = (1ull << (cluster_bits - 8)) - 1;
    g.compressed_offset_mask = (1ull << g.csize_shift) - 1;
    return g;
  }

  uint64_t offset_in_cluster(uint64_t v) const { return v & (cluster_size - 1); }
  uint64_t cluster_index(uint64_t offset) const { return offset >> cluster_bits; }
  uint64_t clusters_for(uint64_t bytes) const {  // bytes < 2^63
    return (bytes + cluster_size - 1) >> cluster_bits;
  }
  // Guest bytes one L1 entry (one L2 table) covers, as a shift.
  unsigned l1_entry_shift() const { return cluster_bits + l2_bits; }
};

// The kind of one L2 entry (QEMU's QCow2ClusterType).
enum class ClusterType { Unallocated, ZeroPlain, ZeroAlloc, Normal, Compressed };

inline ClusterType cluster_type(const Geometry& g, uint64_t entry, bool has_data_file) {
  if (entry & kOflagCompressed) return ClusterType::Compressed;
  if ((entry & kOflagZero) && !g.extended_l2)
    return (entry & kL2OffsetMask) ? ClusterType::ZeroAlloc : ClusterType::ZeroPlain;
  if (!(entry & kL2OffsetMask)) {
    // Offset 0 is a valid data-file offset; the copied flag disambiguates.
    if (has_data_file && (entry & kOflagCopied)) return ClusterType::Normal;
    return ClusterType::Unallocated;
  }
  return ClusterType::Normal;
}

// Where a compressed cluster's bytes are: [offset, offset + size) in the
// image file, size ending on a 512-byte boundary.
struct CompressedExtent {
  uint64_t offset = 0;
  uint64_t size = 0;
};

inline CompressedExtent compressed_extent(const Geometry& g, uint64_t entry) {
  CompressedExtent e;
  e.offset = entry & g.compressed_offset_mask;
  uint64_t sectors = ((entry >> g.csize_shift) & g.csize_mask) + 1;
  e.size = sectors * kSectorSize - (e.offset & (kSectorSize - 1));
  return e;
}

}  // namespace dmu::formats::qcow2
