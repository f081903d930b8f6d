// The vmdk engine's write side: preparing writes in flat and sparse extents,
// zeroing, commit (sparse extents' ordered commits, then the CID) and check.
#include <cstdio>
#include <random>

#include "common/checked.h"
#include "formats/vmdk/vmdk_image.h"

namespace dmu::formats::vmdk {
namespace {

constexpr size_t kFlatExtent = size_t(1) << 63;  // marks flat extents in tokens_

}  // namespace

Result<WriteTarget> VmdkImage::prepare_write(uint64_t offset, uint64_t length) {
  DMU_TRY(require_writable("write"));
  DMU_TRY(check_range(offset, length, "write"));
  end_adoption();
  size_t index = extent_at(offset);
  Extent& e = extents_[index];
  uint64_t rel = offset - e.start;
  uint64_t len = std::min(length, e.size - rel);
  uint64_t token = next_token_++;
  WriteTarget t;
  if (e.flat) {
    const uint64_t g = info_.granularity;
    uint64_t start = align_down(rel, g);
    uint64_t end = std::min(*align_up(rel + len, g), e.size);
    t.offset = e.start + start;
    t.length = end - start;
    t.host_offset = e.flat_offset + start;
    tokens_[token] = index | kFlatExtent;
  } else {
    DMU_ASSIGN_OR_RETURN(t, e.sparse->prepare(rel, len, token));
    t.offset += e.start;
    tokens_[token] = index;
  }
  t.file = e.file;
  t.token = token;
  wrote_ = true;
  return t;
}

Result<void> VmdkImage::write_done(uint64_t token, bool ok) {
  auto it = tokens_.find(token);
  if (it == tokens_.end())
    return fail(EINVAL, info_.filename + ": write_done for unknown token " + std::to_string(token));
  end_adoption();
  size_t index = it->second;
  tokens_.erase(it);
  if (index & kFlatExtent) return {};
  extents_[index].sparse->done(token, ok);
  return {};
}

Result<void> VmdkImage::write_zeroes(uint64_t offset, uint64_t length, bool) {
  DMU_TRY(require_writable("write_zeroes"));
  DMU_TRY(check_range(offset, length, "write_zeroes"));
  end_adoption();
  const bool has_parent = info_.backing_file.has_value();
  // Two passes, so a range that is refused in a later extent changes nothing.
  for (bool dry_run : {true, false}) {
    for (uint64_t pos = offset; pos < offset + length;) {
      Extent& e = extents_[extent_at(pos)];
      uint64_t rel = pos - e.start;
      uint64_t n = std::min(offset + length - pos, e.size - rel);
      if (e.flat) {
        if (!dry_run) DMU_TRY(files_[e.file]->punch_hole(e.flat_offset + rel, n));
      } else {
        DMU_TRY(e.sparse->zero(rel, n, has_parent, dry_run));
      }
      pos += n;
    }
  }
  wrote_ = true;
  return {};
}

Result<void> VmdkImage::discard(uint64_t offset, uint64_t length) {
  // QEMU's vmdk driver has no discard: a no-op keeps the contents stable.
  DMU_TRY(require_writable("discard"));
  return check_range(offset, length, "discard");
}

Result<void> VmdkImage::commit() {
  DMU_TRY(require_writable("commit"));
  end_adoption();
  for (Extent& e : extents_) {
    if (e.flat) {
      if (wrote_) DMU_TRY(files_[e.file]->sync());
    } else {
      DMU_TRY(e.sparse->commit());
    }
  }
  if (wrote_ && !cid_updated_) DMU_TRY(update_cid());
  // Committed metadata is all there is again when nothing is in flight.
  adopting_ = tokens_.empty();
  return {};
}

// A new random CID with as many hex digits as the old one, written over it:
// one small in-place write, so a crash leaves either CID and a whole
// descriptor.
Result<void> VmdkImage::update_cid() {
  if (cid_len_ == 0 || cid_len_ > 8) return fail(EINVAL, info_.filename + ": descriptor CID lost");
  std::random_device rd;
  uint64_t lo = cid_len_ == 1 ? 0 : uint64_t(1) << (4 * (cid_len_ - 1));
  uint64_t hi = (uint64_t(1) << (4 * cid_len_)) - 1;
  uint32_t cid;
  do {
    cid = uint32_t(lo + (uint64_t(rd()) << 32 | rd()) % (hi - lo + 1));
  } while (cid == cid_);
  char digits[16];
  std::snprintf(digits, sizeof digits, "%0*x", int(cid_len_), cid);
  DMU_TRY(cid_file_->write(cid_at_, std::span(reinterpret_cast<const uint8_t*>(digits), cid_len_)));
  DMU_TRY(cid_file_->sync());
  cid_ = cid;
  if (auto* s = std::get_if<VmdkSpecific>(&info_.format_specific)) s->cid = cid;
  cid_updated_ = true;
  return {};
}

Result<CheckReport> VmdkImage::check(Repair repair) {
  if (repair != Repair::None)
    return fail(ENOTSUP, info_.filename + ": vmdk images cannot be repaired (as in QEMU)");
  CheckReport r;
  for (Extent& e : extents_)
    if (!e.flat) DMU_TRY(e.sparse->check(r, e.filename));
  return r;
}

}  // namespace dmu::formats::vmdk
