// Sizes on command lines (see size.h).
#include "common/size.h"

#include <cctype>
#include <cstdio>

namespace dmu {

Result<uint64_t> parse_size(const std::string& text) {
  using u128 = unsigned __int128;
  constexpr u128 kLimit = u128(1) << 64;
  constexpr unsigned kMaxFractionDigits = 18;  // 10^18 << 60 still fits in 128 bits
  auto digit = [&](size_t i) {
    return i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]));
  };
  auto too_large = [&] { return fail(ERANGE, "size '" + text + "' is too large"); };

  // Hexadecimal as qemu-img takes it: 0x and digits, no fraction, no suffix.
  if (text.size() > 2 && text[0] == '0' && (text[1] == 'x' || text[1] == 'X')) {
    u128 v = 0;
    for (size_t i = 2; i < text.size(); ++i) {
      const char c = char(std::tolower(static_cast<unsigned char>(text[i])));
      if (!std::isxdigit(static_cast<unsigned char>(c)))
        return fail(EINVAL, "invalid hexadecimal size '" + text + "' (no fraction or suffix)");
      if ((v = v * 16 + unsigned(c <= '9' ? c - '0' : c - 'a' + 10)) >= kLimit) return too_large();
    }
    return uint64_t(v);
  }
  size_t i = 0;
  u128 whole = 0;
  for (; digit(i); ++i)
    if ((whole = whole * 10 + unsigned(text[i] - '0')) >= kLimit) return too_large();
  if (i == 0) return fail(EINVAL, "invalid size '" + text + "'");
  u128 fraction = 0, scale = 1;
  if (i < text.size() && text[i] == '.') {
    for (unsigned n = 0; digit(++i); ++n) {
      if (n == kMaxFractionDigits)
        return fail(EINVAL, "size '" + text + "' has more than 18 digits after the point");
      fraction = fraction * 10 + unsigned(text[i] - '0');
      scale *= 10;
    }
  }
  unsigned shift = 0;
  if (i < text.size()) {
    static const std::string units = "BKMGTPE";
    auto pos = units.find(char(std::toupper(static_cast<unsigned char>(text[i]))));
    if (i + 1 != text.size() || pos == std::string::npos)
      return fail(EINVAL, "invalid size suffix in '" + text + "' (use k, M, G, T, P or E)");
    shift = unsigned(pos) * 10;
  }
  const u128 part = fraction << shift;  // < 10^18 * 2^60 < 2^120
  if (part % scale != 0) return fail(EINVAL, "size '" + text + "' is not a whole number of bytes");
  const u128 bytes = (whole << shift) + part / scale;  // < 2^124 + 2^60
  if (bytes >= kLimit) return too_large();
  return uint64_t(bytes);
}

std::string human_size(uint64_t bytes) {
  static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  if (bytes < 1024) return std::to_string(bytes) + " B";
  double v = double(bytes);
  unsigned u = 0;
  while (v >= 1024 && u < 6) {
    v /= 1024;
    ++u;
  }
  // qemu-img prints three significant digits ("1.5 GiB", "324 KiB").
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3g %s", v, units[u]);
  return buf;
}

}  // namespace dmu
