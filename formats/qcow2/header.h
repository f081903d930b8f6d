// The qcow2 header and its extensions: parsing with every field validated
// (images are hostile input), the feature-bit policy, and encoding a fresh
// first cluster for create().  Nothing else in the engine reads the raw
// header bytes.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/error.h"
#include "formats/qcow2/layout.h"

namespace dmu::formats::qcow2 {

// One row of the feature name table extension.
struct FeatureName {
  uint8_t type = 0;  // 0 incompatible, 1 compatible, 2 autoclear
  uint8_t bit = 0;
  std::string name;
};

struct BitmapsExtension {
  uint32_t nb_bitmaps = 0;
  uint64_t directory_size = 0;
  uint64_t directory_offset = 0;
};

struct Header {
  uint32_t version = 3;
  uint64_t backing_file_offset = 0;
  uint32_t backing_file_size = 0;
  unsigned cluster_bits = 16;
  uint64_t size = 0;
  uint32_t crypt_method = 0;
  uint32_t l1_size = 0;
  uint64_t l1_table_offset = 0;
  uint64_t refcount_table_offset = 0;
  uint32_t refcount_table_clusters = 0;
  uint32_t nb_snapshots = 0;
  uint64_t snapshots_offset = 0;
  uint64_t incompatible = 0;
  uint64_t compatible = 0;
  uint64_t autoclear = 0;
  unsigned refcount_order = 4;
  uint32_t header_length = kV3HeaderLengthWithCompression;
  CompressionType compression_type = CompressionType::Zlib;

  // From the extensions and the backing file name area.
  std::optional<std::string> backing_file;
  std::optional<std::string> backing_format;
  std::optional<std::string> data_file;  // the extension's name, if present
  std::vector<FeatureName> feature_names;
  std::optional<BitmapsExtension> bitmaps;
  bool has_crypto_extension = false;

  bool extended_l2() const { return incompatible & kIncompatExtendedL2; }
  bool has_data_file() const { return incompatible & kIncompatDataFile; }
  bool data_file_raw() const { return autoclear & kAutoclearDataFileRaw; }
  // The bitmaps extension is only valid while the autoclear bit says so.
  bool bitmaps_consistent() const { return bitmaps && (autoclear & kAutoclearBitmaps); }
  Geometry geometry() const { return Geometry::make(cluster_bits, extended_l2(), refcount_order); }
  // "dirty bit", or "bit 7" when the image has no name for it.
  std::string feature_name(uint8_t type, unsigned bit) const;
};

// Bytes of the header to read before the cluster size is known.
inline constexpr size_t kHeaderProbeBytes = kV3HeaderLengthWithCompression;

// Parses the first cluster of the image (zero-padded if the file is shorter).
// Validates every field against the spec and QEMU's limits; file_size bounds
// the table offsets.  Feature bits are judged by check_features(), not here.
Result<Header> parse_header(std::span<const uint8_t> first_cluster, uint64_t file_size,
                            const std::string& path);

// The cluster size announced by a header prefix (for sizing the read).
Result<unsigned> peek_cluster_bits(std::span<const uint8_t> head, const std::string& path);

// Refuses unknown incompatible features, encryption and inconsistent
// combinations, naming the file and the feature.
Result<void> check_features(const Header& h, const std::string& path);

// The first cluster of a new image: header, extensions (backing format,
// data file name, feature name table for version 3), end marker and the
// backing file name.  Fails when it does not fit in one cluster.
Result<std::vector<uint8_t>> encode_header(const Header& h, const std::string& path);

}  // namespace dmu::formats::qcow2
