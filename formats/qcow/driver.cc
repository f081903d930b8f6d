// The qcow row of the format registry.
#include "common/endian.h"
#include "formats/image.h"
#include "formats/qcow/create.h"
#include "formats/qcow/header.h"
#include "formats/qcow/qcow_image.h"

namespace dmu::formats {
namespace {

// As QEMU: the magic and version 1 in a full header.
int probe_qcow(std::span<const uint8_t> head, const std::string&) {
  if (head.size() < qcow::kHeaderSize) return 0;
  return load_be32(head.data()) == qcow::kMagic && load_be32(head.data() + 4) == qcow::kVersion
             ? 100
             : 0;
}

Result<std::unique_ptr<Image>> open_qcow(Env& env, const std::string& path, Access access) {
  return qcow::QcowImage::open(env, path, access);
}

}  // namespace

extern const Driver qcow_driver;
const Driver qcow_driver = {"qcow", probe_qcow, open_qcow, qcow::create};

}  // namespace dmu::formats
