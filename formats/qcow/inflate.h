// Decoding a qcow compressed cluster: a raw deflate stream (no zlib header,
// 4 KiB window, as QEMU writes it) that must expand to exactly one cluster.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace dmu::formats::qcow {

// True when `in` inflates to exactly out.size() bytes.
bool inflate_cluster(std::span<const uint8_t> in, std::span<uint8_t> out);

// Compresses one cluster as QEMU does (tests and seed corpora use it); returns
// false when the result would not be smaller than the cluster.
bool deflate_cluster(std::span<const uint8_t> in, std::vector<uint8_t>& out);

}  // namespace dmu::formats::qcow
