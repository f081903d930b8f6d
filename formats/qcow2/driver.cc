// Placeholder until the qcow2 engine lands: refuses every image.
#include "formats/image.h"

namespace dmu::formats {
namespace {
int probe_qcow2(std::span<const uint8_t>, const std::string&) { return 0; }
Result<std::unique_ptr<Image>> open_qcow2(Env&, const std::string& path, Access) {
  return fail(ENOTSUP, path + ": qcow2 images are not supported yet");
}
Result<void> create_qcow2(Env&, const std::string& path, const CreateOptions&) {
  return fail(ENOTSUP, path + ": creating qcow2 images is not supported yet");
}
}  // namespace
extern const Driver qcow2_driver;
const Driver qcow2_driver = {"qcow2", probe_qcow2, open_qcow2, create_qcow2};
}  // namespace dmu::formats
