// Parsing, validating and encoding the qcow2 header (see header.h).
#include "formats/qcow2/header.h"

#include <algorithm>
#include <cstring>

#include "common/checked.h"
#include "common/endian.h"

namespace dmu::formats::qcow2 {
namespace {

constexpr size_t kFeatureEntryBytes = 48;
constexpr size_t kFeatureNameBytes = 46;

tl::unexpected<Error> bad(const std::string& path, const std::string& what) {
  return fail(EINVAL, path + ": qcow2 header: " + what);
}

// A table [offset, offset + bytes) must be cluster aligned and addressable.
Result<void> validate_table(const std::string& path, const char* name, uint64_t offset,
                            uint64_t bytes, uint64_t cluster_size) {
  if (offset % cluster_size)
    return bad(path, std::string(name) + " offset " + hex(offset) + " is not cluster aligned");
  auto end = checked_add(offset, bytes);
  if (!end || *end > (uint64_t(1) << 63))
    return bad(path, std::string(name) + " at " + hex(offset) + " (" + std::to_string(bytes) +
                         " bytes) exceeds the largest file offset");
  return {};
}

std::string string_from(std::span<const uint8_t> bytes) {
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

// Parses the header extension area [start, end) of the first cluster.
Result<void> parse_extensions(Header& h, std::span<const uint8_t> cluster, uint64_t start,
                              uint64_t end, const std::string& path) {
  bool seen_backing_format = false, seen_feature_table = false, seen_bitmaps = false,
       seen_data_file = false;
  uint64_t off = start;
  // Every extension takes at least 8 bytes, so this loop ends.
  while (off < end) {
    if (end - off < 8)
      return bad(path, "header extension at " + hex(off) + " runs past the extension area");
    uint32_t type = load_be32(&cluster[off]);
    uint32_t len = load_be32(&cluster[off + 4]);
    off += 8;
    if (type == kExtEnd) return {};
    if (len > end - off)
      return bad(path, "header extension " + hex(type) + " at " + hex(off - 8) + " has length " +
                           std::to_string(len) + " past the extension area");
    auto data = cluster.subspan(off, len);
    auto once = [&](bool& seen, const char* what) -> Result<void> {
      if (seen) return bad(path, std::string("duplicate ") + what + " header extension");
      seen = true;
      return {};
    };
    switch (type) {
      case kExtBackingFormat:
        DMU_TRY(once(seen_backing_format, "backing format"));
        h.backing_format = string_from(data);
        break;
      case kExtDataFile:
        DMU_TRY(once(seen_data_file, "external data file"));
        if (data.empty()) return bad(path, "external data file name is empty");
        if (std::find(data.begin(), data.end(), 0) != data.end())
          return bad(path, "external data file name contains a NUL byte");
        h.data_file = string_from(data);
        break;
      case kExtFeatureTable:
        DMU_TRY(once(seen_feature_table, "feature name table"));
        for (size_t i = 0; i + kFeatureEntryBytes <= data.size(); i += kFeatureEntryBytes) {
          FeatureName f;
          f.type = data[i];
          f.bit = data[i + 1];
          auto name = data.subspan(i + 2, kFeatureNameBytes);
          auto nul = std::find(name.begin(), name.end(), 0);
          f.name = std::string(name.begin(), nul);
          h.feature_names.push_back(std::move(f));
        }
        break;
      case kExtBitmaps: {
        DMU_TRY(once(seen_bitmaps, "bitmaps"));
        if (len != 24)
          return bad(path, "bitmaps extension has length " + std::to_string(len) + ", expected 24");
        BitmapsExtension b;
        b.nb_bitmaps = load_be32(&data[0]);
        uint32_t reserved = load_be32(&data[4]);
        b.directory_size = load_be64(&data[8]);
        b.directory_offset = load_be64(&data[16]);
        if (reserved) return bad(path, "bitmaps extension reserved field is not zero");
        if (b.nb_bitmaps == 0 || b.nb_bitmaps > kMaxBitmaps)
          return bad(path, "bitmaps extension claims " + std::to_string(b.nb_bitmaps) +
                               " bitmaps (1.." + std::to_string(kMaxBitmaps) + " allowed)");
        if (b.directory_size == 0 || b.directory_size > kMaxBitmapDirectoryBytes)
          return bad(path, "bitmap directory size " + std::to_string(b.directory_size) +
                               " is out of range");
        DMU_TRY(validate_table(path, "bitmap directory", b.directory_offset, b.directory_size,
                               uint64_t(1) << h.cluster_bits));
        h.bitmaps = b;
        break;
      }
      case kExtCrypto:
        h.has_crypto_extension = true;
        break;
      default:
        break;  // unknown extensions can be ignored (spec)
    }
    off += (uint64_t(len) + 7) & ~uint64_t(7);
  }
  return {};
}

}  // namespace

std::string Header::feature_name(uint8_t type, unsigned bit) const {
  for (const FeatureName& f : feature_names)
    if (f.type == type && f.bit == bit && !f.name.empty()) return "'" + f.name + "'";
  static const char* const kKnown[3][5] = {
      {"'dirty bit'", "'corrupt bit'", "'external data file'", "'compression type'",
       "'extended L2 entries'"},
      {"'lazy refcounts'", nullptr, nullptr, nullptr, nullptr},
      {"'bitmaps'", "'raw external data'", nullptr, nullptr, nullptr}};
  if (type < 3 && bit < 5 && kKnown[type][bit]) return kKnown[type][bit];
  return "bit " + std::to_string(bit);
}

Result<unsigned> peek_cluster_bits(std::span<const uint8_t> head, const std::string& path) {
  if (head.size() < kV2HeaderLength) return bad(path, "file is too short for a qcow2 header");
  if (load_be32(&head[0]) != kMagic) return bad(path, "bad magic, not a qcow2 image");
  unsigned bits = load_be32(&head[field::kClusterBits]);
  if (bits < kMinClusterBits || bits > kMaxClusterBits)
    return bad(path, "cluster_bits " + std::to_string(bits) + " is outside " +
                         std::to_string(kMinClusterBits) + ".." + std::to_string(kMaxClusterBits));
  return bits;
}

Result<Header> parse_header(std::span<const uint8_t> c, uint64_t file_size,
                            const std::string& path) {
  if (file_size < kV2HeaderLength) return bad(path, "file is too short for a qcow2 header");
  DMU_ASSIGN_OR_RETURN(unsigned cluster_bits, peek_cluster_bits(c, path));
  const uint64_t cs = uint64_t(1) << cluster_bits;
  if (c.size() < cs) return bad(path, "first cluster was not read completely");
  Header h;
  h.cluster_bits = cluster_bits;
  h.version = load_be32(&c[field::kVersion]);
  if (h.version != 2 && h.version != 3)
    return fail(ENOTSUP, path + ": unsupported qcow2 version " + std::to_string(h.version));
  h.backing_file_offset = load_be64(&c[field::kBackingFileOffset]);
  h.backing_file_size = load_be32(&c[field::kBackingFileSize]);
  h.size = load_be64(&c[field::kSize]);
  h.crypt_method = load_be32(&c[field::kCryptMethod]);
  h.l1_size = load_be32(&c[field::kL1Size]);
  h.l1_table_offset = load_be64(&c[field::kL1TableOffset]);
  h.refcount_table_offset = load_be64(&c[field::kRefcountTableOffset]);
  h.refcount_table_clusters = load_be32(&c[field::kRefcountTableClusters]);
  h.nb_snapshots = load_be32(&c[field::kNbSnapshots]);
  h.snapshots_offset = load_be64(&c[field::kSnapshotsOffset]);
  if (h.version == 2) {
    h.header_length = kV2HeaderLength;
    h.refcount_order = 4;
  } else {
    h.incompatible = load_be64(&c[field::kIncompatibleFeatures]);
    h.compatible = load_be64(&c[field::kCompatibleFeatures]);
    h.autoclear = load_be64(&c[field::kAutoclearFeatures]);
    h.refcount_order = load_be32(&c[field::kRefcountOrder]);
    h.header_length = load_be32(&c[field::kHeaderLength]);
    if (h.header_length < kV3MinHeaderLength)
      return bad(path, "header_length " + std::to_string(h.header_length) + " is below 104");
    if (h.header_length > cs)
      return bad(path,
                 "header_length " + std::to_string(h.header_length) + " exceeds the cluster size");
    if (h.refcount_order > 6)
      return bad(path, "refcount_order " + std::to_string(h.refcount_order) + " exceeds 6");
    uint8_t ctype = h.header_length > field::kCompressionType ? c[field::kCompressionType] : 0;
    if (h.incompatible & kIncompatCompressionType) {
      if (ctype == 0)
        return bad(path, "compression type bit is set but compression_type is zlib (0)");
      if (ctype != uint8_t(CompressionType::Zstd))
        return fail(ENOTSUP,
                    path + ": qcow2 header: unknown compression_type " + std::to_string(ctype));
    } else if (ctype != 0) {
      return bad(path, "compression_type " + std::to_string(ctype) +
                           " is set but the compression type bit is clear");
    }
    h.compression_type = CompressionType(ctype);
  }
  const Geometry g = h.geometry();

  if (h.extended_l2() && cluster_bits < kMinExtendedL2ClusterBits)
    return bad(path, "extended L2 entries need clusters of at least 16 KiB, cluster_bits is " +
                         std::to_string(cluster_bits));

  // Backing file name: inside the first cluster, at most 1023 bytes.
  uint64_t ext_end = cs;
  if (h.backing_file_offset) {
    if (h.backing_file_offset > cs)
      return bad(path, "backing_file_offset " + hex(h.backing_file_offset) +
                           " is outside the first cluster");
    uint64_t limit = std::min<uint64_t>(kMaxBackingNameLength, cs - h.backing_file_offset);
    if (h.backing_file_size > limit)
      return bad(path, "backing file name length " + std::to_string(h.backing_file_size) +
                           " exceeds " + std::to_string(limit) + " bytes");
    ext_end = h.backing_file_offset;
    if (h.backing_file_size) {
      auto name = c.subspan(h.backing_file_offset, h.backing_file_size);
      if (std::find(name.begin(), name.end(), 0) != name.end())
        return bad(path, "backing file name contains a NUL byte");
      h.backing_file = string_from(name);
    }
  }

  // Virtual size and the active L1 table.
  const unsigned l1_shift = g.l1_entry_shift();
  uint64_t l1_needed = (h.size >> l1_shift) + ((h.size & ((uint64_t(1) << l1_shift) - 1)) != 0);
  if (l1_needed > kMaxL1Bytes / 8)
    return fail(EFBIG, path + ": qcow2 header: virtual size " + std::to_string(h.size) +
                           " needs an L1 table larger than 32 MiB");
  if (h.l1_size > kMaxL1Bytes / 8)
    return fail(EFBIG, path + ": qcow2 header: l1_size " + std::to_string(h.l1_size) +
                           " exceeds the 32 MiB L1 table limit");
  if (h.l1_size < l1_needed)
    return bad(path, "l1_size " + std::to_string(h.l1_size) + " is too small for virtual size " +
                         std::to_string(h.size) + " (needs " + std::to_string(l1_needed) + ")");
  if (h.l1_size)
    DMU_TRY(validate_table(path, "L1 table", h.l1_table_offset, uint64_t(h.l1_size) * 8, cs));

  // Refcount table.
  if (h.refcount_table_clusters == 0) return bad(path, "image has no refcount table");
  if (uint64_t(h.refcount_table_clusters) << cluster_bits > kMaxRefTableBytes)
    return fail(EFBIG, path + ": qcow2 header: refcount table of " +
                           std::to_string(h.refcount_table_clusters) +
                           " clusters exceeds the 8 MiB limit");
  DMU_TRY(validate_table(path, "refcount table", h.refcount_table_offset,
                         uint64_t(h.refcount_table_clusters) << cluster_bits, cs));

  // Snapshot table.
  if (h.nb_snapshots > kMaxSnapshots)
    return bad(path, "nb_snapshots " + std::to_string(h.nb_snapshots) + " exceeds 65536");
  if (h.nb_snapshots)
    DMU_TRY(validate_table(path, "snapshot table", h.snapshots_offset,
                           uint64_t(h.nb_snapshots) * 40, cs));

  uint64_t ext_start = h.header_length;
  if (ext_start < ext_end) DMU_TRY(parse_extensions(h, c, ext_start, ext_end, path));
  return h;
}

Result<void> check_features(const Header& h, const std::string& path) {
  if (h.crypt_method != 0) {
    const char* what = h.crypt_method == 1 ? "AES" : h.crypt_method == 2 ? "LUKS" : "unknown";
    return fail(ENOTSUP, path + ": encrypted qcow2 images are not supported (crypt_method " +
                             std::to_string(h.crypt_method) + ", " + what + ")");
  }
  uint64_t unknown = h.incompatible & ~kIncompatKnown;
  if (unknown) {
    std::string names;
    for (unsigned bit = 0; bit < 64; ++bit)
      if (unknown & (uint64_t(1) << bit))
        names += (names.empty() ? "" : ", ") + h.feature_name(0, bit);
    return fail(ENOTSUP, path + ": unsupported qcow2 incompatible feature(s): " + names);
  }
  if (h.has_data_file() && !h.data_file)
    return fail(EINVAL, path + ": qcow2 image needs an external data file but names none");
  if (h.data_file_raw() && !h.has_data_file())
    return fail(EINVAL,
                path + ": qcow2 header: data-file-raw is set without an external data file");
  return {};
}

Result<std::vector<uint8_t>> encode_header(const Header& h, const std::string& path) {
  const uint64_t cs = uint64_t(1) << h.cluster_bits;
  std::vector<uint8_t> c(cs, 0);
  store_be32(&c[0], kMagic);
  store_be32(&c[field::kVersion], h.version);
  store_be32(&c[field::kClusterBits], h.cluster_bits);
  store_be64(&c[field::kSize], h.size);
  store_be32(&c[field::kCryptMethod], 0);
  store_be32(&c[field::kL1Size], h.l1_size);
  store_be64(&c[field::kL1TableOffset], h.l1_table_offset);
  store_be64(&c[field::kRefcountTableOffset], h.refcount_table_offset);
  store_be32(&c[field::kRefcountTableClusters], h.refcount_table_clusters);
  store_be32(&c[field::kNbSnapshots], 0);
  store_be64(&c[field::kSnapshotsOffset], 0);
  uint64_t off = kV2HeaderLength;
  if (h.version >= 3) {
    store_be64(&c[field::kIncompatibleFeatures], h.incompatible);
    store_be64(&c[field::kCompatibleFeatures], h.compatible);
    store_be64(&c[field::kAutoclearFeatures], h.autoclear);
    store_be32(&c[field::kRefcountOrder], h.refcount_order);
    store_be32(&c[field::kHeaderLength], uint32_t(kV3HeaderLengthWithCompression));
    c[field::kCompressionType] = uint8_t(h.compression_type);
    off = kV3HeaderLengthWithCompression;
  }
  auto too_big = [&] {
    return fail(EINVAL, path + ": header, extensions and backing file name do not fit in one " +
                            std::to_string(cs) + "-byte cluster");
  };
  auto put_ext = [&](uint32_t type, std::span<const uint8_t> data) -> bool {
    uint64_t padded = (data.size() + 7) & ~size_t(7);
    if (off + 8 + padded > cs) return false;
    store_be32(&c[off], type);
    store_be32(&c[off + 4], uint32_t(data.size()));
    std::copy(data.begin(), data.end(), c.begin() + long(off + 8));
    off += 8 + padded;
    return true;
  };
  auto bytes_of = [](const std::string& s) {
    return std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  };
  if (h.backing_format && !put_ext(kExtBackingFormat, bytes_of(*h.backing_format)))
    return too_big();
  if (h.data_file && !put_ext(kExtDataFile, bytes_of(*h.data_file))) return too_big();
  if (h.version >= 3) {
    // The names QEMU writes, so old readers can name what they refuse.
    static const struct {
      uint8_t type, bit;
      const char* name;
    } kTable[] = {
        {0, 0, "dirty bit"},        {0, 1, "corrupt bit"},         {0, 2, "external data file"},
        {0, 3, "compression type"}, {0, 4, "extended L2 entries"}, {1, 0, "lazy refcounts"},
        {2, 0, "bitmaps"},          {2, 1, "raw external data"}};
    std::vector<uint8_t> table(sizeof kTable / sizeof kTable[0] * kFeatureEntryBytes, 0);
    for (size_t i = 0; i < sizeof kTable / sizeof kTable[0]; ++i) {
      table[i * kFeatureEntryBytes] = kTable[i].type;
      table[i * kFeatureEntryBytes + 1] = kTable[i].bit;
      std::memcpy(&table[i * kFeatureEntryBytes + 2], kTable[i].name, std::strlen(kTable[i].name));
    }
    if (!put_ext(kExtFeatureTable, table)) return too_big();
  }
  if (off + 8 > cs) return too_big();
  off += 8;  // end marker: already zero
  if (h.backing_file) {
    if (h.backing_file->empty() || h.backing_file->size() > kMaxBackingNameLength)
      return fail(EINVAL, path + ": backing file name must be 1.." +
                              std::to_string(kMaxBackingNameLength) + " bytes");
    if (off + h.backing_file->size() > cs) return too_big();
    store_be64(&c[field::kBackingFileOffset], off);
    store_be32(&c[field::kBackingFileSize], uint32_t(h.backing_file->size()));
    std::memcpy(&c[off], h.backing_file->data(), h.backing_file->size());
  }
  return c;
}

}  // namespace dmu::formats::qcow2
