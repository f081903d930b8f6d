// Slot bookkeeping of the scratch store (see scratch_store.h).
#include "mapper/scratch_store.h"

#include <algorithm>

#include "common/checked.h"

namespace dmu::mapper {

Result<std::unique_ptr<ScratchStore>> ScratchStore::create(Env& env, const std::string& path,
                                                           uint64_t capacity, uint64_t slot_size,
                                                           bool preallocate) {
  if (!is_power_of_two(slot_size) || slot_size < 512)
    return fail(EINVAL, path + ": scratch slot size " + std::to_string(slot_size) +
                            " is not a power of two of at least 512");
  size_t slots = size_t(std::max<uint64_t>(capacity / slot_size, 16));
  DMU_ASSIGN_OR_RETURN(auto file, env.open(path, OpenMode::CreateTruncate));
  if (preallocate) DMU_TRY(file->truncate(uint64_t(slots) * slot_size));
  return std::unique_ptr<ScratchStore>(new ScratchStore(std::move(file), slot_size, slots));
}

ScratchStore::ScratchStore(std::unique_ptr<File> file, uint64_t slot_size, size_t slots)
    : file_(std::move(file)), slot_size_(slot_size), slots_(slots) {
  for (size_t i = 0; i < slots; ++i) free_.insert(i);
}

std::optional<size_t> ScratchStore::find(uint64_t block) const {
  auto it = by_block_.find(block);
  if (it == by_block_.end()) return std::nullopt;
  return it->second;
}

void ScratchStore::recycle() {
  while (!quarantine_.empty()) {
    Slot& s = slots_[quarantine_.front()];
    if (s.state != Slot::Retired || clock_ < s.retired_at + kQuarantine) break;
    s.state = Slot::Free;
    free_.insert(quarantine_.front());
    quarantine_.pop_front();
  }
}

void ScratchStore::retire(size_t index) {
  Slot& s = slots_[index];
  by_block_.erase(s.block);
  s.state = Slot::Retired;
  s.forgotten = false;
  s.retired_at = clock_;
  quarantine_.push_back(index);
}

bool ScratchStore::evict_one(std::vector<uint64_t>& evicted) {
  for (size_t tries = age_.size(); tries > 0; --tries) {
    size_t index = age_.front();
    age_.pop_front();
    Slot& s = slots_[index];
    if (s.state != Slot::Used) continue;  // stale entry
    if (s.pins > 0 || s.allocated_at == clock_) {
      // A COPY source, or part of the answer being built: look again later.
      age_.push_back(index);
      continue;
    }
    evicted.push_back(s.block);
    retire(index);
    return true;
  }
  return false;
}

Result<size_t> ScratchStore::allocate(uint64_t block, std::vector<uint64_t>& evicted) {
  recycle();
  // Keep a reserve of free slots so the quarantine has time to pass: evict
  // ahead of need once fewer than a quarter of the slots are free.
  while (free_.size() < slots_.size() / 4 && evict_one(evicted)) {
  }
  if (free_.empty() && !quarantine_.empty() && slots_[quarantine_.front()].retired_at < clock_) {
    // Under extreme pressure, cut the oldest quarantine short rather than
    // fail the guest's I/O.
    slots_[quarantine_.front()].state = Slot::Free;
    free_.insert(quarantine_.front());
    quarantine_.pop_front();
  }
  if (free_.empty())
    return fail(ENOSPC, file_->path() + ": scratch store full (all " +
                            std::to_string(slots_.size()) +
                            " slots are COPY sources or in use by this answer)");
  size_t index = *free_.begin();
  free_.erase(free_.begin());
  if (age_.size() > 2 * slots_.size()) compact_age();
  Slot& s = slots_[index];
  s = Slot{Slot::Used, block, 0, false, 0, clock_};
  by_block_[block] = index;
  age_.push_back(index);
  return index;
}

void ScratchStore::compact_age() {
  // Keep the newest entry of every slot still in use, in age order.
  std::vector<bool> kept(slots_.size(), false);
  std::deque<size_t> fresh;
  for (auto it = age_.rbegin(); it != age_.rend(); ++it) {
    if (slots_[*it].state != Slot::Used || kept[*it]) continue;
    kept[*it] = true;
    fresh.push_front(*it);
  }
  age_ = std::move(fresh);
}

void ScratchStore::unpin(size_t slot) {
  if (slot >= slots_.size()) return;  // not one of ours: nothing was pinned
  Slot& s = slots_[slot];
  if (s.pins == 0 || --s.pins > 0 || !s.forgotten) return;
  // Its block changed while it was a COPY source: release it now.
  s.forgotten = false;
  s.state = Slot::Retired;
  s.retired_at = clock_;
  quarantine_.push_back(slot);
}

void ScratchStore::forget(uint64_t block) {
  auto it = by_block_.find(block);
  if (it == by_block_.end()) return;
  size_t index = it->second;
  Slot& s = slots_[index];
  if (s.pins > 0) {
    by_block_.erase(it);  // no longer answers reads; released at the last unpin
    s.forgotten = true;
    return;
  }
  retire(index);
}

}  // namespace dmu::mapper
