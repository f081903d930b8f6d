// zlib decoding for the format engines (see inflate.h).
#include "formats/inflate.h"

#include <zlib.h>

#include <climits>
#include <string>

namespace dmu::formats {

Result<Inflated> inflate(Deflate framing, std::span<const uint8_t> in, std::span<uint8_t> out) {
  if (in.size() > UINT_MAX || out.size() > UINT_MAX)
    return fail(EINVAL, "zlib: buffers over 4 GiB");
  z_stream s{};
  // Negative window bits: raw deflate without a zlib header.
  const int window_bits = framing == Deflate::Raw4k ? -12 : 15;
  if (inflateInit2(&s, window_bits) != Z_OK) return fail(ENOMEM, "zlib: initialisation failed");
  s.next_in = const_cast<Bytef*>(in.data());
  s.avail_in = uInt(in.size());
  s.next_out = out.data();
  s.avail_out = uInt(out.size());
  // One call: Z_FINISH with all input and all output space given.
  const int ret = ::inflate(&s, Z_FINISH);
  Inflated r{out.size() - s.avail_out, ret == Z_STREAM_END};
  const std::string message = s.msg ? s.msg : "error " + std::to_string(ret);
  inflateEnd(&s);
  // Z_BUF_ERROR: out full or in used up before the end; the caller judges.
  if (ret != Z_STREAM_END && ret != Z_BUF_ERROR && ret != Z_OK)
    return fail(EIO, "zlib: " + message);
  return r;
}

}  // namespace dmu::formats
