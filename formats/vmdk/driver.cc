// Placeholder until the vmdk engine lands: refuses every image.
#include "formats/image.h"

namespace dmu::formats {
namespace {
int probe_vmdk(std::span<const uint8_t>, const std::string&) { return 0; }
Result<std::unique_ptr<Image>> open_vmdk(Env&, const std::string& path, Access) {
  return fail(ENOTSUP, path + ": vmdk images are not supported yet");
}
Result<void> create_vmdk(Env&, const std::string& path, const CreateOptions&) {
  return fail(ENOTSUP, path + ": creating vmdk images is not supported yet");
}
}  // namespace
extern const Driver vmdk_driver;
const Driver vmdk_driver = {"vmdk", probe_vmdk, open_vmdk, create_vmdk};
}  // namespace dmu::formats
