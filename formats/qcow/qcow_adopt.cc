// adopt_write for the qcow engine (see formats/image.h and qcow_image.h).
//
// qcow has no refcounts: which file bytes are in use is known only by
// walking the tables, done once per adoption phase into used_.  A range of
// new clusters must not overlap it (nor another adoption, which is added to
// it); clusters allocated in the committed tables must be adopted at their
// own place (the old process wrote them in place).
#include <algorithm>

#include "common/checked.h"
#include "formats/qcow/qcow_image.h"

namespace dmu::formats::qcow {

Result<void> QcowImage::check_adopt_shape(uint64_t offset, uint64_t length, unsigned file,
                                          uint64_t host_offset) const {
  const uint64_t cs = cluster_size();
  if (file != 0) return fail(EINVAL, "qcow images have a single data file");
  if (length == 0 || !range_within(offset, length, info_.virtual_size))
    return fail(EINVAL, "the range is outside the virtual disk");
  const uint64_t end = offset + length;
  if (offset % cs || (end % cs && end != info_.virtual_size))
    return fail(EINVAL, "the range is not made of whole " + std::to_string(cs) + "-byte clusters");
  if (host_offset % cs) return fail(EINVAL, "the host offset is not cluster-aligned");
  return {};
}

Result<void> QcowImage::load_used() {
  if (used_) return {};
  HostRanges used;
  const uint64_t cs = cluster_size();
  used.add(0, header_.l1_table_offset + *align_up(l1_.size() * 8, 512));
  if (header_.backing_file_offset) used.add(header_.backing_file_offset, header_.backing_file_size);
  for (uint64_t index = 0; index < l1_.size(); ++index) {
    if (l1_[index] == 0) continue;
    used.add(l1_[index], header_.l2_bytes());
    DMU_ASSIGN_OR_RETURN(const std::vector<uint64_t>* table, l2_table(index));
    for (uint64_t e : *table) {
      if (e == 0) continue;
      if (e & kCompressedFlag) {
        used.add(e & header_.compressed_offset_mask(),
                 (e >> (63 - header_.cluster_bits)) & (cs - 1));
      } else {
        used.add(e, cs);
      }
    }
  }
  used_ = std::move(used);
  return {};
}

// The preparation the old process must have made for [offset, end): in
// place when every cluster is allocated at the given place, new clusters
// when none is allocated.
Result<QcowImage::Inflight> QcowImage::plan_adoption(uint64_t offset, uint64_t end, uint64_t host) {
  const uint64_t cs = cluster_size();
  const uint64_t first = offset / cs, count = (end - offset + cs - 1) / cs;
  uint64_t allocated = 0;
  for (uint64_t i = 0; i < count; ++i) {
    if (busy(first + i, 1))
      return fail(EINVAL, "guest cluster " + hex((first + i) * cs) + " is already adopted");
    DMU_ASSIGN_OR_RETURN(Cluster k, lookup(first + i));
    if (k.kind != Cluster::Normal) continue;
    if (k.offset != host + i * cs)
      return fail(EINVAL,
                  "guest cluster " + hex((first + i) * cs) + " is allocated at " + hex(k.offset));
    ++allocated;
  }
  if (allocated == count) return Inflight{first, 0, host};
  if (allocated != 0)
    return fail(EINVAL, "the range mixes allocated and new clusters (no one preparation does)");
  auto host_end = checked_add(host, count * cs);
  if (!host_end || *host_end > header_.compressed_offset_mask())
    return fail(EINVAL, "the host range is beyond what qcow L2 entries hold");
  DMU_TRY(load_used());
  if (used_->overlaps(host, count * cs))
    return fail(EINVAL,
                "the host range overlaps the image's metadata, another guest range's "
                "data or another adoption");
  return Inflight{first, count, host};
}

Result<uint64_t> QcowImage::adopt_write(uint64_t offset, uint64_t length, unsigned file,
                                        uint64_t host_offset) {
  DMU_TRY(require_writable("adopt"));
  const std::string what = adopt_context(info_.filename, offset, length, file, host_offset);
  if (!adopting_)
    return fail(EBUSY, what + ": the image changed since it was opened or last committed");
  if (auto r = check_adopt_shape(offset, length, file, host_offset); !r)
    return fail(EINVAL, what + ": " + r.error().message);
  auto f = plan_adoption(offset, offset + length, host_offset);
  if (!f) return fail(f.error().code, what + ": " + f.error().message);
  const uint64_t token = next_token_++;
  inflight_[token] = *f;
  if (f->count) {
    // Reserve the range: new clusters and commit's L2 tables go past it.
    used_->add(f->host_offset, f->count * cluster_size());
    next_free_ = std::max(next_free_, f->host_offset + f->count * cluster_size());
  }
  return token;
}

void QcowImage::end_adoption() {
  adopting_ = false;
  used_.reset();
}

}  // namespace dmu::formats::qcow
