// check(): like `qemu-img check` for qcow2.  References to every host
// cluster are counted by walking the header, the active and snapshot L1/L2
// tables, the snapshot table, the refcount structures and the bitmaps, and
// compared with the stored refcounts: stored < counted is a corruption,
// stored > counted a leak.  L1/L2 entries are checked on the way (alignment,
// reserved bits, subcluster bitmaps, references past the end of the file,
// COPIED flags).  Repair::Leaks lowers leaked refcounts; Repair::All also
// raises refcounts that are too small, rebuilds refcount structures that are
// themselves broken (rebuild.cc), fixes COPIED flags and misaligned
// preallocated zero clusters, and clears the dirty and corrupt bits once the
// image is clean.  Messages follow qemu-img's wording.
#include <algorithm>
#include <cstring>

#include "common/checked.h"
#include "common/endian.h"
#include "formats/qcow2/qcow2_image.h"

namespace dmu::formats::qcow2 {
namespace {

// In-memory reference counts cost 4 bytes per host cluster.
constexpr uint64_t kMaxCheckedClusters = uint64_t(1) << 26;
constexpr uint64_t kBitmapEntryOffsetMask = 0x00fffffffffffe00ull;
constexpr uint64_t kBitmapEntryReservedMask = 0xff000000000001feull;

}  // namespace

class Qcow2Image::Checker {
 public:
  Checker(Qcow2Image& im, Repair repair, CheckReport& r)
      : im_(im), g_(im.g_), repair_(repair), r_(r) {}

  Result<void> run();
  const std::vector<uint32_t>& refs() const { return refs_; }
  // The references alone (nothing compared or repaired).
  Result<std::vector<uint32_t>> count() {
    DMU_ASSIGN_OR_RETURN(file_size_, im_.file_->size());
    const uint64_t nb = g_.clusters_for(file_size_);
    if (nb > kMaxCheckedClusters)
      return fail(EFBIG, im_.path_ + ": too many clusters to count references in memory");
    refs_.assign(nb, 0);
    DMU_TRY(calculate());
    return refs_;
  }

 private:
  void say(std::string line) { r_.messages.push_back(std::move(line)); }
  // Repairs never write metadata that lies past the end of the file.
  bool within_file(uint64_t off) const {
    return (off >> g_.cluster_bits) < g_.clusters_for(file_size_);
  }
  const char* fixing(bool fix) const { return fix ? "Repairing" : "ERROR"; }
  Result<void> calculate();
  void inc(uint64_t offset, uint64_t size);
  Result<void> walk_l1(uint64_t l1_offset, uint32_t l1_size, bool active);
  Result<void> walk_l2(uint64_t l2_offset, bool active);
  Result<void> walk_bitmaps();
  void check_refblocks();
  Result<void> compare(bool fix);
  Result<void> check_copied();
  Result<void> write_entry(uint64_t table_offset, uint64_t index, uint64_t entry, uint64_t bitmap);

