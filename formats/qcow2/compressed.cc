// zlib and zstd decoding of one compressed cluster (see compressed.h).
#include "formats/qcow2/compressed.h"

#include <zlib.h>
#include <zstd.h>

#include <memory>

namespace dmu::formats::qcow2 {
namespace {

Result<void> inflate_raw(std::span<const uint8_t> in, std::span<uint8_t> out,
                         const std::string& what) {
  z_stream s{};
  // Negative window bits: raw deflate without a zlib header, 4 KiB window.
  if (inflateInit2(&s, -12) != Z_OK) return fail(ENOMEM, what + ": zlib initialisation failed");
  s.next_in = const_cast<Bytef*>(in.data());
  s.avail_in = uInt(in.size());
  s.next_out = out.data();
  s.avail_out = uInt(out.size());
  int ret = inflate(&s, Z_FINISH);
  bool full = s.avail_out == 0;
  inflateEnd(&s);
  // Z_BUF_ERROR with a full output: the input had trailing bytes, which the
  // sector granularity of the stored size allows.
  if ((ret == Z_STREAM_END || ret == Z_BUF_ERROR) && full) return {};
  return fail(EIO, what + ": corrupt zlib-compressed cluster (" +
                       (ret == Z_STREAM_END ? std::string("decodes to less than a cluster")
                                            : "inflate error " + std::to_string(ret)) +
                       ")");
}

Result<void> decompress_zstd(std::span<const uint8_t> in, std::span<uint8_t> out,
                             const std::string& what) {
  std::unique_ptr<ZSTD_DCtx, size_t (*)(ZSTD_DCtx*)> ctx(ZSTD_createDCtx(), ZSTD_freeDCtx);
  if (!ctx) return fail(ENOMEM, what + ": zstd initialisation failed");
  ZSTD_outBuffer o{out.data(), out.size(), 0};
  ZSTD_inBuffer i{in.data(), in.size(), 0};
  size_t ret = 0;
  // A cluster may consist of several frames; every step must make progress.
  while (o.pos < o.size) {
    size_t in_before = i.pos, out_before = o.pos;
    ret = ZSTD_decompressStream(ctx.get(), &o, &i);
    if (ZSTD_isError(ret))
      return fail(EIO, what + ": corrupt zstd-compressed cluster (" + ZSTD_getErrorName(ret) + ")");
    if (i.pos <= in_before && o.pos <= out_before)
      return fail(EIO, what + ": zstd-compressed cluster decodes to less than a cluster");
  }
  // A frame still open after a full cluster: more data than a cluster holds.
  if (ret != 0) return fail(EIO, what + ": zstd-compressed cluster is larger than a cluster");
  return {};
}

}  // namespace

Result<void> decompress_cluster(CompressionType type, std::span<const uint8_t> in,
                                std::span<uint8_t> out, const std::string& what) {
  switch (type) {
    case CompressionType::Zlib:
      return inflate_raw(in, out, what);
    case CompressionType::Zstd:
      return decompress_zstd(in, out, what);
  }
  return fail(ENOTSUP, what + ": unknown compression type");
}

}  // namespace dmu::formats::qcow2
