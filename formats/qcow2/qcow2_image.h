// The qcow2 engine: one open qcow2 file (plus its external data file) behind
// the formats/image.h interface.  The class is split by concern across
// files, as QEMU splits block/qcow2*.c:
//   qcow2_image.cc  open, feature policy, info, map (L1/L2 lookup), reads
//   write_path.cc   prepare_write / write_done, zeroes, discard
//   write_block.cc  keeping a caller's block of small clusters contiguous
//   commit.cc       commit ordering, L2 table allocation, header updates
//   adopt.cc        adopt_write: a dead process's uncommitted allocations
//   check.cc        check and repair; rebuild.cc rebuilds refcounts
//   create.cc       new images
//
// Decisions (documented here because callers depend on them):
// - Pending allocations: prepare_write records new clusters in an overlay
//   (pending_) that map() shows at once as writable Data; the L2 entry is
//   changed in memory only on write_done(ok) and reaches the disk with the
//   next commit.  A failed write_done frees a new cluster at once (nothing
//   durable points at it).
// - Freed clusters (COW of compressed or snapshot-shared clusters, discard,
//   unmapping zero writes) keep their refcount until the commit that removes
//   the reference is durable, so they are never reused while a durable L2
//   entry may still point at them.
// - Internal snapshots: clusters and L2 tables whose refcount is above one
//   (no COPIED flag) are copied on write: prepare_write returns a fresh
//   cluster and map() reported the old contents as Data.
// - Lazy refcounts: refcounts are always written in order, so the dirty bit
//   is never set by this engine.  A dirty image opened read-write is repaired
//   first (refcounts rebuilt from L1/L2, as QEMU does) and then marked clean;
//   read-only opens report info().dirty.
// - Persistent bitmaps: the engine cannot keep dirty bitmaps up to date, so an
//   image with consistent bitmaps is refused read-write (clear error); use
//   `qemu-img bitmap --remove` first.  Inconsistent ones (autoclear bit
//   clear) are left alone.
// - Corrupt bit: the image may be opened read-write only to be repaired by
//   check(Repair::All); every write is refused with EROFS until then.
// - Unknown autoclear bits are cleared before the first change to the image.
// - Adoptions (adopt_write) become pending clusters like prepare_write's,
//   but claim their host clusters only in adopt_claims_: refcounts and L2
//   tables they need are allocated by end_adoption(), on the first call that
//   is not an adoption, with every claimed cluster kept out of the
//   allocator, so no metadata of ours lands on a range a later adoption
//   names.
// - Not thread safe: callers serialise calls on one Image.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <set>
#include <unordered_map>
#include <vector>

#include "formats/image.h"
#include "formats/qcow2/bitmaps.h"
#include "formats/qcow2/header.h"
#include "formats/qcow2/layout.h"
#include "formats/qcow2/refcounts.h"
#include "formats/qcow2/snapshots.h"
#include "formats/qcow2/table_cache.h"

namespace dmu::formats::qcow2 {

struct OpenOptions {
  uint64_t l2_cache_bytes = 32ull << 20;
  uint64_t refcount_cache_bytes = 4ull << 20;
  // Largest run one prepare_write allocates.
  uint64_t max_allocation_bytes = 32ull << 20;
};

int probe(std::span<const uint8_t> head, const std::string& path);
Result<std::unique_ptr<Image>> open(Env& env, const std::string& path, Access access,
                                    const OpenOptions& options = {});
Result<void> create(Env& env, const std::string& path, const CreateOptions& options);

class Qcow2Image final : public Image {
 public:
  Qcow2Image(Env& env, std::string path, Access access, const OpenOptions& options);
  ~Qcow2Image() override;

  Result<void> open();

