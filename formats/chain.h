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

#include "formats/image.h"

namespace dmu::formats {

struct ChainOptions {
  std::optional<std::string> format;  // of the top image; probed when absent
  Access access = Access::ReadOnly;   // of the top image; backing images are always read-only
  unsigned max_depth = 64;            // images in the chain, top included
};

// How one guest range reads through the whole chain.
struct ChainMapping {
  uint64_t length = 0;
  enum class Kind { Data, Zero, Compressed } kind = Kind::Zero;
  unsigned device = 0;       // Data: index into Chain::devices()
  uint64_t host_offset = 0;  // Data
  unsigned depth = 0;        // the image that answered (0 = top); Zero past the chain: size()
  bool writable = false;     // Data in the top image, writable in place
};

class Chain {
 public:
  static Result<std::unique_ptr<Chain>> open(Env& env, const std::string& path,
                                             const ChainOptions& options);

  Image& top() { return *images_.front(); }
  std::span<const std::unique_ptr<Image>> images() const { return images_; }
  uint64_t virtual_size() const { return images_.front()->info().virtual_size; }
  // Every data file of every image, top first: the devices a dm table lists.
  const std::vector<File*>& devices() const { return devices_; }
  // Index into devices() of image `depth`'s data file `file`.
  unsigned device_index(unsigned depth, unsigned file) const;

  // Where [offset, offset + length) reads from, for the longest prefix with
  // one answer.  Backing images shorter than the top read as zeros past
  // their end.
  Result<ChainMapping> map(uint64_t offset, uint64_t length);

  // Guest bytes [offset, offset + out.size()), decompressing where needed.
  Result<void> read(uint64_t offset, std::span<uint8_t> out);

 private:
  std::vector<std::unique_ptr<Image>> images_;
  std::vector<File*> devices_;
  std::vector<unsigned> first_device_;  // per image
};

}  // namespace dmu::formats
