// Shared by the qcow and vmdk fuzz targets: walk an opened image the way the
// daemon and dmu map/check would, with bounded work per input.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "formats/image.h"

namespace dmu::fuzz {

inline void walk_image(formats::Image& img, bool run_check) {
  const uint64_t size = img.info().virtual_size;
  std::vector<uint8_t> buf;
  // Bounded work per input: 64 lookups of at most 64 granules each.
  const uint64_t step = std::max<uint64_t>(img.info().granularity, 512) * 64;
  uint64_t pos = 0;
  for (int i = 0; i < 64 && pos < size; ++i) {
    auto m = img.map(pos, std::min(size - pos, step));
    if (!m) {
      // Skip the bad part: the next granule may map fine.
      pos += std::max<uint64_t>(img.info().granularity, 512);
      continue;
    }
    if (m->length == 0 || m->length > std::min(size - pos, step)) __builtin_trap();  // engine bug
    if (m->kind == formats::MapKind::Compressed) {
      buf.resize(std::min<uint64_t>(m->length, 1 << 20));
      (void)img.read_compressed(pos, buf);
    }
    if (m->kind == formats::MapKind::Data && m->file >= img.data_files().size()) __builtin_trap();
    pos += m->length;
  }
  if (run_check) (void)img.check(formats::Repair::None);
}

}  // namespace dmu::fuzz
