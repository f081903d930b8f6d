// Raw deflate for qcow compressed clusters (see inflate.h).
#include "formats/qcow/inflate.h"

#include <zlib.h>

#include <climits>

namespace dmu::formats::qcow {

bool inflate_cluster(std::span<const uint8_t> in, std::span<uint8_t> out) {
  if (in.size() > UINT_MAX || out.size() > UINT_MAX) return false;
  z_stream s{};
  // -12: raw deflate with a 4 KiB window, exactly what QEMU uses.
  if (inflateInit2(&s, -12) != Z_OK) return false;
  s.next_in = const_cast<Bytef*>(in.data());
  s.avail_in = uInt(in.size());
  s.next_out = out.data();
  s.avail_out = uInt(out.size());
  int ret = inflate(&s, Z_FINISH);
  size_t produced = out.size() - s.avail_out;
  inflateEnd(&s);
  // QEMU accepts a stream that filled the buffer without its end marker
  // (Z_BUF_ERROR) as long as the whole cluster came out.
  return (ret == Z_STREAM_END || ret == Z_BUF_ERROR) && produced == out.size();
}

bool deflate_cluster(std::span<const uint8_t> in, std::vector<uint8_t>& out) {
  z_stream s{};
  if (deflateInit2(&s, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY) != Z_OK)
    return false;
  out.assign(in.size(), 0);
  s.next_in = const_cast<Bytef*>(in.data());
  s.avail_in = uInt(in.size());
  s.next_out = out.data();
  s.avail_out = uInt(out.size());
  int ret = deflate(&s, Z_FINISH);
  size_t produced = out.size() - s.avail_out;
  deflateEnd(&s);
  if (ret != Z_STREAM_END || produced >= in.size()) return false;
  out.resize(produced);
  return true;
}

}  // namespace dmu::formats::qcow
