// The raw row of the format registry: probe, open, create.
#include <algorithm>
#include <vector>

#include "formats/image.h"
#include "formats/raw/raw_image.h"

namespace dmu::formats {
namespace {

int probe_raw(std::span<const uint8_t>, const std::string&) {
  return 1;
}

Result<std::unique_ptr<Image>> open_raw(Env& env, const std::string& path, Access access) {
  return raw::RawImage::open(env, path, access);
}

// As `qemu-img create -f raw`: a sparse file of the virtual size whose first
// block is allocated (QEMU writes it so O_DIRECT alignment probing works; we
// do the same so `qemu-img map` of our images matches theirs).
Result<void> create_raw(Env& env, const std::string& path, const CreateOptions& options) {
  if (options.backing_file) return fail(EINVAL, path + ": raw images cannot have a backing file");
  for (const auto& [key, value] : options.options) {
    if (key == "preallocation" && value == "off") continue;
    return fail(EINVAL, path + ": raw: unsupported option '" + key + "=" + value + "'");
  }
  DMU_ASSIGN_OR_RETURN(auto file, env.open(path, OpenMode::CreateTruncate));
  DMU_TRY(file->truncate(options.virtual_size));
  uint64_t first = std::min<uint64_t>(options.virtual_size, 4096);
  if (first) DMU_TRY(file->write(0, std::vector<uint8_t>(first, 0)));
  DMU_TRY(file->sync());
  return env.sync_directory_of(path);
}

}  // namespace

extern const Driver raw_driver;
const Driver raw_driver = {"raw", probe_raw, open_raw, create_raw};

}  // namespace dmu::formats