  const ImageInfo& info() const override { return info_; }
  std::vector<File*> data_files() override;
  Result<Mapping> map(uint64_t offset, uint64_t length) override;
  Result<void> read_compressed(uint64_t offset, std::span<uint8_t> out) override;
  Result<WriteTarget> prepare_write(uint64_t offset, uint64_t length) override;
  Result<void> write_done(uint64_t token, bool ok) override;
  Result<uint64_t> adopt_write(uint64_t offset, uint64_t length, unsigned file,
                               uint64_t host_offset) override;
  Result<std::pair<uint64_t, uint64_t>> adopt_discard(uint64_t offset, uint64_t length) override;
  Result<void> write_zeroes(uint64_t offset, uint64_t length, bool may_unmap) override;
  Result<void> discard(uint64_t offset, uint64_t length) override;
  Result<void> commit() override;
  Result<CheckReport> check(Repair repair) override;
  void set_write_block(uint64_t bytes) override;

 private:
  // One unit (cluster, or subcluster with extended L2) as map() sees it.
  struct Unit {
    MapKind kind = MapKind::Unallocated;
    uint64_t host = 0;  // Data: host offset of the asked position
    bool writable = false;
    uint64_t end = 0;  // guest offset where this description stops
  };
  // A cluster with allocations in flight (see the top of this file).
  struct PendingPart {
    uint64_t token = 0;
    uint32_t mask = 0;  // subclusters (bit 0 only without extended L2)
  };
  struct PendingCluster {
    uint64_t host = 0;      // cluster-aligned host offset
    bool new_host = false;  // allocated for this write: free it if every part fails
    bool applied = false;   // some part reached the L2 entry
    std::vector<PendingPart> parts;
    uint32_t mask() const;
  };
  struct TokenRecord {
    uint64_t first_cluster = 0;
    uint64_t clusters = 0;  // 0: an in-place write, nothing to record
  };
  // How a write would treat one cluster.
  enum class WriteClass { InPlace, Join, Existing, New };
  struct WriteUnit {
    WriteClass cls = WriteClass::New;
    uint64_t host = 0;           // host offset of the unit start (not for New)
    bool whole_cluster = false;  // New: the whole cluster must be rewritten
  };
  struct L2Slot {
    uint8_t* table = nullptr;  // nullptr: no L2 table (L1 entry is 0)
    uint64_t table_offset = 0;
    uint64_t index = 0;
    uint64_t l1_entry = 0;
  };

  // --- qcow2_image.cc ---
  Result<void> load_metadata();
  Result<void> open_data_file();
  void fill_info();
  void build_reserved_ranges();
  bool reserved(uint64_t cluster) const;
  Error corrupt(const std::string& what) const;
  Result<L2Slot> l2_slot(uint64_t guest_cluster);
  uint64_t l2_entry(const L2Slot& s) const;
  uint64_t l2_bitmap(const L2Slot& s) const;
  void set_l2(const L2Slot& s, uint64_t entry, uint64_t bitmap);
  Result<Unit> describe(uint64_t pos, unsigned& tables_loaded);
  Result<uint64_t> data_host(uint64_t entry, const L2Slot& s) const;
  Result<void> decompress(uint64_t entry, uint64_t guest_cluster);

  // --- write_path.cc ---
  Result<void> check_writable();
  Result<WriteUnit> classify(uint64_t pos);
  Result<WriteTarget> prepare_new(uint64_t start, uint64_t end, const WriteUnit& first);
  Result<void> apply_part(uint64_t cluster, PendingCluster& pc, uint32_t mask);
  void free_cluster_entry(uint64_t entry, bool release_space);
  Result<void> check_write_host(uint64_t host, uint64_t guest_cluster) const;
  Result<void> check_not_pending(uint64_t first_cluster, uint64_t last_cluster);
  Result<void> zero_cluster(uint64_t cluster, uint32_t mask, bool may_unmap);
  uint32_t unit_mask(uint64_t from, uint64_t to, uint64_t cluster) const;
  uint32_t full_mask(uint64_t cluster) const;