  Qcow2Image& im_;
  const Geometry& g_;
  Repair repair_;
  CheckReport& r_;
  uint64_t file_size_ = 0;
  std::vector<uint32_t> refs_;
  bool rebuild_ = false;
  uint64_t highest_ = 0;
};

void Qcow2Image::Checker::inc(uint64_t offset, uint64_t size) {
  if (size == 0) return;
  auto end = checked_add(offset, size);
  if (!end || (*end > file_size_ && *end - file_size_ >= g_.cluster_size)) {
    say("ERROR: counting reference for region exceeding the end of the file by one cluster "
        "or more: offset " +
        hex(offset) + " size " + hex(size));
    ++r_.corruptions;
    return;
  }
  for (uint64_t k = offset >> g_.cluster_bits; k <= (*end - 1) >> g_.cluster_bits; ++k) {
    if (k >= refs_.size()) refs_.resize(k + 1, 0);  // bounded: within a cluster of EOF
    if (refs_[k] >= g_.refcount_max || refs_[k] == UINT32_MAX) {
      say("ERROR: overflow cluster offset=" + hex(k << g_.cluster_bits));
      ++r_.corruptions;
      continue;
    }
    ++refs_[k];
  }
}

Result<void> Qcow2Image::Checker::write_entry(uint64_t table_offset, uint64_t index, uint64_t entry,
                                              uint64_t bitmap) {
  uint8_t raw[16];
  store_be64(raw, entry);
  store_be64(raw + 8, bitmap);
  uint64_t off = table_offset + index * g_.l2_entry_bytes;
  if (!within_file(off)) return fail(EIO, "L2 table at " + hex(table_offset) + " is past EOF");
  DMU_TRY(im_.file_->write(off, std::span<const uint8_t>(raw, g_.l2_entry_bytes)));
  return im_.file_->sync();
}

Result<void> Qcow2Image::Checker::walk_l2(uint64_t l2_offset, bool active) {
  std::vector<uint8_t> t(g_.cluster_size);
  if (auto rd = read_padded(*im_.file_, l2_offset, t); !rd) {
    say("ERROR: I/O error in check_refcounts_l2: " + rd.error().message);
    ++r_.check_errors;
    return {};
  }
  const bool data_file = im_.header_.has_data_file();
  uint64_t next_contiguous = 0;
  for (uint64_t i = 0; i < g_.l2_entries; ++i) {
    const uint64_t entry = load_be64(&t[i * g_.l2_entry_bytes]);
    const uint64_t bitmap = g_.extended_l2 ? load_be64(&t[i * g_.l2_entry_bytes + 8]) : 0;
    const ClusterType type = cluster_type(g_, entry, data_file);
    if (type != ClusterType::Compressed && (entry & kL2StdReservedMask)) {
      say("ERROR found l2 entry with reserved bits set: " + hex(entry));
      ++r_.corruptions;
    }
    switch (type) {
      case ClusterType::Compressed: {
        if (entry & kOflagCopied) {
          say("ERROR: coffset=" + hex(entry & g_.compressed_offset_mask) +
              ": copied flag must never be set for compressed clusters");
          ++r_.corruptions;
        }
        if (data_file) {
          say("ERROR compressed cluster " + std::to_string(i) +
              " with data file, entry=" + hex(entry));
          ++r_.corruptions;
          break;
        }
        if (bitmap) {
          say("ERROR compressed cluster " + std::to_string(i) +
              " with non-zero subcluster allocation bitmap, entry=" + hex(entry));
          ++r_.corruptions;
          break;
        }
        CompressedExtent e = compressed_extent(g_, entry & ~kOflagCopied);
        inc(e.offset, e.size);
        if (active) {
          ++r_.allocated_clusters;
          ++r_.compressed_clusters;
          ++r_.fragmented_clusters;  // compressed clusters are fragmented by nature
        }
        break;
      }
      case ClusterType::ZeroAlloc:
      case ClusterType::Normal: {
        const uint64_t off = entry & kL2OffsetMask;
        if ((bitmap >> 32) & bitmap & kBitmapAllAlloc) {
          say("ERROR offset=" + hex(off) +
              ": Allocated cluster has corrupted subcluster allocation bitmap");
          ++r_.corruptions;
        }
        if (g_.offset_in_cluster(off)) {
          ++r_.corruptions;
          bool has_data = g_.extended_l2 ? (bitmap & kBitmapAllAlloc) : !(entry & kOflagZero);
          if (!has_data) {
            bool fix = repair_ == Repair::All;
            say(std::string(fixing(fix)) + " offset=" + hex(off) +
                ": Preallocated cluster is not properly aligned; L2 entry corrupted.");
            if (fix) {
              uint64_t ne = g_.extended_l2 ? 0 : kOflagZero;
              uint64_t nb = g_.extended_l2 ? kBitmapAllZero : 0;
              if (auto w = write_entry(l2_offset, i, ne, nb); !w) {
                say("ERROR: could not repair L2 entry: " + w.error().message);
                ++r_.check_errors;
              } else {
                --r_.corruptions;
                ++r_.corruptions_fixed;
                continue;
              }
            }
          } else {
            say("ERROR offset=" + hex(off) +
                ": Data cluster is not properly aligned; L2 entry corrupted.");
          }
        }
        if (active) {
          ++r_.allocated_clusters;
          if (next_contiguous && off != next_contiguous) ++r_.fragmented_clusters;
          next_contiguous = off + g_.cluster_size;
        }
        if (!data_file) inc(off, g_.cluster_size);
        break;
      }
      case ClusterType::ZeroPlain:
        break;
      case ClusterType::Unallocated:
        if (g_.extended_l2 && (bitmap & kBitmapAllAlloc)) {
          say("ERROR: Unallocated cluster has non-zero subcluster allocation map");
          ++r_.corruptions;
        }
        break;
    }
  }
  return {};
}

Result<void> Qcow2Image::Checker::walk_l1(uint64_t l1_offset, uint32_t l1_size, bool active) {
  if (!l1_size) return {};
  inc(l1_offset, uint64_t(l1_size) * 8);
  std::vector<uint8_t> raw(uint64_t(l1_size) * 8);
  if (auto rd = read_padded(*im_.file_, l1_offset, raw); !rd) {
    say("ERROR: I/O error in check_refcounts_l1: " + rd.error().message);
    ++r_.check_errors;
    return {};
  }
  for (uint32_t i = 0; i < l1_size; ++i) {
    uint64_t e = load_be64(&raw[uint64_t(i) * 8]);
    if (!e) continue;
    if (e & kL1ReservedMask) {
      say("ERROR found L1 entry with reserved bits set: " + hex(e));
      ++r_.corruptions;
    }
    uint64_t l2 = e & kL1OffsetMask;
    if (!l2) continue;
    inc(l2, g_.cluster_size);
    if (g_.offset_in_cluster(l2)) {
      say("ERROR l2_offset=" + hex(l2) + ": Table is not cluster aligned; L1 entry corrupted");
      ++r_.corruptions;
    }
    DMU_TRY(walk_l2(l2, active));
  }
  return {};
}

Result<void> Qcow2Image::Checker::walk_bitmaps() {
  const Header& h = im_.header_;
  if (!h.bitmaps_consistent()) return {};
  inc(h.bitmaps->directory_offset, h.bitmaps->directory_size);
  for (const Bitmap& b : im_.bitmaps_) {
    inc(b.table_offset, uint64_t(b.table_size) * 8);
    std::vector<uint8_t> raw(uint64_t(b.table_size) * 8);
    if (auto rd = read_padded(*im_.file_, b.table_offset, raw); !rd) {
      say("ERROR: could not read the table of bitmap '" + b.name + "': " + rd.error().message);
      ++r_.check_errors;
      continue;
    }
    for (uint32_t i = 0; i < b.table_size; ++i) {
      uint64_t e = load_be64(&raw[uint64_t(i) * 8]);
      uint64_t off = e & kBitmapEntryOffsetMask;
      if ((e & kBitmapEntryReservedMask) || (off && (e & 1))) {
        say("ERROR bitmap '" + b.name + "' table entry " + std::to_string(i) +
            " has reserved bits set: " + hex(e));
        ++r_.corruptions;
      }
      if (!off) continue;
      if (g_.offset_in_cluster(off)) {
        say("ERROR bitmap '" + b.name + "' data cluster " + hex(off) + " is not aligned");
        ++r_.corruptions;
      }
      inc(off, g_.cluster_size);
    }
  }
  return {};
}

void Qcow2Image::Checker::check_refblocks() {
  const uint64_t nb_clusters = g_.clusters_for(file_size_);
  const auto& table = im_.refcounts_->table();
  for (uint64_t i = 0; i < table.size(); ++i) {
    uint64_t e = table[i];
    uint64_t off = e & kRefTableOffsetMask;
    if (e & kRefTableReservedMask) {
      say("ERROR refcount table entry " + std::to_string(i) + " has reserved bits set");
      ++r_.corruptions;
      rebuild_ = true;
      continue;
    }
    if (g_.offset_in_cluster(off)) {
      say("ERROR refcount block " + std::to_string(i) +
          " is not cluster aligned; refcount table entry corrupted");
      ++r_.corruptions;
      rebuild_ = true;
      continue;
    }
    if (!off) continue;
    uint64_t cluster = off >> g_.cluster_bits;
    if (cluster >= nb_clusters) {
      say(std::string(fixing(repair_ == Repair::All)) + " refcount block " + std::to_string(i) +
          " is outside image");
      ++r_.corruptions;
      rebuild_ = true;
      continue;
    }
    inc(off, g_.cluster_size);
    if (refs_[cluster] != 1) {
      say("ERROR refcount block " + std::to_string(i) +
          " refcount=" + std::to_string(refs_[cluster]));
      ++r_.corruptions;
      rebuild_ = true;
    }
  }
}

Result<void> Qcow2Image::Checker::calculate() {
  const Header& h = im_.header_;
  inc(0, g_.cluster_size);
  DMU_TRY(walk_l1(h.l1_table_offset, h.l1_size, true));
  for (const Snapshot& s : im_.snapshots_.snapshots)
    DMU_TRY(walk_l1(s.l1_table_offset, s.l1_size, false));
  if (h.nb_snapshots) inc(h.snapshots_offset, im_.snapshots_.bytes);
  inc(im_.refcounts_->table_offset(), uint64_t(im_.refcounts_->table_clusters())
                                          << g_.cluster_bits);
  DMU_TRY(walk_bitmaps());
  check_refblocks();
  return {};
}

Result<void> Qcow2Image::Checker::compare(bool fix) {
  highest_ = 0;
  for (uint64_t i = 0; i < refs_.size(); ++i) {
    auto stored_r = im_.refcounts_->get(i);
    if (!stored_r) {
      say("Can't get refcount for cluster " + std::to_string(i) + ": " + stored_r.error().message);
      ++r_.check_errors;
      continue;
    }
    const uint64_t stored = *stored_r, counted = refs_[i];
    if (stored || counted) highest_ = i;
    if (stored == counted) continue;
    bool fixable = false;
    uint64_t* fixed = nullptr;
    if (stored == 0) {
      rebuild_ = true;  // the cluster may have no refcount block at all
    } else if (stored > counted && fix && repair_ != Repair::None) {
      fixable = true;
      fixed = &r_.leaks_fixed;
    } else if (stored < counted && fix && repair_ == Repair::All) {
      fixable = true;
      fixed = &r_.corruptions_fixed;
    }
    say(std::string(fixable            ? "Repairing"
                    : stored < counted ? "ERROR"
                                       : "Leaked") +
        " cluster " + std::to_string(i) + " refcount=" + std::to_string(stored) +
        " reference=" + std::to_string(counted));
    if (fixable) {
      if (auto s = im_.refcounts_->set(i, counted); s) {
        ++*fixed;
        continue;
      }
    }
    if (stored < counted)
      ++r_.corruptions;
    else
      ++r_.leaks;
  }
  if (fix) DMU_TRY(im_.refcounts_->flush());
  return {};
}

Result<void> Qcow2Image::Checker::check_copied() {
  bool fix = repair_ == Repair::All ||
             (repair_ == Repair::Leaks && !r_.check_errors && !r_.corruptions && !r_.leaks);
  const bool data_file = im_.header_.has_data_file();
  bool l1_changed = false;
  std::vector<uint8_t> t(g_.cluster_size);
  for (uint64_t i = 0; i < im_.l1_.size(); ++i) {
    const uint64_t e = im_.l1_[i];
    const uint64_t l2 = e & kL1OffsetMask;
    if (!l2) continue;
    auto rc = im_.refcounts_->get(l2 >> g_.cluster_bits);
    if (!rc) continue;  // reported by compare()
    if ((*rc == 1) != bool(e & kOflagCopied)) {
      say(std::string(fixing(fix)) + " OFLAG_COPIED L2 cluster: l1_index=" + std::to_string(i) +
          " l1_entry=" + hex(e) + " refcount=" + std::to_string(*rc));
      if (fix) {
        im_.l1_[i] = *rc == 1 ? e | kOflagCopied : e & ~kOflagCopied;
        im_.dirty_l1_.insert(i);
        l1_changed = true;
        ++r_.corruptions_fixed;
      } else {
        ++r_.corruptions;
      }
    }
    if (g_.offset_in_cluster(l2)) continue;
    if (auto rd = read_padded(*im_.file_, l2, t); !rd) {
      say("ERROR: Could not read L2 table: " + rd.error().message);
      ++r_.check_errors;
      continue;
    }
    bool l2_changed = false;
    for (uint64_t j = 0; j < g_.l2_entries; ++j) {
      uint8_t* p = &t[j * g_.l2_entry_bytes];
      const uint64_t entry = load_be64(p);
      const ClusterType type = cluster_type(g_, entry, data_file);
      if (type != ClusterType::Normal && type != ClusterType::ZeroAlloc) continue;
      uint64_t refcount = 1;  // data file clusters have an implicit refcount of 1
      if (!data_file) {
        auto r = im_.refcounts_->get((entry & kL2OffsetMask) >> g_.cluster_bits);
        if (!r) continue;
        refcount = *r;
      }
      if ((refcount == 1) == bool(entry & kOflagCopied)) continue;
      say(std::string(fixing(fix)) + " OFLAG_COPIED data cluster: l2_entry=" + hex(entry) +
          " refcount=" + std::to_string(refcount));
      if (fix) {
        store_be64(p, refcount == 1 ? entry | kOflagCopied : entry & ~kOflagCopied);
        l2_changed = true;
        ++r_.corruptions_fixed;
      } else {
        ++r_.corruptions;
      }
    }
    if (l2_changed) {
      if (im_.reserved(l2 >> g_.cluster_bits) || !within_file(l2)) {
        say("ERROR: Could not write L2 table; metadata overlap check failed");
        ++r_.check_errors;
        continue;
      }
      DMU_TRY(im_.file_->write(l2, t));
      DMU_TRY(im_.file_->sync());
    }
  }
  im_.l2_cache_->clear();
  if (l1_changed) {
    for (uint64_t i : im_.dirty_l1_) {
      if (!within_file(im_.header_.l1_table_offset + i * 8))
        return fail(EIO, "L1 table at " + hex(im_.header_.l1_table_offset) + " is past EOF");
      uint8_t raw[8];
      store_be64(raw, im_.l1_[i]);
      DMU_TRY(im_.file_->write(im_.header_.l1_table_offset + i * 8, raw));
    }
    im_.dirty_l1_.clear();
    DMU_TRY(im_.file_->sync());
  }
  return {};
}

Result<void> Qcow2Image::Checker::run() {
  DMU_ASSIGN_OR_RETURN(file_size_, im_.file_->size());
  const uint64_t nb = g_.clusters_for(file_size_);
  if (nb > kMaxCheckedClusters) {
    say("ERROR: image file of " + std::to_string(file_size_) +
        " bytes has too many clusters to "
        "check in memory");
    ++r_.check_errors;
    return {};
  }
  r_.total_clusters = g_.clusters_for(im_.virtual_size_);
  refs_.assign(nb, 0);
  DMU_TRY(calculate());
  const CheckReport before = r_;
  DMU_TRY(compare(false));
  if (rebuild_ && repair_ == Repair::All) {
    const CheckReport old = r_;
    say("Rebuilding refcount structure");
    DMU_TRY(im_.rebuild_refcounts(refs_, r_));
    // The new structures are counted now; the old ones are leaked.
    r_ = before;
    r_.corruptions = r_.leaks = 0;
    r_.allocated_clusters = r_.fragmented_clusters = r_.compressed_clusters = 0;
    rebuild_ = false;
    DMU_ASSIGN_OR_RETURN(file_size_, im_.file_->size());
    refs_.assign(g_.clusters_for(file_size_), 0);
    DMU_TRY(calculate());
    CheckReport saved = r_;
    r_.leaks = r_.corruptions = 0;
    DMU_TRY(compare(true));
    if (rebuild_) say("ERROR rebuilt refcount structure is still broken");
    uint64_t fresh_leaks = r_.leaks;
    saved.messages = r_.messages;
    r_ = saved;
    if (r_.corruptions < old.corruptions) r_.corruptions_fixed += old.corruptions - r_.corruptions;
    if (r_.leaks < old.leaks) r_.leaks_fixed += old.leaks - r_.leaks;
    r_.leaks += fresh_leaks;
  } else if (repair_ != Repair::None) {
    if (rebuild_) {
      say("ERROR need to rebuild refcount structures");
      ++r_.check_errors;
    } else if (r_.leaks || r_.corruptions) {
      auto messages = r_.messages;
      r_ = before;
      r_.messages = messages;
      DMU_TRY(compare(true));
    }
  }
  // COPIED flags are judged against the stored refcounts; not worth fixing
  // while those still need a rebuild that did not happen.
  if (!(rebuild_ && repair_ != Repair::None)) DMU_TRY(check_copied());
  r_.image_end_offset = (highest_ + 1) << g_.cluster_bits;
  return {};
}

Result<std::vector<uint32_t>> Qcow2Image::count_references() {
  CheckReport ignored;
  Checker checker(*this, Repair::None, ignored);
  return checker.count();
}

Result<CheckReport> Qcow2Image::check(Repair repair) {
  if (repair != Repair::None && access_ != Access::ReadWrite)
    return fail(EROFS, path_ + ": repairing needs the image opened read-write");
  if (!tokens_.empty()) return fail(EBUSY, path_ + ": cannot check while writes are in flight");
  if (access_ == Access::ReadWrite) DMU_TRY(commit());
  CheckReport report;
  {
    Checker checker(*this, repair, report);
    if (auto r = checker.run(); !r) {
      report.messages.push_back("ERROR: " + r.error().message);
      ++report.check_errors;
      if (repair != Repair::None) return fail(r.error());
    }
  }
  if (repair != Repair::None && (report.leaks_fixed || report.corruptions_fixed)) {
    // Like qemu-img: report what is left after the repair.
    CheckReport again;
    Checker checker(*this, Repair::None, again);
    DMU_TRY(checker.run());
    again.leaks_fixed = report.leaks_fixed;
    again.corruptions_fixed = report.corruptions_fixed;
    report.messages.insert(report.messages.end(), again.messages.begin(), again.messages.end());
    again.messages = std::move(report.messages);
    report = std::move(again);
  }
  if (repair == Repair::All && !report.corruptions && !report.check_errors) {
    uint64_t clean = header_.incompatible & ~(kIncompatDirty | kIncompatCorrupt);
    if (clean != header_.incompatible) {
      DMU_TRY(write_header_u64(field::kIncompatibleFeatures, clean));
      header_.incompatible = clean;
      corrupt_ = false;
      fill_info();
    }
  }
  return report;
}

}  // namespace dmu::formats::qcow2
