// Opens a backing chain image by image (top first) and answers "where does
// this guest range read from" by asking each image in turn until one has the
// range (Unallocated falls through to the next image).
#include "formats/chain.h"

#include <algorithm>
#include <cstring>
#include <set>

#include "common/checked.h"

namespace dmu::formats {

std::string resolve_backing_path(const std::string& image_path, const std::string& backing) {
  if (backing.empty() || backing.front() == '/') return backing;
  auto slash = image_path.rfind('/');
  if (slash == std::string::npos) return backing;
  return image_path.substr(0, slash + 1) + backing;
}

bool maps_linearly(const ImageInfo& info) {
  if (info.format == "raw") return true;
  if (const auto* vmdk = std::get_if<VmdkSpecific>(&info.format_specific)) {
    const std::string& type = vmdk->create_type;
    return type.size() >= 4 && type.compare(type.size() - 4, 4, "Flat") == 0;
  }
  return false;
}

namespace {

Result<const Driver*> driver_for(Env& env, const std::string& path,
                                 const std::optional<std::string>& format) {
  if (!format) return probe(env, path);
  const Driver* d = find_driver(*format);
  if (!d) return fail(EINVAL, path + ": unknown image format '" + *format + "'");
  return d;
}

}  // namespace

Result<void> Chain::add_image(std::unique_ptr<Image> image) {
  first_device_.push_back(unsigned(devices_.size()));
  for (File* f : image->data_files()) {
    if (!f) return fail(EIO, image->info().filename + ": engine returned no data file");
    devices_.push_back(f);
  }
  images_.push_back(std::move(image));
  return {};
}

Result<std::unique_ptr<Chain>> Chain::open(Env& env, const std::string& path,
                                           const ChainOptions& options) {
  auto chain = std::unique_ptr<Chain>(new Chain);
  chain->access_ = options.access;
  std::set<std::string> seen;    // identities of the images, for loop detection
  std::set<std::string> locked;  // identities of the files locked so far
  std::string current = path;
  std::string named_by;  // the image that named `current` (empty for the top)
  std::optional<std::string> format = options.format;
  Access access = options.access;

  auto lock_file = [&](const std::string& file, Access mode) -> Result<void> {
    if (!options.lock) return {};
    DMU_ASSIGN_OR_RETURN(std::string id, env.identity(file));
    if (!locked.insert(id).second) return {};
    DMU_ASSIGN_OR_RETURN(
        ImageLock l,
        ImageLock::acquire(file, mode == Access::ReadWrite ? LockMode::Writer : LockMode::Reader));
    chain->locks_.push_back(std::move(l));
    return {};
  };

  for (unsigned depth = 0;; ++depth) {
    // Errors about a backing image say which image named it.
    auto in_context = [&](Error e) {
      if (named_by.empty()) return e;
      return std::move(e).context(named_by + ": backing file");
    };
    if (depth >= options.max_depth)
      return fail(in_context(Error{ELOOP, current + ": backing chain is deeper than " +
                                              std::to_string(options.max_depth) + " images"}));
    auto id = env.identity(current);
    if (!id) return fail(in_context(id.error()));
    if (!seen.insert(*id).second)
      return fail(in_context(
          Error{ELOOP, current + ": backing chain loops back to an image already in it"}));
    if (auto r = lock_file(current, access); !r) return fail(in_context(r.error()));

    auto driver = driver_for(env, current, format);
    if (!driver) return fail(in_context(driver.error()));
    auto image = (*driver)->open(env, current, access);
    if (!image) return fail(in_context(image.error()));
    for (File* f : (*image)->data_files()) {
      if (!f) continue;
      if (auto r = lock_file(f->path(), access); !r) return fail(in_context(r.error()));
    }
    std::optional<std::string> backing = (*image)->info().backing_file;
    std::optional<std::string> backing_format = (*image)->info().backing_file_format;
    DMU_TRY(chain->add_image(std::move(*image)));

    if (!options.open_backing || !backing || backing->empty()) break;
    if (backing->rfind("json:", 0) == 0)
      return fail(ENOTSUP, current + ": backing file '" + *backing +
                               "' uses QEMU's json: syntax, which dmu does not support");
    named_by = current;
    current = resolve_backing_path(current, *backing);
    format = backing_format;
    access = Access::ReadOnly;
  }
  return chain;
}

Result<std::unique_ptr<Chain>> Chain::assemble(std::vector<std::unique_ptr<Image>> images,
                                               Access access) {
  if (images.empty()) return fail(EINVAL, "a chain needs at least one image");
  auto chain = std::unique_ptr<Chain>(new Chain);
  chain->access_ = access;
  for (auto& image : images) DMU_TRY(chain->add_image(std::move(image)));
  return chain;
}

unsigned Chain::device_index(unsigned depth, unsigned file) const {
  return first_device_[depth] + file;
}

unsigned Chain::device_depth(unsigned device) const {
  auto it = std::upper_bound(first_device_.begin(), first_device_.end(), device);
  return unsigned(it - first_device_.begin()) - 1;
}

Result<ChainMapping> Chain::map(uint64_t offset, uint64_t length) {
  const uint64_t size = virtual_size();
  if (offset >= size || length == 0)
    return fail(EINVAL, images_.front()->info().filename + ": map of " + std::to_string(length) +
                            " bytes at " + hex(offset) + " is outside the virtual disk");
  length = std::min(length, size - offset);
  for (unsigned depth = 0; depth < images_.size(); ++depth) {
    Image& image = *images_[depth];
    const uint64_t image_size = image.info().virtual_size;
    if (offset >= image_size) {
      // A backing image shorter than the image above it reads as zeros past its end.
      return ChainMapping{length, ChainMapping::Kind::Zero, 0, 0, depth - 1, false, false};
    }
    DMU_ASSIGN_OR_RETURN(Mapping m, image.map(offset, std::min(length, image_size - offset)));
    if (m.length == 0)
      return fail(EIO, image.info().filename + ": engine mapped an empty range at " + hex(offset));
    length = std::min(length, m.length);
    switch (m.kind) {
      case MapKind::Data: {
        auto files = image.data_files();
        if (m.file >= files.size())
          return fail(EIO, image.info().filename + ": engine mapped " + hex(offset) +
                               " to data file " + std::to_string(m.file) + " of " +
                               std::to_string(files.size()));
        return ChainMapping{length,
                            ChainMapping::Kind::Data,
                            device_index(depth, m.file),
                            m.host_offset,
                            depth,
                            true,
                            depth == 0 && writable() && m.writable};
      }
      case MapKind::Zero:
        return ChainMapping{length, ChainMapping::Kind::Zero, 0, 0, depth, true, false};
      case MapKind::Compressed:
        return ChainMapping{length, ChainMapping::Kind::Compressed, 0, 0, depth, true, false};
      case MapKind::Unallocated:
        break;
    }
  }
  return ChainMapping{length, ChainMapping::Kind::Zero, 0, 0, unsigned(images_.size() - 1), false,
                      false};
}

Result<void> Chain::read(uint64_t offset, std::span<uint8_t> out) {
  auto end = checked_add(offset, out.size());
  if (!end || *end > virtual_size())
    return fail(EINVAL, images_.front()->info().filename + ": read of " +
                            std::to_string(out.size()) + " bytes at " + hex(offset) +
                            " runs past the end of the virtual disk");
  size_t done = 0;
  while (done < out.size()) {
    DMU_ASSIGN_OR_RETURN(ChainMapping m, map(offset + done, out.size() - done));
    std::span<uint8_t> part = out.subspan(done, m.length);
    switch (m.kind) {
      case ChainMapping::Kind::Zero:
        std::memset(part.data(), 0, part.size());
        break;
      case ChainMapping::Kind::Compressed:
        DMU_TRY(images_[m.depth]->read_compressed(offset + done, part));
        break;
      case ChainMapping::Kind::Data: {
        // Past the end of a data file reads as zeros, as QEMU's file driver does.
        DMU_ASSIGN_OR_RETURN(size_t got, devices_[m.device]->read_some(m.host_offset, part));
        std::memset(part.data() + got, 0, part.size() - got);
        break;
      }
    }
    done += m.length;
  }
  return {};
}

}  // namespace dmu::formats
