// The scratch store: a file the map service owns, listed as the last device
// of the dm table, holding guest-visible contents of blocks that no image
// file holds in a kernel-readable form: decompressed clusters, and blocks
// whose parts map to different places (an image granularity finer than the
// dm block, e.g. 2 KiB subclusters under a 4 KiB block).  This is the one
// sanctioned case of userspace writing guest bytes (DESIGN.md, rule 2); it
// lets repeated reads of such blocks stay in the kernel.
//
// The store is an array of block-sized slots, each holding one virtual block.
// A slot stays valid until the block's guest contents change (a write or a
// discard through the service): then the service forgets it.  Slots are
// reused oldest first; a slot evicted while the kernel may still cache an
// extent pointing at it is first announced (the caller sends INVALIDATE for
// the evicted block), then kept in quarantine for a number of further
// requests before it is overwritten, so reads already in flight finish on the
// old contents.  Slots that are COPY sources of a write in progress are
// pinned until its DONE.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/error.h"
#include "fileio/file.h"

namespace dmu::mapper {

class ScratchStore {
 public:
  // capacity is rounded down to whole slots (at least 16).  preallocate
  // sizes the file to the capacity at once (a loop device's size is fixed
  // when it is set up).
  static Result<std::unique_ptr<ScratchStore>> create(Env& env, const std::string& path,
                                                      uint64_t capacity, uint64_t slot_size,
                                                      bool preallocate);

  File& file() { return *file_; }
  uint64_t slot_size() const { return slot_size_; }
  size_t slot_count() const { return slots_.size(); }

  // The slot holding `block`, if one does.
  std::optional<size_t> find(uint64_t block) const;
  uint64_t offset_of(size_t slot) const { return uint64_t(slot) * slot_size_; }
  // A slot for `block` (which must not have one).  Blocks whose slots had
  // to be evicted for it are appended to `evicted` (the caller invalidates
  // them in the kernel).  Fails with ENOSPC when every slot is pinned or in
  // quarantine.  The caller fills the slot before answering.
  Result<size_t> allocate(uint64_t block, std::vector<uint64_t>& evicted);
  // A pinned slot is not reused (it is the COPY source of a write in progress).
  void pin(size_t slot) {
    if (slot < slots_.size()) ++slots_[slot].pins;
  }
  void unpin(size_t slot);
  // The block's guest contents changed: its slot no longer answers reads
  // (it is released once unpinned and out of quarantine).
  void forget(uint64_t block);
  // Called once per request the service handles: ages the quarantine.
  void tick() { ++clock_; }

  // Requests a released slot waits before it is reused.
  static constexpr uint64_t kQuarantine = 8;

 private:
  struct Slot {
    enum State { Free, Used, Retired } state = Free;
    uint64_t block = 0;
    unsigned pins = 0;
    bool forgotten = false;  // Used and pinned, but its block changed
    uint64_t retired_at = 0;
    uint64_t allocated_at = 0;  // never evicted during the request that filled it
  };

  ScratchStore(std::unique_ptr<File> file, uint64_t slot_size, size_t slots);
  void retire(size_t index);
  void recycle();                                  // quarantine -> free
  bool evict_one(std::vector<uint64_t>& evicted);  // oldest unpinned Used -> Retired
  void compact_age();                              // drops stale age_ entries

  std::unique_ptr<File> file_;
  uint64_t slot_size_;
  std::vector<Slot> slots_;
  std::unordered_map<uint64_t, size_t> by_block_;
  std::set<size_t> free_;          // lowest first, so runs tend to be contiguous
  std::deque<size_t> age_;         // Used slots, oldest first (may hold stale entries)
  std::deque<size_t> quarantine_;  // Retired slots, oldest first
  uint64_t clock_ = 0;
};

}  // namespace dmu::mapper
