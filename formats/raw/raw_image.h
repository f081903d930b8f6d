// The raw engine: the image file is the guest disk, byte for byte.  Every
// range maps to itself in the one data file; holes of a real (sparse) file
// read as zeros and are reported as Zero, as `qemu-img map` does, so the
// daemon can answer reads of holes without I/O.
#pragma once

#include <memory>
#include <string>

#include "formats/image.h"

namespace dmu::formats::raw {

class RawImage final : public Image {
 public:
  static Result<std::unique_ptr<Image>> open(Env& env, const std::string& path, Access access);

  const ImageInfo& info() const override { return info_; }
  std::vector<File*> data_files() override { return {file_.get()}; }
  Result<Mapping> map(uint64_t offset, uint64_t length) override;
  Result<void> read_compressed(uint64_t offset, std::span<uint8_t> out) override;
  Result<WriteTarget> prepare_write(uint64_t offset, uint64_t length) override;
  Result<void> write_done(uint64_t token, bool ok) override;
  Result<uint64_t> adopt_write(uint64_t offset, uint64_t length, unsigned file,
                               uint64_t host_offset) override;
  Result<void> write_zeroes(uint64_t offset, uint64_t length, bool may_unmap) override;
  Result<void> discard(uint64_t offset, uint64_t length) override;
  Result<void> commit() override;
  Result<CheckReport> check(Repair repair) override;

 private:
  RawImage(std::unique_ptr<File> file, Access access, ImageInfo info)
      : file_(std::move(file)), access_(access), info_(std::move(info)) {}
  Result<void> check_range(uint64_t offset, uint64_t length, const char* what) const;
  Result<void> require_writable(const char* what) const;

  std::unique_ptr<File> file_;
  Access access_;
  ImageInfo info_;
  uint64_t next_token_ = 1;
};

}  // namespace dmu::formats::raw