  // --- write_block.cc ---
  bool groups_clusters() const;
  // The write block around start, moved to a fresh contiguous run when its
  // clusters are not already one (nullopt: they are, write in place).
  Result<std::optional<WriteTarget>> prepare_block(uint64_t start);

  // --- adopt.cc ---
  // One guest cluster of an adoption, checked and not yet recorded.
  struct AdoptPlan {
    uint64_t cluster = 0;
    uint64_t host = 0;      // cluster-aligned host offset
    bool new_host = false;  // a cluster the dead process allocated
    uint32_t mask = 0;
  };
  Result<void> check_adopt_shape(uint64_t offset, uint64_t length, unsigned file,
                                 uint64_t host_offset) const;
  Result<AdoptPlan> plan_adoption(uint64_t cluster, uint64_t host, uint64_t offset, uint64_t end);
  Result<void> check_host_free(uint64_t host_cluster);
  void record_adoption(const std::vector<AdoptPlan>& plans, uint64_t token);
  // discard()'s metadata change for guest clusters [c0, c1].
  Result<void> discard_clusters(uint64_t c0, uint64_t c1);
  // Ends the adoption phase: the deferred refcounts and L2 tables.
  Result<void> end_adoption();
  bool adopt_claimed(uint64_t host_cluster) const { return adopt_claims_.count(host_cluster); }

  // --- commit.cc ---
  Result<uint64_t> ensure_l2(uint64_t l1_index);
  Result<void> prepare_header_for_write();
  Result<void> write_header_u64(unsigned field_offset, uint64_t value);
  Result<void> do_commit();
  Result<void> after_operation();
  Result<void> fail_writes(Error e);

  // --- check.cc / rebuild.cc ---
  class Checker;
  Result<void> rebuild_refcounts(const std::vector<uint32_t>& refs, CheckReport& report);
  Result<void> reload_refcounts();
  // References to every host cluster of the file, counted as check() does.
  Result<std::vector<uint32_t>> count_references();

  Env& env_;
  std::string path_;
  Access access_;
  OpenOptions options_;
  std::unique_ptr<File> file_;
  std::unique_ptr<File> data_file_;
  Header header_;
  Geometry g_;
  ImageInfo info_;
  uint64_t virtual_size_ = 0;
  SnapshotTable snapshots_;
  std::vector<Bitmap> bitmaps_;
  std::vector<std::pair<uint64_t, uint64_t>> reserved_;  // sorted cluster ranges [a, b)
  std::vector<uint64_t> l1_;
  std::set<uint64_t> dirty_l1_;
  std::unique_ptr<TableCache> l2_cache_;
  std::unique_ptr<Refcounts> refcounts_;
  std::map<uint64_t, PendingCluster> pending_;
  std::unordered_map<uint64_t, TokenRecord> tokens_;
  uint64_t next_token_ = 1;
  uint64_t write_block_ = 0;   // set_write_block: the caller's block, 0 = none
  bool header_ready_ = false;  // unknown autoclear bits cleared
  // Nothing but adoptions changed the image since open or the last commit
  // that left nothing pending: adopt_write is allowed.
  bool adopting_ = true;
  std::set<uint64_t> adopt_claims_;  // host clusters adopted as new, refcount not yet set
  // Guest clusters a dead process discarded after its last commit
  // (adopt_discard): they adopt like unallocated ones and are discarded in
  // the metadata by end_adoption().
  std::set<uint64_t> adopt_discarded_;
  // While adopting: references per host cluster (a refcount without one is
  // an allocation of the dead process that an earlier commit made durable).
  std::optional<std::vector<uint32_t>> adopt_refs_;
  bool corrupt_ = false;  // corrupt bit: repair only
  std::optional<Error> failed_;
  // The last decompressed cluster (guest cluster index and L2 entry).
  std::optional<std::pair<uint64_t, uint64_t>> decompressed_key_;
  uint64_t last_table_ = 0;  // map(): the L2 table the previous unit came from
  std::vector<uint8_t> decompressed_;
};

}  // namespace dmu::formats::qcow2
