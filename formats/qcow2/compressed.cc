// zlib and zstd decoding of one compressed cluster (see compressed.h).
#include "formats/qcow2/compressed.h"

#include "formats/inflate.h"

#include <zstd.h>

#include <memory>

namespace dmu::formats::qcow2 {
namespace {

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
    case CompressionType::Zlib: {
      // The stored size is in sectors, so trailing bytes may follow the
      // stream, and a stream that fills the cluster counts, ended or not.
      auto r = inflate(Deflate::Raw4k, in, out);
      if (!r) return fail(r.error().context(what + ": corrupt zlib-compressed cluster"));
      if (r->produced == out.size()) return {};
      return fail(EIO, what + ": corrupt zlib-compressed cluster (decodes to less than a cluster)");
    }
    case CompressionType::Zstd:
      return decompress_zstd(in, out, what);
  }
  return fail(ENOTSUP, what + ": unknown compression type");
}

}  // namespace dmu::formats::qcow2
