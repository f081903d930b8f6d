// Reading the bitmap directory (see bitmaps.h).
#include "formats/qcow2/bitmaps.h"

#include "common/endian.h"
#include "formats/qcow2/table_cache.h"

namespace dmu::formats::qcow2 {

Result<std::vector<Bitmap>> read_bitmap_directory(File& file, const Header& h,
                                                  const std::string& path) {
  std::vector<Bitmap> out;
  if (!h.bitmaps) return out;
  const BitmapsExtension& ext = *h.bitmaps;
  std::vector<uint8_t> dir(ext.directory_size);
  DMU_TRY(read_padded(file, ext.directory_offset, dir));
  const uint64_t cs = uint64_t(1) << h.cluster_bits;
  uint64_t off = 0;
  for (uint32_t i = 0; i < ext.nb_bitmaps; ++i) {
    auto where = [&] {
      return path + ": bitmap directory entry " + std::to_string(i) + " at " +
             hex(ext.directory_offset + off);
    };
    if (dir.size() - off < 24) return fail(EINVAL, where() + " runs past the directory");
    const uint8_t* e = &dir[off];
    Bitmap b;
    b.table_offset = load_be64(e);
    b.table_size = load_be32(e + 8);
    b.flags = load_be32(e + 12);
    b.type = e[16];
    b.granularity_bits = e[17];
    uint16_t name_size = load_be16(e + 18);
    uint32_t extra_size = load_be32(e + 20);
    uint64_t len = 24 + uint64_t(extra_size) + name_size;
    if (len > dir.size() - off) return fail(EINVAL, where() + " runs past the directory");
    if (name_size == 0 || name_size > kMaxBitmapNameLength)
      return fail(EINVAL, where() + ": name length " + std::to_string(name_size) + " is invalid");
    if (b.table_offset % cs)
      return fail(EINVAL, where() + ": bitmap table offset " + hex(b.table_offset) +
                              " is not cluster aligned");
    if (uint64_t(b.table_size) * 8 > kMaxL1Bytes)
      return fail(EFBIG, where() + ": bitmap table of " + std::to_string(b.table_size) +
                             " entries is too large");
    if (b.granularity_bits > 63)
      return fail(EINVAL, where() + ": granularity_bits " + std::to_string(b.granularity_bits) +
                              " exceeds 63");
    b.name.assign(reinterpret_cast<const char*>(e + 24 + extra_size), name_size);
    out.push_back(std::move(b));
    off += (len + 7) & ~uint64_t(7);
    if (off > dir.size()) off = dir.size();
  }
  return out;
}

}  // namespace dmu::formats::qcow2
