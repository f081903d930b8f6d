// Decoding, encoding and validating the sparse extent header (see sparse_header.h).
#include "formats/vmdk/sparse_header.h"

#include "common/checked.h"
#include "common/endian.h"

namespace dmu::formats::vmdk {

uint64_t SparseHeader::gd_entries() const {
  uint64_t per_gt = uint64_t(gtes_per_gt) * grain_size;
  return per_gt ? (capacity + per_gt - 1) / per_gt : 0;
}

SparseHeader decode_header(std::span<const uint8_t> b) {
  SparseHeader h;
  h.version = load_le32(&b[4]);
  h.flags = load_le32(&b[8]);
  h.capacity = load_le64(&b[12]);
  h.grain_size = load_le64(&b[20]);
  h.desc_offset = load_le64(&b[28]);
  h.desc_size = load_le64(&b[36]);
  h.gtes_per_gt = load_le32(&b[44]);
  h.rgd_offset = load_le64(&b[48]);
  h.gd_offset = load_le64(&b[56]);
  h.grain_offset = load_le64(&b[64]);
  h.compress_algorithm = load_le16(&b[77]);
  return h;
}

std::vector<uint8_t> encode_header(const SparseHeader& h) {
  std::vector<uint8_t> b(512, 0);
  store_le32(&b[0], kSparseMagic);
  store_le32(&b[4], h.version);
  store_le32(&b[8], h.flags);
  store_le64(&b[12], h.capacity);
  store_le64(&b[20], h.grain_size);
  store_le64(&b[28], h.desc_offset);
  store_le64(&b[36], h.desc_size);
  store_le32(&b[44], h.gtes_per_gt);
  store_le64(&b[48], h.rgd_offset);
  store_le64(&b[56], h.gd_offset);
  store_le64(&b[64], h.grain_offset);
  // Line-ending check bytes: a transfer that mangles newlines also mangles these.
  b[73] = '\n';
  b[74] = ' ';
  b[75] = '\r';
  b[76] = '\n';
  store_le16(&b[77], h.compress_algorithm);
  return b;
}

Result<void> validate_header(const SparseHeader& h, uint64_t file_size, const std::string& what) {
  auto bad = [&](int code, const std::string& msg) { return fail(code, what + ": " + msg); };
  if (h.version == 0 || h.version > 3)
    return bad(ENOTSUP, "unsupported VMDK sparse version " + std::to_string(h.version));
  if (h.compress_algorithm > kCompressDeflate)
    return bad(ENOTSUP, "unknown compressAlgorithm " + std::to_string(h.compress_algorithm));
  if (h.capacity == 0)
    return bad(EINVAL,
               "capacity 0 (an extent whose embedded descriptor names other extents is "
               "not supported)");
  if (h.capacity > kMaxCapacitySectors)
    return bad(EFBIG, "capacity of " + std::to_string(h.capacity) + " sectors exceeds 2 TiB");
  if (h.grain_size == 0 || h.grain_size > kMaxGrainSectors || !is_power_of_two(h.grain_size))
    return bad(EINVAL, "grainSize of " + std::to_string(h.grain_size) +
                           " sectors (must be a power of two up to " +
                           std::to_string(kMaxGrainSectors) + ")");
  if (h.gtes_per_gt == 0 || h.gtes_per_gt > kMaxGtesPerGt)
    return bad(EINVAL, "numGTEsPerGT " + std::to_string(h.gtes_per_gt) + " (must be 1 to 512)");
  uint64_t entries = h.gd_entries();
  if (entries > kMaxGdEntries)
    return bad(EFBIG, "grain directory of " + std::to_string(entries) + " entries is too large");
  auto within = [&](uint64_t sector, uint64_t bytes) {
    auto start = checked_mul(sector, 512);
    return start && range_within(*start, bytes, file_size);
  };
  if (!within(h.gd_offset, entries * 4))
    return bad(EINVAL, "grain directory at sector " + std::to_string(h.gd_offset) +
                           " runs past the end of the file");
  if (h.has_rgd() && !within(h.rgd_offset, entries * 4))
    return bad(EINVAL, "redundant grain directory at sector " + std::to_string(h.rgd_offset) +
                           " runs past the end of the file");
  if (!within(h.grain_offset, 0))
    return bad(EINVAL, "file truncated: grains start at sector " + std::to_string(h.grain_offset) +
                           ", past its end");
  if (h.desc_offset && !within(h.desc_offset, 0))
    return bad(EINVAL, "descriptor at sector " + std::to_string(h.desc_offset) +
                           " lies past the end of the file");
  return {};
}

}  // namespace dmu::formats::vmdk
