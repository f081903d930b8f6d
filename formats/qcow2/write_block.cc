// Writes through blocks larger than a cluster (Image::set_write_block).
//
// The dm target remaps a block as a whole, and its smallest block is 4 KiB,
// so an image of 512-byte to 2 KiB clusters can only be written where every
// cluster of a block lies side by side in the file.  QEMU allocates those
// clusters one write at a time, wherever the allocator finds room, and so
// do we without this file.  Here a block whose clusters are not all
// allocated, or not contiguous, is moved as a whole to a fresh run of
// clusters (the old contents are copied by the caller, as for any fresh
// target) and its old clusters are released by the commit that points the
// L2 entries away from them, exactly as a copy-on-write of a compressed or
// snapshot-shared cluster.  Guest contents stay what QEMU's would be; only
// the layout differs.
#include "common/checked.h"
#include "formats/qcow2/qcow2_image.h"

namespace dmu::formats::qcow2 {

void Qcow2Image::set_write_block(uint64_t bytes) {
  write_block_ = is_power_of_two(bytes) ? bytes : 0;
}

// Extended L2 clusters and external data files are contiguous by
// construction (subclusters share their cluster; data file offset = guest
// offset); only plain clusters smaller than the block need moving.
bool Qcow2Image::groups_clusters() const {
  return write_block_ > g_.cluster_size && !g_.extended_l2 && !data_file_;
}

Result<std::optional<WriteTarget>> Qcow2Image::prepare_block(uint64_t start) {
  const uint64_t first = align_down(start, write_block_);
  const uint64_t end = std::min(first + write_block_, virtual_size_);
  const uint64_t c0 = first >> g_.cluster_bits, c_last = (end - 1) >> g_.cluster_bits;
  bool contiguous = true, in_flight = false;
  uint64_t host0 = 0;
  for (uint64_t c = c0; c <= c_last; ++c) {
    DMU_ASSIGN_OR_RETURN(WriteUnit w, classify(c << g_.cluster_bits));
    in_flight = in_flight || pending_.count(c);
    if (w.cls == WriteClass::New) {
      contiguous = false;
      continue;
    }
    if (c == c0) host0 = w.host;
    if (w.host != host0 + ((c - c0) << g_.cluster_bits)) contiguous = false;
  }
  if (contiguous) return std::optional<WriteTarget>();
  if (in_flight)
    return fail(EBUSY, path_ + ": the " + std::to_string(write_block_) + "-byte block at guest " +
                           hex(first) +
                           " has writes in flight on clusters that are not contiguous");

  // L2 tables first, so they do not split the run.
  for (uint64_t l1i = c0 >> g_.l2_bits; l1i <= c_last >> g_.l2_bits; ++l1i) DMU_TRY(ensure_l2(l1i));
  const uint64_t n = c_last - c0 + 1;
  DMU_ASSIGN_OR_RETURN(ClusterRun run, refcounts_->allocate_exact(n));
  WriteTarget t;
  t.offset = first;
  t.length = end - first;
  t.host_offset = run.first << g_.cluster_bits;
  t.fresh = true;
  t.token = next_token_++;
  for (uint64_t i = 0; i < n; ++i) {
    PendingCluster pc;
    pc.host = t.host_offset + (i << g_.cluster_bits);
    pc.new_host = true;
    pc.parts.push_back({t.token, 1});
    pending_[c0 + i] = std::move(pc);
  }
  tokens_[t.token] = TokenRecord{c0, n};
  return std::optional<WriteTarget>(t);
}

}  // namespace dmu::formats::qcow2
