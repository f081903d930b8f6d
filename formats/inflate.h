// The one zlib decoder of the format engines.  qcow and qcow2 store
// compressed clusters as raw deflate (no zlib header, 4 KiB window, as QEMU
// writes them); VMDK stores grains as zlib streams (with header and
// checksum).  Each engine decides what a short or unfinished stream means
// for its format; this only decodes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "common/error.h"

namespace dmu::formats {

enum class Deflate {
  Raw4k,  // raw deflate, window 2^12 (qcow, qcow2)
  Zlib,   // zlib stream: header, deflate, adler-32 (VMDK grains)
};

struct Inflated {
  size_t produced = 0;  // bytes written to `out`
  bool ended = false;   // the stream's end was reached (trailing input ignored)
};

// Decodes `in` into `out` until the stream ends, `out` is full or `in` runs
// out.  EIO for a corrupt stream ("zlib: " and zlib's own message), ENOMEM
// when zlib cannot start, EINVAL for buffers over 4 GiB; the caller adds
// which image and offset.
Result<Inflated> inflate(Deflate framing, std::span<const uint8_t> in, std::span<uint8_t> out);

}  // namespace dmu::formats
