// Sizes as the command lines take them (qemu-img's conventions) and print
// them (qemu-img info's).
#pragma once

#include <cstdint>
#include <string>

#include "common/error.h"

namespace dmu {

// A decimal number, optionally with a fraction of up to 18 digits, and an
// optional suffix B, k/K, M, G, T, P, E (powers of 1024; none = bytes):
// "512", "64k", "1.5G"; or 0x and hexadecimal digits, nothing more
// ("0x10000", as qemu-io's offsets).  Exact over the whole uint64_t range (no detour
// through double, which is exact only up to 2^53); EINVAL for anything else
// or a fraction of a byte, ERANGE for 2^64 or more.
Result<uint64_t> parse_size(const std::string& text);

// "4 MiB" / "1.5 GiB" / "512 B": three significant digits, as qemu-img info.
std::string human_size(uint64_t bytes);

}  // namespace dmu
