// dmu check for qcow.  QEMU has no check for qcow v1 ("This image format does
// not support checks"), so this defines one in qcow2's terms:
//  - corruptions: an L2 table or a data cluster outside the file, a cluster
//    not sector-aligned, a compressed cluster of size 0, or two users of the
//    same file cluster (tables and clusters are accounted at cluster
//    granularity; compressed clusters may share a file cluster with each
//    other, as QEMU packs them);
//  - leaks: file clusters nothing refers to (qcow never reuses space, so
//    crashes and replaced compressed clusters leave them; they are harmless);
//  - repair (leaks or all): truncates leaked clusters at the end of the file;
//    interior leaks and corruptions cannot be fixed without refcounts.
#include <algorithm>

#include "common/checked.h"
#include "formats/qcow/qcow_image.h"

namespace dmu::formats::qcow {
namespace {

constexpr uint64_t kMaxMessages = 100;

// Which clusters of the file are in use, and by what.
class Usage {
 public:
  explicit Usage(uint64_t units) : meta_(units), compressed_(units) {}
  // Marks [start, start + len) as used by one exclusive owner (header,
  // tables, normal clusters) or by compressed data; false on a conflict.
  bool mark(uint64_t start, uint64_t len, uint64_t unit, bool compressed) {
    bool ok = true;
    uint64_t last = std::min<uint64_t>((start + len - 1) / unit, meta_.size() - 1);
    for (uint64_t u = start / unit; u <= last; ++u) {
      if (meta_[u] || (!compressed && compressed_[u])) ok = false;
      (compressed ? compressed_ : meta_)[u] = true;
    }
    end_ = std::max(end_, start + len);
    return ok;
  }
  bool used(uint64_t u) const { return meta_[u] || compressed_[u]; }
  uint64_t units() const { return meta_.size(); }
  uint64_t end() const { return end_; }

 private:
  std::vector<bool> meta_, compressed_;
  uint64_t end_ = 0;
};

}  // namespace

Result<CheckReport> QcowImage::check(Repair repair) {
  if (repair != Repair::None) DMU_TRY(require_writable("repair"));
  if (!pending_.empty() || !inflight_.empty())
    return fail(EBUSY, info_.filename + ": check with uncommitted writes; commit first");
  CheckReport r;
  const uint64_t cs = cluster_size();
  DMU_ASSIGN_OR_RETURN(uint64_t fsize, file_size(true));
  r.total_clusters = cluster_count();
  auto corrupt = [&](const std::string& msg) {
    ++r.corruptions;
    if (r.messages.size() < kMaxMessages) r.messages.push_back("ERROR " + msg);
  };

  Usage usage((fsize + cs - 1) / cs + 1);
  // The L1 table is written as whole sectors from its start (by QEMU and by
  // us): the tail of its last sector is part of it, not a leak.
  usage.mark(0, std::min(header_.l1_table_offset + *align_up(l1_.size() * 8, 512), fsize), cs,
             false);
  if (header_.backing_file_offset && header_.backing_file_size)
    usage.mark(header_.backing_file_offset, header_.backing_file_size, cs, false);

  uint64_t prev_end = 0;  // host end of the previous normal cluster, for fragmentation
  const uint64_t l2_bytes = header_.l2_bytes();
  for (uint64_t index = 0; index < l1_.size(); ++index) {
    uint64_t off = l1_[index];
    if (off == 0) continue;
    if (!range_within(off, l2_bytes, fsize)) {
      corrupt("L1 entry " + std::to_string(index) + ": L2 table at " + hex(off) +
              " runs past the end of the file");
      continue;
    }
    if (!usage.mark(off, l2_bytes, cs, false)) {
      // Do not walk a table twice: a hostile L1 could name one table a million times.
      corrupt("L1 entry " + std::to_string(index) + ": L2 table at " + hex(off) +
              " overlaps other metadata or data");
      continue;
    }
    DMU_ASSIGN_OR_RETURN(const std::vector<uint64_t>* table, l2_table(index));
    for (uint64_t i = 0; i < table->size(); ++i) {
      uint64_t cluster = (index << header_.l2_bits) + i;
      uint64_t e = (*table)[i];
      if (e == 0 || cluster >= r.total_clusters) continue;
      std::string where = "guest offset " + hex(cluster * cs);
      auto c = decode(cluster, e);
      if (!c) {
        corrupt(c.error().message);
        continue;
      }
      ++r.allocated_clusters;
      if (c->kind == Cluster::Compressed) {
        ++r.compressed_clusters;
        if (!usage.mark(c->offset, c->csize, cs, true))
          corrupt(where + ": compressed cluster at " + hex(c->offset) + " overlaps other data");
        continue;
      }
      if (prev_end && c->offset != prev_end) ++r.fragmented_clusters;
      prev_end = c->offset + cs;
      uint64_t len = std::min(cs, info_.virtual_size - cluster * cs);
      if (!usage.mark(c->offset, len, cs, false))
        corrupt(where + ": cluster at " + hex(c->offset) + " is used more than once");
    }
  }

  // Leaks: whole file clusters nothing refers to.
  uint64_t file_units = (fsize + cs - 1) / cs;
  uint64_t trailing = 0, first_leak = 0;
  for (uint64_t u = 0; u < file_units; ++u) {
    if (usage.used(u)) {
      trailing = 0;
      continue;
    }
    if (!r.leaks) first_leak = u * cs;
    ++r.leaks;
    ++trailing;
  }
  if (r.leaks && r.messages.size() < kMaxMessages)
    r.messages.push_back("Leaked: " + std::to_string(r.leaks) + " clusters of " +
                         std::to_string(cs) + " bytes are not referenced (the first at " +
                         hex(first_leak) + ")");
  r.image_end_offset = usage.end();

  if (repair != Repair::None && trailing && usage.end() < fsize) {
    DMU_TRY(file_->truncate(usage.end()));
    DMU_TRY(file_->sync());
    r.leaks_fixed = trailing;
    r.leaks -= trailing;
    known_file_size_ = usage.end();
    next_free_ = *align_up(usage.end(), cs);
  }
  return r;
}

}  // namespace dmu::formats::qcow
