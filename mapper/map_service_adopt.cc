// Map service: adopting a previous daemon's unpublished allocations (see
// MapService::adopt in map_service.h and kmod/README.md, protocol 2 item 1).
#include <algorithm>
#include <map>

#include "common/checked.h"
#include "mapper/map_service.h"

namespace dmu::mapper {

namespace {

std::string describe(const dmu_allocation& a) {
  return "allocation record (id " + std::to_string(a.id) + ", blocks " + std::to_string(a.block) +
         "+" + std::to_string(a.nr_blocks) + ", device " + std::to_string(a.dev) + " sector " +
         std::to_string(a.sector) + ")";
}

}  // namespace

// One NEW extent: its blocks in bytes, on the top image's file that is the
// record's device (the chain lists the top image's files first, as devices
// 0..n-1, and only those are writable), registered under its id.
Result<void> MapService::adopt_record(const dmu_allocation& a) {
  formats::Image& top = chain_.top();
  const uint64_t vsize = chain_.virtual_size();
  const unsigned files = unsigned(top.data_files().size());
  if (a.nr_blocks == 0 || a.block >= target_blocks() || a.nr_blocks > target_blocks() - a.block)
    return fail(EINVAL, "the blocks are outside the device");
  if (a.dev >= files || a.sector > (UINT64_MAX >> 9))
    return fail(EINVAL, "the device is not a data file of the top image");
  const uint64_t offset = a.block * block_size_;
  const uint64_t length = std::min<uint64_t>(a.nr_blocks * block_size_, vsize - offset);
  DMU_ASSIGN_OR_RETURN(uint64_t token, top.adopt_write(offset, length, a.dev, a.sector * 512));
  Pending& p = pending_[a.id];
  // The NEW blocks of the id, for the INVALIDATE a failed DONE sends.
  const uint64_t end = p.nr_blocks
                           ? std::max<uint64_t>(p.first_block + p.nr_blocks, a.block + a.nr_blocks)
                           : a.block + a.nr_blocks;
  p.first_block = p.nr_blocks ? std::min<uint64_t>(p.first_block, a.block) : a.block;
  p.nr_blocks = end - p.first_block;
  p.tokens.push_back(token);
  return {};
}

// A discard record, replayed in its place in the list (the order the dead
// daemon answered): a rewrite after it may then place its blocks anew.  An
// engine refuses to discard a write in flight, so an earlier record inside
// the range the replay changes whose DONE was not queued means the list
// contradicts itself -- and its fill might still write there.
Result<void> MapService::adopt_discard_record(const dmu_allocation& a,
                                              std::span<const dmu_allocation* const> in_flight) {
  if (a.nr_blocks == 0 || a.block >= target_blocks() || a.nr_blocks > target_blocks() - a.block)
    return fail(EINVAL, "the blocks are outside the device");
  const uint64_t offset = a.block * block_size_;
  const uint64_t length =
      std::min<uint64_t>(a.nr_blocks * block_size_, chain_.virtual_size() - offset);
  forget_scratch(a.block, a.nr_blocks);
  DMU_ASSIGN_OR_RETURN(auto changed, chain_.top().adopt_discard(offset, length));
  // Only a range the replay changed matters: a discard the engine ignores
  // (qcow, vmdk, part of a cluster, qcow2 v2 over a backing file) may well
  // have been answered beside a write in flight.
  for (const dmu_allocation* w : in_flight) {
    const uint64_t w_start = w->block * block_size_, w_end = w_start + w->nr_blocks * block_size_;
    if (w_start < changed.second && changed.first < w_end)
      return fail(EINVAL, "it discards blocks of " + describe(*w) + ", whose DONE never came");
  }
  return {};
}

// A record whose DONE the kernel queued already: as that DONE would.  The
// kernel dropped the extents of a failed one, so no INVALIDATE is needed.
// The records stay in the kernel until a COMMITTED 0, so a write the engine
// cannot record fails the bind (the next try adopts it again) rather than
// leaving the blocks lost.
Result<void> MapService::resolve_adopted(uint64_t id, bool ok) {
  if (auto it = pending_.find(id); it != pending_.end() && resolve_pending(it, ok).lost)
    return fail(EIO, chain_.top().info().filename + ": adopting allocation id " +
                         std::to_string(id) + ": " + last_error_);
  return {};
}

Result<void> MapService::adopt(std::span<const dmu_allocation> records) {
  adopt_counts_ = {};
  if (!chain_.writable() && !records.empty())
    return fail(EROFS, chain_.top().info().filename + ": cannot adopt " +
                           std::to_string(records.size()) + " allocation records read-only");
  std::map<uint64_t, bool> finished;             // id -> ok, for records whose DONE was queued
  std::vector<const dmu_allocation*> in_flight;  // write records whose DONE was not queued
  for (const dmu_allocation& a : records) {
    if (a.flags & DMU_ALLOC_DISCARD) {
      if (auto r = adopt_discard_record(a, in_flight); !r)
        return fail(r.error().code,
                    chain_.top().info().filename + ": " + describe(a) + ": " + r.error().message);
      ++adopt_counts_.discards;
      continue;
    }
    if (a.flags & DMU_ALLOC_FAILED) {
      // The kernel dropped its extents and the dead daemon freed its space
      // (a later record may reuse it): nothing to adopt; a redelivered
      // DONE of the id finds nothing pending.
      ++adopt_counts_.failed;
      continue;
    }
    // adopt_record grows the id's blocks record by record: in_flight_ is
    // filled at the end.
    if (auto r = adopt_record(a); !r)
      return fail(r.error().code,
                  chain_.top().info().filename + ": " + describe(a) + ": " + r.error().message);
    ++adopt_counts_.adopted;
    if (!(a.flags & DMU_ALLOC_DONE)) in_flight.push_back(&a);
    if (a.flags & DMU_ALLOC_DONE) finished.try_emplace(a.id, true);
  }
  for (const auto& [id, p] : pending_) in_flight_.add(p.first_block, p.nr_blocks);
  // Only now: write_done ends the image's adoption phase.
  for (const auto& [id, ok] : finished) {
    if (auto p = pending_.find(id); p != pending_.end())
      adopt_counts_.resolved += p->second.tokens.size();
    DMU_TRY(resolve_adopted(id, ok));
  }
  return {};
}

}  // namespace dmu::mapper
