// dmu create: a new image through its format engine.  Everything that can be
// checked is checked before the file is touched (format, options, size,
// backing file); if the engine fails half-way, the half-made file is removed.
#include <unistd.h>

#include <iostream>
#include <map>

#include "cli/cli_common.h"
#include "fileio/image_lock.h"

namespace dmu::cli {

extern const Command kCreate;

namespace {

Result<std::map<std::string, std::string>> parse_options(const std::vector<std::string>& groups) {
  std::map<std::string, std::string> out;
  for (const std::string& group : groups) {
    size_t start = 0;
    while (start <= group.size()) {
      size_t comma = group.find(',', start);
      std::string item =
          group.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
      start = comma == std::string::npos ? group.size() + 1 : comma + 1;
      if (item.empty()) continue;
      auto eq = item.find('=');
      if (eq == std::string::npos || eq == 0)
        return fail(EINVAL, "invalid option '" + item + "' (expected name=value)");
      out[item.substr(0, eq)] = item.substr(eq + 1);
    }
  }
  return out;
}

}  // namespace

int create_main(const std::vector<std::string>& args) {
  po::options_description options("options");
  options.add_options()("format,f", po::value<std::string>()->default_value("raw"),
                        "image format: raw, qcow, qcow2, vmdk")(
      "options,o", po::value<std::vector<std::string>>()->composing(),
      "format options name=value,... as qemu-img names them (cluster_size, compat, ...)")(
      "backing,b", po::value<std::string>(),
      "backing file, relative to the new image's directory unless absolute")(
      "backing-format,F", po::value<std::string>(),
      "format of the backing file (probed if absent)")(
      "image", po::value<std::string>()->required(), "the image to create")(
      "size", po::value<std::string>(),
      "virtual size (k, M, G, T suffixes); default: the backing file's");
  po::positional_options_description positional;
  positional.add("image", 1).add("size", 1);
  int code = kExitOk;
  auto vm = parse_args(args, kCreate, options, positional, &code);
  if (!vm) return code;

  const std::string image = (*vm)["image"].as<std::string>();
  const std::string format = (*vm)["format"].as<std::string>();
  const formats::Driver* driver = formats::find_driver(format);
  if (!driver) return report(Error{EINVAL, image + ": unknown image format '" + format + "'"});

  formats::CreateOptions create;
  auto opts = parse_options(vm->count("options") ? (*vm)["options"].as<std::vector<std::string>>()
                                                 : std::vector<std::string>{});
  if (!opts) return report(std::move(opts.error()).context(image));
  create.options = std::move(*opts);
  // qemu-img also accepts these as -o options.
  auto take = [&](const char* key) -> std::optional<std::string> {
    auto it = create.options.find(key);
    if (it == create.options.end()) return std::nullopt;
    std::string v = it->second;
    create.options.erase(it);
    return v;
  };
  std::optional<std::string> size_text = take("size");
  if (vm->count("size")) size_text = (*vm)["size"].as<std::string>();
  create.backing_file = take("backing_file");
  create.backing_format = take("backing_fmt");
  if (vm->count("backing")) create.backing_file = (*vm)["backing"].as<std::string>();
  if (vm->count("backing-format"))
    create.backing_format = (*vm)["backing-format"].as<std::string>();
  if (create.backing_format && !create.backing_file)
    return report(Error{EINVAL, image + ": a backing format (-F) needs a backing file (-b)"});

  if (size_text) {
    auto size = parse_size(*size_text);
    if (!size) return report(std::move(size.error()).context(image));
    create.virtual_size = *size;
  }
  if (create.backing_file) {
    // The backing chain must open (as QEMU will open it, relative to the new
    // image); it gives the default size and the format when -F is absent.
    const std::string resolved = formats::resolve_backing_path(image, *create.backing_file);
    auto backing = open_chain(resolved, create.backing_format, formats::Access::ReadOnly, true);
    if (!backing) return report(std::move(backing.error()).context(image + ": backing file"));
    if (!create.backing_format) create.backing_format = (*backing)->top().info().format;
    if (!size_text) create.virtual_size = (*backing)->virtual_size();
  } else if (!size_text) {
    return report(Error{EINVAL, image + ": a size is needed when there is no backing file"});
  }

  // Never overwrite an image another process (QEMU, dmu) has open.
  const bool existed = ::access(image.c_str(), F_OK) == 0;
  ImageLock lock;
  if (existed) {
    auto l = ImageLock::acquire(image, LockMode::Writer);
    if (!l) return report(l.error());
    lock = std::move(*l);
  }

  auto made = driver->create(posix_env(), image, create);
  if (!made) {
    if (!existed) (void)posix_env().remove(image);
    return report(made.error());
  }
  std::cout << "Formatting '" << image << "', fmt=" << format << " size=" << create.virtual_size;
  if (create.backing_file)
    std::cout << " backing_file=" << *create.backing_file
              << " backing_fmt=" << *create.backing_format;
  for (const auto& [k, v] : create.options) std::cout << " " << k << "=" << v;
  std::cout << std::endl;

  return kExitOk;
}

}  // namespace dmu::cli
