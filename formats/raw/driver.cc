// Placeholder until the raw engine lands: refuses every image.
#include "formats/image.h"

namespace dmu::formats {
namespace {
int probe_raw(std::span<const uint8_t>, const std::string&) { return 0; }
Result<std::unique_ptr<Image>> open_raw(Env&, const std::string& path, Access) {
  return fail(ENOTSUP, path + ": raw images are not supported yet");
}
Result<void> create_raw(Env&, const std::string& path, const CreateOptions&) {
  return fail(ENOTSUP, path + ": creating raw images is not supported yet");
}
}  // namespace
extern const Driver raw_driver;
const Driver raw_driver = {"raw", probe_raw, open_raw, create_raw};
}  // namespace dmu::formats
