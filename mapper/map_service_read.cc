// Map service: MAP requests for reading.  The answer maps the asked blocks and
// reads ahead up to a cap, in runs as long as the chain allows: REMAP for
// data (writable when the top image can be written in place), ZERO for zero
// and unallocated ranges, and REMAP to the scratch store for compressed
// clusters and for blocks whose parts map to different places.  A push is
// the same answer nobody asked for, minus the blocks that would need the
// scratch store (they are left to a miss: a push must not decompress the
// whole disk).
#include <algorithm>

#include "common/checked.h"
#include "mapper/map_service.h"
#include "mapper/map_service_internal.h"
#include "mapper/protocol.h"

namespace dmu::mapper {

using formats::ChainMapping;

constexpr unsigned kMaxPushLookups = 1024;  // engine map() calls per push() call

void merge_remap(std::vector<dmu_response>& extents, const dmu_response& e,
                 uint64_t block_sectors) {
  if (!extents.empty()) {
    dmu_response& last = extents.back();
    if (last.block + last.nr_blocks == e.block && last.kind == e.kind &&
        last.ext_flags == e.ext_flags && last.dev == e.dev &&
        (e.kind == DMU_EXT_ZERO || last.sector + last.nr_blocks * block_sectors == e.sector)) {
      last.nr_blocks += e.nr_blocks;
      return;
    }
  }
  extents.push_back(e);
}

void MapService::answer_map_read(const dmu_request& r, std::vector<dmu_response>& out) {
  const uint64_t vsize = chain_.virtual_size();
  const uint64_t start = r.block * block_size_;
  const uint64_t asked_end = std::min<uint64_t>(vsize, (r.block + r.nr_blocks) * block_size_);
  const uint64_t limit =
      std::min(vsize, std::max(asked_end, checked_add(start, options_.read_ahead).value_or(vsize)));
  map_for_reading(r.id, start, limit, std::clamp(options_.max_messages, 2u, kMaxAnswerMessages),
                  false, out);
}

uint64_t MapService::push(uint64_t first_block, uint64_t id, std::vector<dmu_response>& out,
                          uint64_t end_block) {
  const uint64_t vsize = chain_.virtual_size();
  const uint64_t start = first_block * block_size_;
  if (start >= vsize) return target_blocks();
  const uint64_t limit = std::min(vsize, checked_mul(end_block, block_size_).value_or(vsize));
  if (limit <= start) return first_block;
  return map_for_reading(id, start, limit, kMaxAnswerMessages, true, out);
}

uint64_t MapService::map_for_reading(uint64_t id, uint64_t start, uint64_t limit,
                                     unsigned max_extents, bool push,
                                     std::vector<dmu_response>& out) {
  const uint64_t B = block_size_;
  const uint64_t vsize = chain_.virtual_size();
  // Blocks of write answers whose DONE is not handled yet: the kernel may
  // hold their new extents, filled and written, while the engine still
  // shows the old mapping (qcow and vmdk show a preparation only after
  // write_done; qcow2 at once, even if the write then fails).  A push or a
  // read answer must not replace the kernel's extent there with what the
  // engine says, so a read answer ends at them (its first block is never
  // one: such a MAP waits, see must_wait) and a push skips them.
  // A read answer never takes more than an eighth of the scratch store.
  uint64_t scratch_budget =
      std::max(std::min(options_.max_scratch_per_answer, scratch_->slot_count() / 8 * B), B);

  std::vector<dmu_response> extents;
  std::vector<dmu_response> invalidations;
  uint64_t pos = start;
  int error = 0;

  // Maps one block through the scratch store (a push skips it); false ends
  // the answer.
  auto bounce = [&](uint64_t block) {
    if (push) return true;
    if (scratch_budget < B && !extents.empty()) return false;
    auto slot = scratch_block(block, invalidations);
    if (!slot) {
      error = record_error(slot.error());
      return false;
    }
    scratch_budget -= std::min(scratch_budget, B);
    merge_remap(extents,
                proto::remap_extent(id, block, 1, scratch_device(),
                                    scratch_->offset_of(*slot) / 512, 0, false),
                B / 512);
    return true;
  };

  // A push also bounds the engine lookups of one call, so a disk of many
  // skipped blocks (compressed clusters) is pushed in short turns too.
  unsigned lookups = 0;
  while (pos < limit && extents.size() < max_extents && !(push && ++lookups > kMaxPushLookups)) {
    const uint64_t block = pos / B;
    // Blocks in flight (see above) and lost ones (see lost_) end a read
    // answer and are skipped by a push.
    if (const uint64_t busy_end =
            std::max(in_flight_.covered_until(block), lost_.covered_until(block));
        busy_end > block) {
      if (!push) break;
      pos = busy_end * B;
      continue;
    }
    uint64_t run_end = limit;
    if (const uint64_t next =
            std::min(in_flight_.next_start_after(block), lost_.next_start_after(block));
        next < target_blocks())
      run_end = std::min(limit, next * B);
    auto m = chain_.map(pos, run_end - pos);
    if (!m) {
      error = record_error(m.error());
      break;
    }
    const bool reaches_end = pos + m->length >= vsize;
    uint64_t bytes = reaches_end ? vsize - pos : align_down(m->length, B);
    if (bytes == 0) {  // the block's parts map differently (granularity < block)
      if (!bounce(block)) break;
      pos += B;
      continue;
    }
    if (m->kind == ChainMapping::Kind::Data) {
      const unsigned dev = m->device;
      if (m->host_offset % 512 != 0) {  // cannot be remapped sector-wise
        if (!bounce(block)) break;
        pos += B;
        continue;
      }
      // Data past the end of its file reads as zeros (QEMU's rule), but a
      // kernel extent may not point past the device: serve the block that
      // crosses the end from the scratch store.
      auto size = device_size(dev, chain_.device_depth(dev) == 0);
      if (!size) {
        error = record_error(size.error());
        break;
      }
      if (m->host_offset + bytes > *size) {
        uint64_t inside = *size > m->host_offset ? align_down(*size - m->host_offset, B) : 0;
        if (inside == 0) {
          if (!bounce(block)) break;
          pos += B;
          continue;
        }
        bytes = inside;
      }
      const uint32_t flags = m->writable ? DMU_EXT_WRITABLE : 0;
      merge_remap(extents,
                  proto::remap_extent(id, block, ceil_div(bytes, B), dev, m->host_offset / 512,
                                      flags, false),
                  B / 512);
    } else if (m->kind == ChainMapping::Kind::Zero) {
      merge_remap(extents, proto::zero_extent(id, block, ceil_div(bytes, B), false), B / 512);
    } else {  // Compressed: decompress block by block into the scratch store
      const uint64_t nblocks = ceil_div(bytes, B);
      uint64_t i = 0;
      while (i < nblocks && bounce(block + i)) ++i;
      pos += i * B;
      if (i < nblocks) break;
      continue;
    }
    pos += ceil_div(bytes, B) * B;
  }

  out.insert(out.end(), invalidations.begin(), invalidations.end());
  if (push) {
    // An error ends the push where it happened; a miss there asks again.
    if (!extents.empty()) {
      extents.back().flags |= DMU_RSP_FINAL;
      out.insert(out.end(), extents.begin(), extents.end());
    }
    return error ? target_blocks() : pos / B;
  }
  if (extents.empty()) {
    out.push_back(proto::complete(id, error ? error : -EIO));
    return pos / B;
  }
  extents.back().flags |= DMU_RSP_FINAL;
  out.insert(out.end(), extents.begin(), extents.end());
  return pos / B;
}

}  // namespace dmu::mapper
