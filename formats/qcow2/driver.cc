// The qcow2 row of the format registry (formats/registry.cc).
#include "formats/image.h"
#include "formats/qcow2/qcow2_image.h"

namespace dmu::formats {
namespace {
Result<std::unique_ptr<Image>> open_qcow2(Env& env, const std::string& path, Access access) {
  return qcow2::open(env, path, access);
}
}  // namespace
extern const Driver qcow2_driver;
const Driver qcow2_driver = {"qcow2", qcow2::probe, open_qcow2, qcow2::create};
}  // namespace dmu::formats
