// The vmdk engine: a descriptor (embedded in a monolithic sparse file, or a
// text file of its own) naming extents laid end to end over the guest disk.
// Flat extents map straight into their file; sparse extents
// (sparse_extent.h) do the lookups, allocation and ordered commits.  The
// parent link (parentFileNameHint) is reported as the backing file, format
// vmdk; the CID check QEMU does against the parent is check_parent_cid().
//
// Supported: monolithicSparse, monolithicFlat, twoGbMaxExtentSparse,
// twoGbMaxExtentFlat, vmfs (flat) read-write; streamOptimized read-only.
// Not thread-safe (the caller serializes calls).
#pragma once

#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "formats/image.h"
#include "formats/vmdk/descriptor.h"
#include "formats/vmdk/sparse_extent.h"

namespace dmu::formats::vmdk {

class VmdkImage final : public Image {
 public:
  static Result<std::unique_ptr<VmdkImage>> open(Env& env, const std::string& path, Access access);

  const ImageInfo& info() const override { return info_; }
  std::vector<File*> data_files() override;
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

  uint32_t cid() const { return cid_; }

 private:
  struct Extent {
    uint64_t start = 0, size = 0;  // guest bytes
    unsigned file = 0;             // index into files_
    bool flat = false;
    uint64_t flat_offset = 0;  // bytes into the file
    std::unique_ptr<SparseExtent> sparse;
    std::string type;      // as the descriptor says; "" for a sparse file opened directly
    std::string filename;  // as qemu-img info shows it
  };

  explicit VmdkImage(Access access) : access_(access) {}
  Result<void> open_sparse_file(std::unique_ptr<File> file, const std::string& path);
  Result<void> open_descriptor_file(Env& env, std::unique_ptr<File> file, const std::string& path);
  Result<void> add_extent(Env& env, const std::string& desc_path, const DescriptorExtent& d);
  void finish_info(const std::string& path, const Descriptor& d, const std::string& create_type);
  size_t extent_at(uint64_t offset) const;
  Result<void> check_range(uint64_t offset, uint64_t length, const char* what) const;
  Result<void> require_writable(const char* what) const;
  Result<void> update_cid();
  // The first call that is not an adoption (see vmdk_adopt.cc).
  void end_adoption();

  Access access_;
  ImageInfo info_;
  std::vector<std::unique_ptr<File>> files_;  // data files, in extent order
  std::vector<Extent> extents_;
  // Where the CID's hex digits live, for the in-place update after the first
  // write of a session (as QEMU does, so children notice the change).
  std::unique_ptr<File> desc_file_;  // a separate descriptor file, if any
  File* cid_file_ = nullptr;
  uint64_t cid_at_ = 0;
  size_t cid_len_ = 0;
  uint32_t cid_ = 0;
  bool wrote_ = false, cid_updated_ = false;
  std::unordered_map<uint64_t, size_t> tokens_;  // token -> extent
  uint64_t next_token_ = 1;
  bool adopting_ = true;  // nothing but adoptions since open or the last commit
};

// QEMU's parent check: a vmdk child's parentCID must equal its parent's CID
// (and the parent must be a vmdk), or reads through to the parent fail.
Result<void> check_parent_cid(const Image& child, const Image& parent);

}  // namespace dmu::formats::vmdk
