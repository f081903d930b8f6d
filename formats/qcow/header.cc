// Parsing and building the qcow header (see header.h).
#include "formats/qcow/header.h"

#include "common/checked.h"
#include "common/endian.h"

namespace dmu::formats::qcow {

uint64_t Header::l1_entries() const {
  uint64_t shift = cluster_bits + l2_bits;
  return (size >> shift) + ((size & (l1_coverage() - 1)) ? 1 : 0);
}

Result<Header> parse_header(std::span<const uint8_t> b, uint64_t file_size,
                            const std::string& path) {
  auto bad = [&](int code, const std::string& what) { return fail(code, path + ": " + what); };
  if (b.size() < kHeaderSize) return bad(EINVAL, "file too short for a qcow header");
  if (load_be32(&b[0]) != kMagic) return bad(EINVAL, "not a qcow image (bad magic)");
  uint32_t version = load_be32(&b[4]);
  if (version != kVersion)
    return bad(ENOTSUP,
               "qcow version " + std::to_string(version) + " is not supported (expected 1)");
  Header h;
  h.backing_file_offset = load_be64(&b[8]);
  h.backing_file_size = load_be32(&b[16]);
  h.mtime = load_be32(&b[20]);
  h.size = load_be64(&b[24]);
  h.cluster_bits = b[32];
  h.l2_bits = b[33];
  h.crypt_method = load_be32(&b[36]);
  h.l1_table_offset = load_be64(&b[40]);

  if (h.crypt_method == 1)
    return bad(ENOTSUP, "encrypted qcow images (crypt_method 1, AES) are not supported");
  if (h.crypt_method != 0)
    return bad(EINVAL, "invalid crypt_method " + std::to_string(h.crypt_method) + " in header");
  if (h.cluster_bits < 9 || h.cluster_bits > 16)
    return bad(EINVAL, "cluster_bits " + std::to_string(h.cluster_bits) +
                           " out of range (cluster size must be 512 bytes to 64 KiB)");
  if (h.l2_bits < 6 || h.l2_bits > 13)
    return bad(EINVAL, "l2_bits " + std::to_string(h.l2_bits) +
                           " out of range (L2 table size must be 512 bytes to 64 KiB)");
  if (h.size < 512)
    return bad(EINVAL, "virtual size " + std::to_string(h.size) + " is below one sector");
  // Keep every guest offset and L1 index computation far from overflow.
  if (h.size > (uint64_t(1) << 56))
    return bad(EFBIG, "virtual size " + std::to_string(h.size) + " is too large");
  uint64_t l1 = h.l1_entries();
  if (l1 > kMaxL1Entries)
    return bad(EFBIG, "L1 table of " + std::to_string(l1) + " entries exceeds the limit of " +
                          std::to_string(kMaxL1Entries));
  if (!range_within(h.l1_table_offset, l1 * 8, file_size))
    return bad(EINVAL, "L1 table at " + hex(h.l1_table_offset) + " (" + std::to_string(l1 * 8) +
                           " bytes) runs past the end of the file (" + std::to_string(file_size) +
                           " bytes)");
  if (h.backing_file_offset != 0) {
    if (h.backing_file_size > kMaxBackingName)
      return bad(EINVAL, "backing file name of " + std::to_string(h.backing_file_size) +
                             " bytes is too long (limit 1023)");
    if (!range_within(h.backing_file_offset, h.backing_file_size, file_size))
      return bad(EINVAL, "backing file name at " + hex(h.backing_file_offset) +
                             " runs past the end of the file");
  }
  return h;
}

std::vector<uint8_t> serialize_header(const Header& h) {
  std::vector<uint8_t> b(kHeaderSize, 0);
  store_be32(&b[0], kMagic);
  store_be32(&b[4], kVersion);
  store_be64(&b[8], h.backing_file_offset);
  store_be32(&b[16], h.backing_file_size);
  store_be32(&b[20], h.mtime);
  store_be64(&b[24], h.size);
  b[32] = h.cluster_bits;
  b[33] = h.l2_bits;
  store_be32(&b[36], h.crypt_method);
  store_be64(&b[40], h.l1_table_offset);
  return b;
}

}  // namespace dmu::formats::qcow
