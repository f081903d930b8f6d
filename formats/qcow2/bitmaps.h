// The persistent dirty bitmap directory (bitmaps header extension).  The
// engine does not track dirty bitmaps: it lists them for info() and counts
// their clusters in check(); images whose bitmaps are consistent are opened
// read-only only (see qcow2_image.cc for why).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/error.h"
#include "fileio/file.h"
#include "formats/qcow2/header.h"

namespace dmu::formats::qcow2 {

inline constexpr uint32_t kBitmapInUse = 1u << 0;
inline constexpr uint32_t kBitmapAuto = 1u << 1;

struct Bitmap {
  std::string name;
  uint64_t table_offset = 0;
  uint32_t table_size = 0;  // entries
  uint32_t flags = 0;
  uint8_t type = 0;
  uint8_t granularity_bits = 0;
};

// Reads and validates the directory named by h.bitmaps.
Result<std::vector<Bitmap>> read_bitmap_directory(File& file, const Header& h,
                                                  const std::string& path);

}  // namespace dmu::formats::qcow2
