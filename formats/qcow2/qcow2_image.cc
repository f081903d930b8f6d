// Opening a qcow2 image (header, feature policy, tables), info() and the
// read side: map() walks L1/L2 and answers with the longest run that has one
// description; read_compressed() decodes compressed clusters.
#include "formats/qcow2/qcow2_image.h"

#include <algorithm>
#include <cstring>

#include "common/checked.h"
#include "common/endian.h"
#include "fileio/path.h"
#include "formats/qcow2/compressed.h"

namespace dmu::formats::qcow2 {
namespace {

// How many L2 tables one map() call may walk before answering with the
// prefix it has (keeps a single call cheap on huge sparse images).
constexpr unsigned kMaxTablesPerMap = 64;

}  // namespace

// As QEMU's qcow2_probe: the magic and any version from 2 up.  A version
// this engine cannot read must be probed as qcow2 and refused by open(),
// never fall through to raw: a raw probe would hand the metadata out as
// guest data and let a guest that writes such a header reach the files it
// names once the image is probed again.
int probe(std::span<const uint8_t> head, const std::string&) {
  if (head.size() < 8 || load_be32(head.data()) != kMagic) return 0;
  return load_be32(head.data() + 4) >= 2 ? 100 : 0;
}

Result<std::unique_ptr<Image>> open(Env& env, const std::string& path, Access access,
                                    const OpenOptions& options) {
  auto image = std::make_unique<Qcow2Image>(env, path, access, options);
  DMU_TRY(image->open());
  return std::unique_ptr<Image>(std::move(image));
}

Qcow2Image::Qcow2Image(Env& env, std::string path, Access access, const OpenOptions& options)
    : env_(env), path_(std::move(path)), access_(access), options_(options) {}

uint32_t Qcow2Image::PendingCluster::mask() const {
  uint32_t m = 0;
  for (const PendingPart& p : parts) m |= p.mask;
  return m;
}

Error Qcow2Image::corrupt(const std::string& what) const {
  return Error{EIO, path_ + ": qcow2 image is corrupt: " + what + " (run check with repair)"};
}

std::vector<File*> Qcow2Image::data_files() {
  return {data_file_ ? data_file_.get() : file_.get()};
}

Result<void> Qcow2Image::open() {
  OpenMode mode = access_ == Access::ReadWrite ? OpenMode::ReadWrite : OpenMode::ReadOnly;
  DMU_ASSIGN_OR_RETURN(file_, env_.open(path_, mode));
  DMU_ASSIGN_OR_RETURN(uint64_t file_size, file_->size());
  std::vector<uint8_t> head(kHeaderProbeBytes);
  DMU_TRY(read_padded(*file_, 0, head));
  DMU_ASSIGN_OR_RETURN(unsigned cluster_bits, peek_cluster_bits(head, path_));
  std::vector<uint8_t> first(uint64_t(1) << cluster_bits);
  DMU_TRY(read_padded(*file_, 0, first));
  DMU_ASSIGN_OR_RETURN(header_, parse_header(first, file_size, path_));
  DMU_TRY(check_features(header_, path_));
  g_ = header_.geometry();
  virtual_size_ = header_.size & ~(kSectorSize - 1);  // QEMU counts whole sectors
  corrupt_ = header_.incompatible & kIncompatCorrupt;
  if (access_ == Access::ReadWrite && header_.bitmaps_consistent())
    return fail(ENOTSUP, path_ +
                             ": image has persistent dirty bitmaps, which this engine "
                             "cannot keep up to date; open it read-only or remove them "
                             "(qemu-img bitmap --remove)");
  DMU_TRY(load_metadata());
  if (header_.has_data_file()) DMU_TRY(open_data_file());
  fill_info();
  if (access_ == Access::ReadWrite && (header_.incompatible & kIncompatDirty) && !corrupt_) {
    // Lazy refcounts left the refcounts stale: rebuild them before any
    // allocation trusts them, then mark the image clean.
    DMU_ASSIGN_OR_RETURN(CheckReport report, check(Repair::All));
    if (report.corruptions)
      return fail(EIO, path_ + ": image is dirty and repairing its refcounts left " +
                           std::to_string(report.corruptions) + " corruption(s)");
  }
  return {};
}

Result<void> Qcow2Image::load_metadata() {
  // Active L1 table.
  l1_.assign(header_.l1_size, 0);
  if (header_.l1_size) {
    std::vector<uint8_t> raw(uint64_t(header_.l1_size) * 8);
    if (auto r = read_padded(*file_, header_.l1_table_offset, raw); !r)
      return fail(std::move(r).error().context("reading L1 table"));
    for (size_t i = 0; i < l1_.size(); ++i) l1_[i] = load_be64(&raw[i * 8]);
  }
  DMU_ASSIGN_OR_RETURN(snapshots_, read_snapshot_table(*file_, header_, path_));
  if (header_.bitmaps_consistent()) {
    DMU_ASSIGN_OR_RETURN(bitmaps_, read_bitmap_directory(*file_, header_, path_));
  }
  build_reserved_ranges();

  auto tables = [&](uint64_t bytes) {
    return size_t(std::max<uint64_t>(bytes >> g_.cluster_bits, 4));
  };
  l2_cache_ = std::make_unique<TableCache>(*file_, g_.cluster_size, tables(options_.l2_cache_bytes),
                                           "L2 table");
  refcounts_ =
      std::make_unique<Refcounts>(*file_, g_, path_, tables(options_.refcount_cache_bytes));
  // Clusters claimed by adoptions are not free either until end_adoption()
  // sets their refcounts (their refcount blocks must not land on them).
  refcounts_->set_reserved([this](uint64_t c) { return reserved(c) || adopt_claimed(c); });
  // Write order: an L2 table reaches the disk only after the refcounts of
  // everything it points at (QEMU's cache dependency).
  l2_cache_->set_dependency([this] { return refcounts_->flush(); });
  l2_cache_->set_write_guard([this](uint64_t off) -> Result<void> {
    if (reserved(off >> g_.cluster_bits))
      return fail(corrupt("L2 table at " + hex(off) + " overlaps other metadata"));
    if ((off >> g_.cluster_bits) >= refcounts_->end_cluster())
      return fail(corrupt("L2 table at " + hex(off) + " lies beyond the end of the image file"));
    return {};
  });
  return reload_refcounts();
}

Result<void> Qcow2Image::reload_refcounts() {
  DMU_ASSIGN_OR_RETURN(uint64_t file_size, file_->size());
  return refcounts_->load(header_.refcount_table_offset, header_.refcount_table_clusters,
                          file_size);
}

void Qcow2Image::build_reserved_ranges() {
  reserved_.clear();
  auto add = [&](uint64_t offset, uint64_t bytes) {
    if (!bytes) return;
    uint64_t first = offset >> g_.cluster_bits;
    uint64_t last = (offset + bytes - 1) >> g_.cluster_bits;
    reserved_.emplace_back(first, last + 1);
  };
  add(0, g_.cluster_size);
  add(header_.l1_table_offset, uint64_t(header_.l1_size) * 8);
  add(header_.snapshots_offset, snapshots_.bytes);
  for (const Snapshot& s : snapshots_.snapshots) add(s.l1_table_offset, uint64_t(s.l1_size) * 8);
  if (header_.bitmaps) add(header_.bitmaps->directory_offset, header_.bitmaps->directory_size);
  // Merge into disjoint ranges so a lookup needs one binary search.
  std::sort(reserved_.begin(), reserved_.end());
  std::vector<std::pair<uint64_t, uint64_t>> merged;
  for (const auto& r : reserved_) {
    if (!merged.empty() && r.first <= merged.back().second)
      merged.back().second = std::max(merged.back().second, r.second);
    else
      merged.push_back(r);
  }
  reserved_ = std::move(merged);
}

bool Qcow2Image::reserved(uint64_t c) const {
  if (refcounts_) {
    uint64_t t = refcounts_->table_offset() >> g_.cluster_bits;
    if (c >= t && c < t + refcounts_->table_clusters()) return true;
  }
  // Disjoint sorted ranges: only the last one starting at or before c can
  // hold it.
  auto it = std::upper_bound(reserved_.begin(), reserved_.end(), std::make_pair(c, UINT64_MAX));
  return it != reserved_.begin() && c < std::prev(it)->second;
}

Result<void> Qcow2Image::open_data_file() {
  const std::string& name = *header_.data_file;
  std::string resolved = name;
  // Relative names are looked up beside the image first (like backing
  // files), then relative to the working directory (as QEMU 7 does).
  if (name.front() != '/') {
    std::string beside = directory_prefix(path_) + name;
    if (env_.exists(beside) || !env_.exists(name)) resolved = beside;
  }
  OpenMode mode = access_ == Access::ReadWrite ? OpenMode::ReadWrite : OpenMode::ReadOnly;
  auto f = env_.open(resolved, mode);
  if (!f)
    return fail(f.error().code,
                path_ + ": cannot open external data file '" + name + "': " + f.error().message);
  data_file_ = std::move(*f);
  return {};
}

void Qcow2Image::fill_info() {
  info_.format = "qcow2";
  info_.filename = path_;
  info_.virtual_size = virtual_size_;
  info_.cluster_size = g_.cluster_size;
  info_.granularity = g_.subcluster_size;
  info_.backing_file = header_.backing_file;
  info_.backing_file_format = header_.backing_format;
  info_.dirty = header_.incompatible & kIncompatDirty;
  Qcow2Specific s;
  s.v3 = header_.version >= 3;
  s.zstd = header_.compression_type == CompressionType::Zstd;
  s.refcount_bits = g_.refcount_bits;
  s.lazy_refcounts = header_.compatible & kCompatLazyRefcounts;
  s.corrupt = corrupt_;
  s.extended_l2 = header_.extended_l2();
  if (header_.has_data_file()) {
    s.data_file = *header_.data_file;
    s.data_file_raw = header_.data_file_raw();
  }
  for (const Bitmap& b : bitmaps_)
    s.bitmaps.push_back({b.name, uint64_t(1) << b.granularity_bits, bool(b.flags & kBitmapInUse),
                         bool(b.flags & kBitmapAuto)});
  info_.format_specific = std::move(s);
}

Result<Qcow2Image::L2Slot> Qcow2Image::l2_slot(uint64_t guest_cluster) {
  L2Slot s;
  uint64_t l1i = guest_cluster >> g_.l2_bits;
  if (l1i >= l1_.size())
    return fail(
        corrupt("guest cluster " + std::to_string(guest_cluster) + " lies beyond the L1 table"));
  s.l1_entry = l1_[l1i];
  s.index = guest_cluster & (g_.l2_entries - 1);
  uint64_t off = s.l1_entry & kL1OffsetMask;
  if (!off) return s;
  if (g_.offset_in_cluster(off))
    return fail(
        corrupt("L1 entry " + std::to_string(l1i) + " points at unaligned L2 table " + hex(off)));
  s.table_offset = off;
  DMU_ASSIGN_OR_RETURN(s.table, l2_cache_->get(off));
  return s;
}

uint64_t Qcow2Image::l2_entry(const L2Slot& s) const {
  return load_be64(s.table + s.index * g_.l2_entry_bytes);
}

uint64_t Qcow2Image::l2_bitmap(const L2Slot& s) const {
  return g_.extended_l2 ? load_be64(s.table + s.index * g_.l2_entry_bytes + 8) : 0;
}

void Qcow2Image::set_l2(const L2Slot& s, uint64_t entry, uint64_t bitmap) {
  store_be64(s.table + s.index * g_.l2_entry_bytes, entry);
  if (g_.extended_l2) store_be64(s.table + s.index * g_.l2_entry_bytes + 8, bitmap);
  l2_cache_->mark_dirty(s.table_offset);
}

Result<uint64_t> Qcow2Image::data_host(uint64_t entry, const L2Slot& s) const {
  uint64_t host = entry & kL2OffsetMask;
  if (g_.offset_in_cluster(host))
    return fail(corrupt("L2 entry " + std::to_string(s.index) + " of the table at " +
                        hex(s.table_offset) + " points at unaligned offset " + hex(host)));
  return host;
}

// Describes the unit (subcluster or cluster) holding guest offset pos.
Result<Qcow2Image::Unit> Qcow2Image::describe(uint64_t pos, unsigned& tables_loaded) {
  Unit u;
  const uint64_t c = pos >> g_.cluster_bits;
  const uint64_t in_cluster = g_.offset_in_cluster(pos);
  const unsigned sc = unsigned(in_cluster >> g_.subcluster_bits);
  u.end = (pos | (g_.subcluster_size - 1)) + 1;

  if (!pending_.empty()) {
    auto it = pending_.find(c);
    if (it != pending_.end() && (it->second.mask() & (1u << sc))) {
      u.kind = MapKind::Data;
      u.host = it->second.host + in_cluster;
      u.writable = true;
      return u;
    }
  }
  DMU_ASSIGN_OR_RETURN(L2Slot s, l2_slot(c));
  if (!s.table) {
    // No L2 table: the whole range of this L1 entry is unallocated, up to
    // the next cluster with a write in flight.
    uint64_t l1_end = ((c >> g_.l2_bits) + 1) << g_.l1_entry_shift();
    u.end = l1_end;
    auto next = pending_.upper_bound(c);
    if (next != pending_.end()) u.end = std::min(u.end, next->first << g_.cluster_bits);
    return u;
  }
  if (s.table_offset != last_table_) {
    ++tables_loaded;
    last_table_ = s.table_offset;
  }
  const uint64_t entry = l2_entry(s);
  const uint64_t bitmap = l2_bitmap(s);
  const bool ext = g_.extended_l2;
  const ClusterType type = cluster_type(g_, entry, data_file_ != nullptr);
  if (!ext) u.end = (pos | (g_.cluster_size - 1)) + 1;
  auto where = [&] {
    return "L2 entry " + std::to_string(s.index) + " of the table at " + hex(s.table_offset);
  };
  switch (type) {
    case ClusterType::Compressed:
      if (data_file_) return fail(corrupt(where() + " is compressed in an image with a data file"));
      if (bitmap) return fail(corrupt(where() + " is compressed but has a subcluster bitmap"));
      u.kind = MapKind::Compressed;
      u.end = (pos | (g_.cluster_size - 1)) + 1;
      return u;
    case ClusterType::ZeroPlain:
    case ClusterType::ZeroAlloc:
      if (header_.version < 3) return fail(corrupt(where() + " is a zero cluster in a v2 image"));
      u.kind = MapKind::Zero;
      return u;
    case ClusterType::Unallocated:
      if (ext && (bitmap & kBitmapAllAlloc))
        return fail(corrupt(where() + " is unallocated but has allocated subclusters"));
      u.kind = ext && (bitmap >> 32 & (1u << sc)) ? MapKind::Zero : MapKind::Unallocated;
      return u;
    case ClusterType::Normal:
      break;
  }
  if (ext) {
    if ((bitmap >> 32) & bitmap & kBitmapAllAlloc)
      return fail(corrupt(where() + " has subclusters both allocated and zero"));
    if (bitmap >> 32 & (1u << sc)) {
      u.kind = MapKind::Zero;
      return u;
    }
    if (!(bitmap & (1u << sc))) return u;  // unallocated subcluster
  }
  DMU_ASSIGN_OR_RETURN(uint64_t host, data_host(entry, s));
  if (data_file_ && host != c << g_.cluster_bits)
    return fail(corrupt(where() + " maps guest cluster " + std::to_string(c) +
                        " to data file offset " + hex(host) + ", not its own offset"));
  u.kind = MapKind::Data;
  u.host = host + in_cluster;
  u.writable = data_file_ || ((entry & kOflagCopied) && (s.l1_entry & kOflagCopied));
  return u;
}

Result<Mapping> Qcow2Image::map(uint64_t offset, uint64_t length) {
  if (offset >= virtual_size_ || length == 0)
    return fail(EINVAL, path_ + ": map of [" + std::to_string(offset) + ", +" +
                            std::to_string(length) + ") is outside the virtual disk of " +
                            std::to_string(virtual_size_) + " bytes");
  const uint64_t end = offset + std::min(length, virtual_size_ - offset);
  unsigned tables = 0;
  last_table_ = 0;
  DMU_ASSIGN_OR_RETURN(Unit first, describe(offset, tables));
  Mapping m;
  m.kind = first.kind;
  m.file = 0;
  m.host_offset = first.host;
  m.writable = first.writable;
  uint64_t pos = std::min(first.end, end);
  // Compressed clusters are answered one at a time (read_compressed works
  // per cluster); everything else merges while the description continues.
  while (pos < end && m.kind != MapKind::Compressed && tables < kMaxTablesPerMap) {
    DMU_ASSIGN_OR_RETURN(Unit u, describe(pos, tables));
    if (u.kind != m.kind) break;
    if (m.kind == MapKind::Data &&
        (u.host != m.host_offset + (pos - offset) || u.writable != m.writable))
      break;
    pos = std::min(u.end, end);
  }
  m.length = pos - offset;
  if (m.kind != MapKind::Data) m.writable = false;
  l2_cache_->trim();
  return m;
}

Result<void> Qcow2Image::decompress(uint64_t entry, uint64_t guest_cluster) {
  if (decompressed_key_ && decompressed_key_->first == guest_cluster &&
      decompressed_key_->second == entry)
    return {};
  decompressed_key_.reset();
  CompressedExtent ext = compressed_extent(g_, entry);
  std::vector<uint8_t> in(ext.size);
  DMU_TRY(read_padded(*file_, ext.offset, in));
  decompressed_.resize(g_.cluster_size);
  DMU_TRY(decompress_cluster(header_.compression_type, in, decompressed_,
                             path_ + ": compressed cluster at " + hex(ext.offset) +
                                 " (guest offset " + hex(guest_cluster << g_.cluster_bits) + ")"));
  decompressed_key_ = std::make_pair(guest_cluster, entry);
  return {};
}

Result<void> Qcow2Image::read_compressed(uint64_t offset, std::span<uint8_t> out) {
  if (!range_within(offset, out.size(), virtual_size_))
    return fail(EINVAL, path_ + ": read_compressed of [" + std::to_string(offset) + ", +" +
                            std::to_string(out.size()) + ") is outside the virtual disk");
  uint64_t done = 0;
  // The committed L2 entry is decoded even while a write to the cluster is
  // in flight: the caller fills the new cluster from the old contents.
  while (done < out.size()) {
    uint64_t pos = offset + done;
    uint64_t c = pos >> g_.cluster_bits;
    DMU_ASSIGN_OR_RETURN(L2Slot s, l2_slot(c));
    uint64_t entry = s.table ? l2_entry(s) : 0;
    if (cluster_type(g_, entry, data_file_ != nullptr) != ClusterType::Compressed || data_file_)
      return fail(EINVAL, path_ + ": guest offset " + hex(pos) + " is not a compressed cluster");
    DMU_TRY(decompress(entry, c));
    uint64_t in_cluster = g_.offset_in_cluster(pos);
    uint64_t n = std::min<uint64_t>(out.size() - done, g_.cluster_size - in_cluster);
    std::memcpy(out.data() + done, decompressed_.data() + in_cluster, n);
    done += n;
  }
  l2_cache_->trim();
  return {};
}

}  // namespace dmu::formats::qcow2
