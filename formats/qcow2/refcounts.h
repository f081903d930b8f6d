// Host cluster reference counts: the refcount table (kept whole in memory,
// at most 8 MiB) and the refcount blocks (through a bounded TableCache),
// every width from 1 to 64 bits.  It also owns cluster allocation, because
// allocating is "find clusters whose refcount is 0 and make it 1" — including
// the refcount blocks and refcount table growth that allocation may need
// (new blocks describe themselves, a grown table is placed at the end of the
// file together with the blocks that cover it, as QEMU does).
//
// Durability: changes stay in memory until flush(), which writes refcount
// blocks, syncs, writes the table (or the relocated table and then the
// header fields that point at it), and syncs.  Decrements whose reference
// removal is not durable yet are queued with defer_decrement() and applied by
// apply_deferred() after the commit that removed the references, so a
// cluster is never reused while a durable L2 entry may still point at it.
#pragma once

#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "common/error.h"
#include "fileio/file.h"
#include "formats/qcow2/layout.h"
#include "formats/qcow2/table_cache.h"

namespace dmu::formats::qcow2 {

struct ClusterRun {
  uint64_t first = 0;  // cluster index
  uint64_t count = 0;
};

class Refcounts {
 public:
  Refcounts(File& file, const Geometry& g, std::string path, size_t cache_blocks);

  // Loads the table named by the header; file_size seeds the allocator.
  Result<void> load(uint64_t table_offset, uint32_t table_clusters, uint64_t file_size);
  // Clusters the allocator must never hand out and blocks must never be
  // written over (header, L1, refcount table, snapshot table...), whatever
  // their refcount says: a defence against corrupt images.
  void set_reserved(std::function<bool(uint64_t cluster)> reserved) {
    reserved_ = std::move(reserved);
  }

  Result<uint64_t> get(uint64_t cluster);
  // Sets a refcount, creating the refcount block (and growing the table)
  // when the cluster has none yet.
  Result<void> set(uint64_t cluster, uint64_t value);
  // Adds delta (may be negative) to every cluster of a run; refuses to
  // overflow or go below zero (that would be a corrupt image).
  Result<void> add(ClusterRun run, int64_t delta);

  // Allocates 1..want contiguous free clusters with refcount 1.
  Result<ClusterRun> allocate(uint64_t want);
  // Allocates exactly `want` contiguous free clusters with refcount 1, for
  // writers whose unit spans several clusters (a 4 KiB block of 512-byte
  // clusters): shorter free runs are skipped, and stay free.
  Result<ClusterRun> allocate_exact(uint64_t want);

  // release: the caller asked for the space back (discard, unmapping zero
  // writes); clusters it frees are reported by apply_deferred().
  void defer_decrement(ClusterRun run, bool release = false) {
    if (run.count) deferred_.push_back({run, release});
  }
  bool has_deferred() const { return !deferred_.empty(); }
  // Applies the queued decrements; returns the released clusters that are
  // now free, for the image to punch out of the file.
  Result<std::vector<ClusterRun>> apply_deferred();

  bool dirty() const;
  // Makes every refcount change durable (see the top of this file).
  Result<void> flush();
  void trim() { blocks_.trim(); }
  bool over_budget() const { return blocks_.over_budget(); }
  // Drops every in-memory change (after a failed commit nothing is trusted).
  void forget_changes();

  uint64_t table_offset() const { return table_offset_; }
  uint32_t table_clusters() const { return table_clusters_; }
  const std::vector<uint64_t>& table() const { return table_; }
  uint64_t table_entries() const { return table_.size(); }
  // One past the last cluster of the file or of anything allocated since
  // open: metadata or data beyond it can only come from a corrupt image.
  uint64_t end_cluster() const { return end_; }

 private:
  Result<uint8_t*> block_for(uint64_t cluster, bool create_if_missing);
  Result<void> set_in_block(uint64_t cluster, uint64_t value);
  void create_block(uint64_t range, uint64_t at_cluster);
  Result<void> ensure_block(uint64_t range);
  Result<void> grow_table(uint64_t min_entries);
  Result<uint64_t> find_free(uint64_t from);
  Result<bool> is_free(uint64_t cluster);
  bool reserved(uint64_t cluster) const { return reserved_ && reserved_(cluster); }
  Error corrupt(const std::string& what) const;

  File& file_;
  Geometry g_;
  std::string path_;
  TableCache blocks_;
  std::vector<uint64_t> table_;
  uint64_t table_offset_ = 0;
  uint32_t table_clusters_ = 0;
  std::set<uint64_t> dirty_entries_;
  bool moved_ = false;
  uint64_t free_hint_ = 0;
  uint64_t end_ = 0;  // clusters at or past here were never used (file end)
  struct Deferred {
    ClusterRun run;
    bool release = false;
  };
  std::vector<Deferred> deferred_;
  std::function<bool(uint64_t)> reserved_;
};

// Refcount entry access for every refcount_order (0..6) on a block's bytes.
uint64_t get_refcount_entry(const uint8_t* block, unsigned order, uint64_t index);
void set_refcount_entry(uint8_t* block, unsigned order, uint64_t index, uint64_t value);

}  // namespace dmu::formats::qcow2
