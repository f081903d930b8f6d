// Checked arithmetic for values read from hostile images: every offset and
// size computed from on-disk fields goes through these.
#pragma once

#include <cstdint>
#include <optional>

namespace dmu {

inline std::optional<uint64_t> checked_add(uint64_t a, uint64_t b) {
  uint64_t r;
  if (__builtin_add_overflow(a, b, &r)) return std::nullopt;
  return r;
}

inline std::optional<uint64_t> checked_mul(uint64_t a, uint64_t b) {
  uint64_t r;
  if (__builtin_mul_overflow(a, b, &r)) return std::nullopt;
  return r;
}

// True when [offset, offset + length) lies inside [0, limit).
inline bool range_within(uint64_t offset, uint64_t length, uint64_t limit) {
  return offset <= limit && length <= limit - offset;
}

// ceil(a / b) for b > 0, without the overflow of (a + b - 1) / b.
inline constexpr uint64_t ceil_div(uint64_t a, uint64_t b) {
  return a / b + (a % b != 0);
}

inline constexpr uint64_t align_down(uint64_t v, uint64_t a) { return v - v % a; }
inline std::optional<uint64_t> align_up(uint64_t v, uint64_t a) {
  auto r = checked_add(v, a - 1);
  if (!r) return std::nullopt;
  return *r - *r % a;
}
inline constexpr bool is_power_of_two(uint64_t v) { return v && !(v & (v - 1)); }

}  // namespace dmu
