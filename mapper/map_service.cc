// Map service: construction, block size choice, request dispatch, and the
// small answers (DONE, DISCARD, COMMIT).  MAP reads and writes live in
// map_service_read.cc and map_service_write.cc.
#include "mapper/map_service.h"

#include <algorithm>
#include <utility>

#include "common/checked.h"
#include "mapper/protocol.h"

namespace dmu::mapper {

using formats::Chain;

namespace {
constexpr uint64_t kMinBlock = 4096;     // protocol: block_sectors >= 8
constexpr uint64_t kMaxBlock = 2 << 20;  // no image maps coarser than 2 MiB
constexpr uint64_t kLinearChainBlock = 64 << 10;

uint64_t floor_power_of_two(uint64_t v) {
  uint64_t p = 1;
  while (p <= v / 2) p *= 2;
  return p;
}
}  // namespace

uint64_t choose_block_size(Chain& chain) {
  uint64_t finest = 0;
  for (const auto& image : chain.images()) {
    const auto& info = image->info();
    if (formats::maps_linearly(info)) continue;
    uint64_t g = std::max<uint64_t>(info.granularity, 512);
    finest = finest ? std::min(finest, g) : g;
  }
  if (!finest) finest = kLinearChainBlock;
  return std::clamp(floor_power_of_two(finest), kMinBlock, kMaxBlock);
}

Result<std::unique_ptr<MapService>> MapService::create(Chain& chain,
                                                       std::unique_ptr<ScratchStore> scratch,
                                                       const MapServiceOptions& options) {
  uint64_t block = options.block_size ? options.block_size : choose_block_size(chain);
  const std::string& name = chain.top().info().filename;
  if (!is_power_of_two(block) || block < kMinBlock || block > (uint64_t(1) << 29))
    return fail(EINVAL, name + ": block size " + std::to_string(block) +
                            " is not a power of two between 4 KiB and 512 MiB");
  if (!scratch) return fail(EINVAL, name + ": the map service needs a scratch store");
  if (scratch->slot_size() != block)
    return fail(EINVAL, name + ": scratch slots of " + std::to_string(scratch->slot_size()) +
                            " bytes, block size " + std::to_string(block));
  // Images with units below the block must keep each block contiguous.
  if (chain.writable()) chain.top().set_write_block(block);
  return std::unique_ptr<MapService>(new MapService(chain, std::move(scratch), options, block));
}

MapService::MapService(Chain& chain, std::unique_ptr<ScratchStore> scratch,
                       const MapServiceOptions& options, uint64_t block_size)
    : chain_(chain), scratch_(std::move(scratch)), options_(options), block_size_(block_size) {
  devices_ = chain_.devices();
  devices_.push_back(&scratch_->file());
  device_sizes_.assign(devices_.size(), 0);
}

uint64_t MapService::target_blocks() const {
  return chain_.virtual_size() / block_size_ + (chain_.virtual_size() % block_size_ != 0);
}

int MapService::record_error(const Error& e) {
  last_error_ = e.message;
  return -(e.code > 0 ? e.code : EIO);
}

void MapService::handle(const dmu_request& r, std::vector<dmu_response>& out) {
  scratch_->tick();
  switch (r.type) {
    case DMU_REQ_MAP: {
      const uint32_t known = DMU_MAP_WRITE | DMU_MAP_DISCARD;
      const uint64_t blocks = target_blocks();
      if ((r.flags & ~known) || (r.flags & known) == known || r.nr_blocks == 0 ||
          r.block >= blocks || r.nr_blocks > blocks - r.block) {
        last_error_ = "malformed MAP request for block " + std::to_string(r.block);
        out.push_back(proto::complete(r.id, -EINVAL));
        return;
      }
      // Asked again for an id whose answer awaits its DONE: that answer was
      // not applied (the kernel asks once per id), so it is abandoned.
      const bool stale = pending_.count(r.id);
      if (stale) {
        const Resolved gone = resolve_pending(pending_.find(r.id), false);
        if (gone.nr_blocks) out.push_back(proto::invalidate(gone.first_block, gone.nr_blocks));
      }
      if (must_wait(r)) {
        waiting_.push_back(r);
        waiting_blocks_.add(r.block, r.nr_blocks);
      } else {
        answer_map(r, out);
      }
      if (stale) answer_waiting(out);
      return;
    }
    case DMU_REQ_COMMIT:
      return answer_commit(r, out);
    case DMU_REQ_DONE:
      return handle_done(r, out);
    default:
      last_error_ = "unknown request type " + std::to_string(r.type);
      out.push_back(proto::complete(r.id, -EINVAL));
  }
}

void MapService::answer_map(const dmu_request& r, std::vector<dmu_response>& out) {
  if (r.flags & DMU_MAP_DISCARD) return answer_discard(r, out);
  // A read needs its first block only (its answer ends before lost ones).
  if (lost_.overlaps(r.block, (r.flags & DMU_MAP_WRITE) ? r.nr_blocks : 1)) {
    last_error_ = "block " + std::to_string(r.block) +
                  ": the image could not take in a completed write to it";
    out.push_back(proto::complete(r.id, -EIO));
    return;
  }
  if (r.flags & DMU_MAP_WRITE) return answer_map_write(r, out);
  return answer_map_read(r, out);
}

bool MapService::must_wait(const dmu_request& r) const {
  // A discard decides all its blocks at once; a read or write only its
  // first (the answer ends before later blocks in flight).
  const uint64_t n = (r.flags & DMU_MAP_DISCARD) ? r.nr_blocks : 1;
  return in_flight_.overlaps(r.block, n) || waiting_blocks_.overlaps(r.block, r.nr_blocks);
}

void MapService::answer_waiting(std::vector<dmu_response>& out) {
  if (waiting_.empty()) return;
  // Rebuilt in order: a request stays if it must still wait, counting the
  // blocks of the waiting requests before it (first come, first answered).
  std::deque<dmu_request> still;
  waiting_blocks_.clear();
  for (const dmu_request& r : std::exchange(waiting_, {})) {
    if (must_wait(r)) {
      still.push_back(r);
      waiting_blocks_.add(r.block, r.nr_blocks);
    } else {
      answer_map(r, out);
    }
  }
  waiting_ = std::move(still);
}

void MapService::add_pending(uint64_t id, Pending p) {
  // handle() resolved an earlier answer of the same id already.
  if (auto old = pending_.find(id); old != pending_.end()) resolve_pending(old, false);
  in_flight_.add(p.first_block, p.nr_blocks);
  pending_[id] = std::move(p);
}

MapService::Resolved MapService::resolve_pending(std::map<uint64_t, Pending>::iterator it,
                                                 bool ok) {
  Pending p = std::move(it->second);
  pending_.erase(it);
  in_flight_.remove(p.first_block, p.nr_blocks);
  bool kept = true;
  for (uint64_t token : p.tokens)
    if (auto done = chain_.top().write_done(token, ok); !done) {
      record_error(done.error());
      kept = false;
    }
  const bool lost = ok && !kept;
  if (lost) {
    lost_.add(p.first_block, p.nr_blocks);
    forget_scratch(p.first_block, p.nr_blocks);
  }
  for (size_t slot : p.pinned_slots) scratch_->unpin(slot);
  return {p.first_block, p.nr_blocks, lost};
}

void MapService::handle_done(const dmu_request& r, std::vector<dmu_response>& out) {
  // A discard's DONE (protocol 2) says no I/O through the discarded blocks'
  // old mappings is left.  The engines released those clusters when the
  // discard was answered already, so there is nothing to do here; and a
  // discard id is never a pending write (ids are never reused).
  if (r.flags & DMU_MAP_DISCARD) return;
  auto it = pending_.find(r.id);
  if (it == pending_.end()) return;  // a MAP we failed, or one a previous daemon answered
  const bool ok = r.status == 0;
  const Resolved w = resolve_pending(it, ok);
  // A failed write leaves its allocation abandoned, and a lost one (see
  // lost_) points where the image does not: the kernel must not keep
  // extents pointing at either.
  if (w.nr_blocks && (!ok || w.lost)) out.push_back(proto::invalidate(w.first_block, w.nr_blocks));
  answer_waiting(out);
}

void MapService::refused(uint64_t id, std::vector<dmu_response>& out) {
  auto it = pending_.find(id);
  if (it == pending_.end()) return;
  // Nothing of a refused answer was applied: no INVALIDATE is needed.
  resolve_pending(it, false);
  answer_waiting(out);
}

void MapService::answer_discard(const dmu_request& r, std::vector<dmu_response>& out) {
  if (!chain_.writable()) {
    out.push_back(proto::complete(r.id, -EROFS));
    return;
  }
  const uint64_t start = r.block * block_size_;
  const uint64_t end =
      std::min<uint64_t>(chain_.virtual_size(), (r.block + r.nr_blocks) * block_size_);
  auto done = chain_.top().discard(start, end - start);
  forget_scratch(r.block, r.nr_blocks);
  // Cached extents of the range may point at clusters the discard released.
  out.push_back(proto::invalidate(r.block, r.nr_blocks));
  out.push_back(proto::complete(r.id, done ? 0 : record_error(done.error())));
}

void MapService::answer_commit(const dmu_request& r, std::vector<dmu_response>& out) {
  if (!chain_.writable()) {
    out.push_back(proto::committed(r.id, 0));
    return;
  }
  auto c = chain_.top().commit();
  int status = c ? 0 : record_error(c.error());
  if (!status && !lost_.empty()) {
    last_error_ =
        "the image could not take in completed writes; every commit fails until a new "
        "mapping process adopts them (restart this one)";
    status = -EIO;
  }
  out.push_back(proto::committed(r.id, status));
}

void MapService::forget_scratch(uint64_t first_block, uint64_t nr_blocks) {
  for (uint64_t b = first_block; b < first_block + nr_blocks; ++b) scratch_->forget(b);
}

Result<size_t> MapService::scratch_block(uint64_t block, std::vector<dmu_response>& out) {
  if (auto slot = scratch_->find(block)) return *slot;
  std::vector<uint64_t> evicted;
  auto slot = scratch_->allocate(block, evicted);
  for (uint64_t b : evicted) out.push_back(proto::invalidate(b, 1));
  if (!slot) return fail(slot.error());
  std::vector<uint8_t> bytes(block_size_, 0);
  const uint64_t start = block * block_size_;
  const uint64_t len = std::min(block_size_, chain_.virtual_size() - start);
  auto filled = chain_.read(start, std::span(bytes).first(len));
  if (filled) filled = scratch_->file().write(scratch_->offset_of(*slot), bytes);
  if (!filled) {
    scratch_->forget(block);
    return fail(filled.error());
  }
  return *slot;
}

Result<uint64_t> MapService::device_size(unsigned device, bool refresh) {
  if (device_sizes_[device] == 0 || refresh) {
    DMU_ASSIGN_OR_RETURN(device_sizes_[device], devices_[device]->size());
  }
  return device_sizes_[device];
}

Result<void> MapService::ensure_device_size(unsigned device, uint64_t end) {
  DMU_ASSIGN_OR_RETURN(uint64_t size, device_size(device, true));
  if (size >= end) return {};
  // A freshly allocated cluster at the end of the file: the data device must
  // reach it before the kernel writes there (a loop device cannot grow
  // through I/O).
  DMU_TRY(devices_[device]->truncate(end));
  device_sizes_[device] = end;
  if (options_.device_grown) DMU_TRY(options_.device_grown(device, end));
  return {};
}

}  // namespace dmu::mapper
