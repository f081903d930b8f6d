// A backing chain: the image a user names plus every backing image below it,
// opened with the limits hostile images need (depth, loops), backing names
// resolved relative to the image that names them (as QEMU does) and formats
// probed unless the image names them.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "fileio/image_lock.h"
#include "formats/image.h"

namespace dmu::formats {

struct ChainOptions {
  std::optional<std::string> format;  // of the top image; probed when absent
  Access access = Access::ReadOnly;   // of the top image; backing images are always read-only
  unsigned max_depth = 64;            // images in the chain, top included
  // Take QEMU-compatible locks (fileio/image_lock.h) on every file of the
  // chain before opening it: writer locks on the top image when it is opened
  // read-write, reader locks elsewhere.  Only meaningful with posix_env().
  bool lock = false;
  // Open only the top image (qemu-img check, info without the chain).
  bool open_backing = true;
};

// How one guest range reads through the whole chain.
struct ChainMapping {
  uint64_t length = 0;
  enum class Kind { Data, Zero, Compressed } kind = Kind::Zero;
  unsigned device = 0;       // Data: index into Chain::devices()
  uint64_t host_offset = 0;  // Data
  // The image that answered (0 = top).  When no image holds the range
  // (present == false: unallocated everywhere, or past the end of a shorter
  // backing image), the deepest image that was asked, as qemu-img map counts.
  unsigned depth = 0;
  bool present = true;
  bool writable = false;  // Data in the top image, writable in place
};

// Raw files and flat vmdk extents map the guest linearly onto their files:
// their mapping never changes inside an extent (block size choice, and
// qemu-img map looks through them at the file's holes).
bool maps_linearly(const ImageInfo& info);

// QEMU's rule for naming a backing file: relative names are relative to the
// directory of the image that names them, absolute names are used as is.
std::string resolve_backing_path(const std::string& image_path, const std::string& backing);

class Chain {
 public:
  static Result<std::unique_ptr<Chain>> open(Env& env, const std::string& path,
                                             const ChainOptions& options);
  // A chain of images opened by the caller, top first (tests, tools that
  // open images themselves).  `access` is the top image's.
  static Result<std::unique_ptr<Chain>> assemble(std::vector<std::unique_ptr<Image>> images,
                                                 Access access);

  Image& top() { return *images_.front(); }
  std::span<const std::unique_ptr<Image>> images() const { return images_; }
  size_t size() const { return images_.size(); }
  uint64_t virtual_size() const { return images_.front()->info().virtual_size; }
  bool writable() const { return access_ == Access::ReadWrite; }
  // Every data file of every image, top first: the devices a dm table lists.
  const std::vector<File*>& devices() const { return devices_; }
  // Index into devices() of image `depth`'s data file `file`; depth <
  // size() (callers pass 0 or a depth of their own walk down the chain), and
  // file < that image's data_files().size() (callers check what the engine
  // returned before they ask).
  unsigned device_index(unsigned depth, unsigned file) const;
  // The image whose data file devices()[device] is.
  unsigned device_depth(unsigned device) const;

  // Where [offset, offset + length) reads from, for the longest prefix with
  // one answer.  Backing images shorter than the top read as zeros past
  // their end.  offset < virtual_size(), length > 0.
  Result<ChainMapping> map(uint64_t offset, uint64_t length);

  // Guest bytes [offset, offset + out.size()), decompressing where needed.
  Result<void> read(uint64_t offset, std::span<uint8_t> out);

 private:
  Result<void> add_image(std::unique_ptr<Image> image);

  Access access_ = Access::ReadOnly;
  std::vector<ImageLock> locks_;  // released after the images are closed (declared first)
  std::vector<std::unique_ptr<Image>> images_;
  std::vector<File*> devices_;
  std::vector<unsigned> first_device_;  // per image
};

}  // namespace dmu::formats
