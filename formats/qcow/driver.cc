// Placeholder until the qcow engine lands: refuses every image.
#include "formats/image.h"

namespace dmu::formats {
namespace {
int probe_qcow(std::span<const uint8_t>, const std::string&) { return 0; }
Result<std::unique_ptr<Image>> open_qcow(Env&, const std::string& path, Access) {
  return fail(ENOTSUP, path + ": qcow images are not supported yet");
}
Result<void> create_qcow(Env&, const std::string& path, const CreateOptions&) {
  return fail(ENOTSUP, path + ": creating qcow images is not supported yet");
}
}  // namespace
extern const Driver qcow_driver;
const Driver qcow_driver = {"qcow", probe_qcow, open_qcow, create_qcow};
}  // namespace dmu::formats
