// The vmdk row of the format registry.
#include <cstring>

#include "common/endian.h"
#include "formats/image.h"
#include "formats/vmdk/create.h"
#include "formats/vmdk/sparse_header.h"
#include "formats/vmdk/vmdk_image.h"

namespace dmu::formats {
namespace {

// As QEMU: a sparse magic ("KDMV" or "COWD"), or a text descriptor whose
// first line other than comments and blank lines is version=1, 2 or 3.
int probe_vmdk(std::span<const uint8_t> head, const std::string&) {
  if (head.size() < 4) return 0;
  uint32_t magic = load_le32(head.data());
  if (magic == vmdk::kSparseMagic || magic == vmdk::kCowdMagic) return 100;
  const char* p = reinterpret_cast<const char*>(head.data());
  const char* end = p + head.size();
  while (p < end) {
    if (*p == '#') {
      while (p < end && *p != '\n') ++p;
      ++p;
      continue;
    }
    if (*p == ' ') {
      while (p < end && *p == ' ') ++p;
      if (p < end && *p == '\r') ++p;
      if (p == end || *p != '\n') return 0;
      ++p;
      continue;
    }
    for (const char* v : {"version=1\n", "version=2\n", "version=3\n", "version=1\r\n",
                          "version=2\r\n", "version=3\r\n"}) {
      size_t n = std::strlen(v);
      if (size_t(end - p) >= n && std::memcmp(p, v, n) == 0) return 100;
    }
    return 0;
  }
  return 0;
}

Result<std::unique_ptr<Image>> open_vmdk(Env& env, const std::string& path, Access access) {
  DMU_ASSIGN_OR_RETURN(auto img, vmdk::VmdkImage::open(env, path, access));
  return std::unique_ptr<Image>(std::move(img));
}

}  // namespace

extern const Driver vmdk_driver;
const Driver vmdk_driver = {"vmdk", probe_vmdk, open_vmdk, vmdk::create};

}  // namespace dmu::formats
