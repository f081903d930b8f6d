// Decoding compressed clusters: raw deflate (zlib, window 4 KiB, as QEMU
// writes it) or zstd frames.  The stored data ends somewhere in its last
// 512-byte sector, so the input may carry trailing bytes; decoding stops
// once exactly one cluster has been produced.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "common/error.h"
#include "formats/qcow2/layout.h"

namespace dmu::formats::qcow2 {

// Fills `out` (one cluster) from `in`; `what` names the image and offset
// for error messages.
Result<void> decompress_cluster(CompressionType type, std::span<const uint8_t> in,
                                std::span<uint8_t> out, const std::string& what);

}  // namespace dmu::formats::qcow2
