// adopt_write for vmdk: flat extents can only have been written in place;
// sparse extents check and reserve the range (SparseExtent::adopt).
#include "common/checked.h"
#include "formats/vmdk/vmdk_image.h"

namespace dmu::formats::vmdk {
namespace {

constexpr size_t kFlatExtent = size_t(1) << 63;  // as vmdk_write.cc marks flat tokens

}  // namespace

Result<uint64_t> VmdkImage::adopt_write(uint64_t offset, uint64_t length, unsigned file,
                                        uint64_t host_offset) {
  DMU_TRY(require_writable("adopt"));
  const std::string what = adopt_context(info_.filename, offset, length, file, host_offset);
  if (!adopting_)
    return fail(EBUSY, what + ": the image changed since it was opened or last committed");
  if (length == 0 || !range_within(offset, length, info_.virtual_size))
    return fail(EINVAL, what + ": the range is outside the virtual disk");
  const size_t index = extent_at(offset);
  Extent& e = extents_[index];
  const uint64_t rel = offset - e.start;
  if (length > e.size - rel) return fail(EINVAL, what + ": the range crosses extents");
  if (file != e.file)
    return fail(EINVAL, what + ": the extent's file is " + std::to_string(e.file));
  const uint64_t token = next_token_;
  if (e.flat) {
    if (host_offset != e.flat_offset + rel)
      return fail(EINVAL, what + ": a flat extent maps it at " + hex(e.flat_offset + rel));
    tokens_[token] = index | kFlatExtent;
  } else {
    if (auto r = e.sparse->adopt(rel, length, host_offset, token); !r)
      return fail(r.error().code, what + ": " + r.error().message);
    tokens_[token] = index;
  }
  ++next_token_;
  // The old process's writes change the disk, as prepare_write's would.
  wrote_ = true;
  return token;
}

void VmdkImage::end_adoption() {
  adopting_ = false;
  for (Extent& e : extents_)
    if (!e.flat) e.sparse->end_adoption();
}

}  // namespace dmu::formats::vmdk
