// Model: the state of dmu-test-daemon's "model" mode, a small allocating
// image format (tests/kmod/model_format.h) kept as the protocol-2 rules
// demand, so the kernel's concurrency tests can prove restart and flush
// correctness against it.  Free of the control channel: the daemon feeds it
// requests and sends what it returns; device 0 is a File (O_DIRECT in the
// daemon, in memory in the unit tests).
//
// Three maps of virtual block -> cluster:
//   live         what answers use now: allocations as soon as they are
//                answered, discards as soon as they are answered;
//   committable  what a commit writes: the state after every decision (an
//                allocation or a discard) whose DONE has been read, in
//                decision order.  A failed allocation changes nothing;
//   on disk      the newest valid slot.
// Clusters are Free, Used, or Draining: held by a discard whose DONE has not
// arrived (I/O through the old mapping may still be in flight), freed at that
// DONE.  Allocation takes the lowest free cluster, so freed clusters come
// back soon.
//
// Per block, decisions alternate (allocate when unmapped, discard) and their
// DONEs are read in decision order: the kernel sends a discard's DONE after
// the DONEs of every answer applied before it, and the model never decides
// again for a block while an earlier decision's DONE is outstanding — a
// write MAP whose first block has an allocation or a discard awaiting DONE
// waits (answer_map() returns nullopt; ask again after the next DONE).  That
// keeps the committable map a prefix of every block's history, so a COMMIT
// never publishes a later decision before an earlier one, and a restarted
// daemon can rebuild the state from the newest slot plus the kernel's list of
// unpublished records (adopt()).
#pragma once

#include <linux/dm-userspace.h>

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <vector>

#include "common/error.h"
#include "fileio/file.h"
#include "tests/kmod/model_slots.h"

namespace dmu::testd {

struct ModelStats {
  uint64_t clusters = 0;          // fixed by device 0's size
  uint64_t allocated_blocks = 0;  // blocks given a fresh cluster
  uint64_t enospc = 0;            // write MAPs failed with -ENOSPC
  uint64_t discarded_blocks = 0;  // mapped blocks unmapped by discards
  uint64_t freed_clusters = 0;    // at a discard's DONE or a failed allocation's
  uint64_t done_allocations = 0;
  uint64_t done_failed = 0;  // allocations whose DONE carried an error
  uint64_t done_discards = 0;
  uint64_t done_ignored = 0;  // unknown ids (no allocation, a dead daemon's, ...)
  uint64_t done_duplicate = 0;
  uint64_t done_mismatch = 0;  // DONE whose flags/range differ from the MAP's
  uint64_t commits = 0;
  uint64_t commit_errors = 0;
  uint64_t generation = 0;  // of the newest slot loaded or written
  uint64_t adopted_records = 0;
  uint64_t adopted_failed = 0;  // blocks of listed answers that must have failed (see adopt())
};

// What a DONE meant.
enum class DoneKind { Allocation, FailedAllocation, Discard, Ignored, Duplicate };
const char* done_kind_name(DoneKind k);

class Model {
 public:
  // A commit's contents, frozen when its COMMIT is read.
  struct Snapshot {
    std::vector<model::Entry> entries;
  };

  // Loads the committed map (newest valid slot; none: empty) from device 0,
  // which must outlive the model.  The number of clusters is fixed by its
  // size (and by what one slot can hold).
  static Result<std::unique_ptr<Model>> open(File& device0, uint64_t target_sectors,
                                             uint32_t block_sectors);

  // Adopts the unpublished records of a daemon that went away (the kernel's
  // LIST_ALLOCATIONS, in application order), before anything is answered:
  // NEW extents become pending allocations under their id, discards are
  // applied in order.  Returns how many records were adopted.
  Result<size_t> adopt(std::span<const dmu_allocation> records);

  // The answer to a MAP (last message FINAL), or nullopt when it must wait
  // for a DONE (see the top of this file).
  std::optional<std::vector<dmu_response>> answer_map(const dmu_request& q);

  // A DONE; INVALIDATE messages for a failed allocation go to `out`.
  DoneKind done(const dmu_request& q, std::vector<dmu_response>& out);

  // The committable map now (what a COMMIT read now must make durable).
  Snapshot snapshot() const;
  // Writes the snapshot into the slot not holding the newest valid map, with
  // the next generation, and fdatasync()s device 0.
  Result<void> commit(const Snapshot& s);

  // --- Introspection (logs, tests) ---
  std::optional<uint64_t> cluster_of(uint64_t block) const;  // live map
  const std::map<uint64_t, uint64_t>& live() const { return live_; }
  const std::map<uint64_t, uint64_t>& committable() const { return committable_; }
  bool cluster_free(uint64_t cluster) const { return free_.count(cluster) != 0; }
  size_t free_clusters() const { return free_.size(); }
  size_t draining_clusters() const;
  size_t pending_allocations() const { return allocs_.size(); }
  size_t pending_discards() const { return discards_.size(); }
  uint64_t blocks() const { return blocks_; }
  uint64_t block_bytes() const { return block_bytes_; }
  int newest_slot() const { return newest_slot_; }
  const ModelStats& stats() const { return stats_; }
  uint64_t sector_of(uint64_t cluster) const {
    return model::cluster_offset(cluster, block_bytes_) / 512;
  }

 private:
  enum class Cluster : uint8_t { Free, Used, Draining };
  struct Alloc {
    std::vector<std::pair<uint64_t, uint64_t>> blocks;  // (vblock, cluster)
    std::optional<dmu_request> map;                     // the MAP, unless adopted
  };
  struct Discard {
    uint64_t block = 0, nr_blocks = 0;
    std::vector<uint64_t> draining;  // clusters freed at its DONE
    bool adopted = false;            // from LIST_ALLOCATIONS: its MAP's range is the record's
  };

  Model(File& dev, uint64_t blocks, uint64_t block_bytes, uint64_t clusters);

  std::vector<dmu_response> answer_read(const dmu_request& q) const;
  std::optional<std::vector<dmu_response>> answer_write(const dmu_request& q);
  std::vector<dmu_response> answer_discard(const dmu_request& q);
  // True when a new decision for `block` must wait for a DONE.
  bool waits_for_done(uint64_t block) const;
  bool discard_pending(uint64_t block) const;
  void take(uint64_t cluster);
  void release(uint64_t cluster);
  void remember_done(uint64_t id);
  bool same_map(const dmu_request& done, const dmu_request& map) const;

  File& dev_;
  const uint64_t blocks_;
  const uint64_t block_bytes_;
  std::vector<Cluster> clusters_;
  std::set<uint64_t> free_;
  std::map<uint64_t, uint64_t> live_;
  std::map<uint64_t, uint64_t> committable_;
  std::map<uint64_t, Alloc> allocs_;           // by id, awaiting DONE
  std::map<uint64_t, uint32_t> alloc_blocks_;  // vblock -> allocations awaiting DONE
  std::map<uint64_t, Discard> discards_;       // by id, awaiting DONE
  std::set<uint64_t> recent_done_;             // ids whose DONE was handled (bounded)
  std::deque<uint64_t> recent_order_;
  int newest_slot_ = -1;
  uint64_t generation_ = 0;
  ModelStats stats_;
};

}  // namespace dmu::testd
