#include "common/error.h"

#include <cstdio>
#include <cstring>

namespace dmu {

Error errno_error(const std::string& what, int code) {
  return Error{code, what + ": " + std::strerror(code)};
}

std::string hex(unsigned long long value) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%llx", value);
  return buf;
}

}  // namespace dmu
