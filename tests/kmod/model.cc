// Model implementation; see model.h for the rules it keeps.
#include "tests/kmod/model.h"

#include <algorithm>

#include "mapper/protocol.h"
#include "tests/kmod/model_slots.h"

namespace dmu::testd {
namespace {

using model::Entry;
using model::kDataStart;
using model::kMaxEntries;

// dm-userspace.h: "At most 256 messages make one answer".
constexpr size_t kMaxAnswerMessages = 256;
constexpr size_t kRecentDone = 4096;

// Appends extent e, or grows the last one when e continues it.
bool merge_or_push(std::vector<dmu_response>& out, const dmu_response& e, uint32_t block_sectors) {
  if (!out.empty()) {
    dmu_response& last = out.back();
    if (last.kind == e.kind && last.ext_flags == e.ext_flags && last.dev == e.dev &&
        last.block + last.nr_blocks == e.block &&
        (e.kind == DMU_EXT_ZERO || last.sector + last.nr_blocks * block_sectors == e.sector)) {
      last.nr_blocks += e.nr_blocks;
      return true;
    }
  }
  if (out.size() >= kMaxAnswerMessages) return false;
  out.push_back(e);
  return true;
}

void mark_final(std::vector<dmu_response>& out) {
  if (!out.empty()) out.back().flags |= DMU_RSP_FINAL;
}

}  // namespace

const char* done_kind_name(DoneKind k) {
  switch (k) {
    case DoneKind::Allocation:
      return "allocation";
    case DoneKind::FailedAllocation:
      return "failed_allocation";
    case DoneKind::Discard:
      return "discard";
    case DoneKind::Ignored:
      return "ignored";
    case DoneKind::Duplicate:
      return "duplicate";
  }
  return "?";
}

Model::Model(File& dev, uint64_t blocks, uint64_t block_bytes, uint64_t clusters)
    : dev_(dev), blocks_(blocks), block_bytes_(block_bytes), clusters_(clusters, Cluster::Free) {
  for (uint64_t c = 0; c < clusters; ++c) free_.insert(free_.end(), c);
  stats_.clusters = clusters;
}

// g++ 12 at -O3 takes the fields of the committed map, an std::optional
// moved out of a Result, for uninitialized after the check that it holds
// one (-Wmaybe-uninitialized, a false positive that fails Release builds
// with warnings as errors).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
Result<std::unique_ptr<Model>> Model::open(File& dev, uint64_t target_sectors,
                                           uint32_t block_sectors) {
  const std::string& name = dev.path();
  if (block_sectors == 0 || target_sectors == 0)
    return fail(EINVAL, name + ": empty target geometry");
  const uint64_t block_bytes = uint64_t{block_sectors} * 512;
  DMU_ASSIGN_OR_RETURN(uint64_t size, dev.size());
  if (size < kDataStart + block_bytes)
    return fail(ENOSPC, name + ": " + std::to_string(size) +
                            " bytes hold the map slots but not one cluster of " +
                            std::to_string(block_bytes) + " bytes");
  const uint64_t clusters = std::min((size - kDataStart) / block_bytes, kMaxEntries);
  const uint64_t blocks = (target_sectors + block_sectors - 1) / block_sectors;
  DMU_ASSIGN_OR_RETURN(model::Committed c, model::load_committed(dev));
  std::unique_ptr<Model> m(new Model(dev, blocks, block_bytes, clusters));
  m->newest_slot_ = c.slot;
  if (!c.map) return m;
  if (c.map->block_bytes != block_bytes)
    return fail(EINVAL, name + ": committed map (slot " + std::to_string(c.slot) +
                            ") has blocks of " + std::to_string(c.map->block_bytes) +
                            " bytes, the target " + std::to_string(block_bytes));
  m->generation_ = c.map->generation;
  m->stats_.generation = c.map->generation;
  for (const Entry& e : c.map->entries) {
    if (e.vblock >= blocks || e.cluster >= clusters || m->clusters_[e.cluster] != Cluster::Free)
      return fail(EINVAL, name + ": committed map (slot " + std::to_string(c.slot) +
                              ", generation " + std::to_string(c.map->generation) +
                              ") maps block " + std::to_string(e.vblock) + " to cluster " +
                              std::to_string(e.cluster) + ": outside the target (" +
                              std::to_string(blocks) + " blocks), the device (" +
                              std::to_string(clusters) + " clusters) or used twice");
    m->take(e.cluster);
    m->live_.emplace_hint(m->live_.end(), e.vblock, e.cluster);
  }
  m->committable_ = m->live_;
  return m;
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

// Rebuilding the old daemon's state.  The newest slot M reflects, for every
// block, a prefix of that block's decisions at least as long as the
// published ones; the records are the unpublished decisions, a suffix of
// every block's history, in order.  So:
//   - a block's state is that of its last record, or M's without records;
//   - a discard must hold (until its DONE) the cluster its blocks mapped just
//     before it: the replayed state at that point.  When M already reflects
//     the discard (its DONE was read, nothing is in flight any more) that
//     state is M's, possibly a later allocation's cluster; a cluster some
//     later record allocates is therefore never held (the old daemon only
//     reuses a cluster after the discard's DONE);
//   - a record does not say whether its answer failed (the kernel dropped its
//     NEW extents; the DONE with the error comes again later).  The old
//     daemon handed out a cluster again only once nothing used it, so when a
//     later record allocates a cluster the replayed map still gives another
//     block, that earlier allocation failed: the later record wins;
//   - the committable map stays M: DONEs (redelivered ones first) move it on.
Result<size_t> Model::adopt(std::span<const dmu_allocation> records) {
  if (!allocs_.empty() || !discards_.empty() || stats_.adopted_records)
    return fail(EALREADY, dev_.path() + ": records adopted after answers were given");
  std::map<uint64_t, uint64_t> live = live_;
  std::map<uint64_t, uint64_t> owner;  // cluster -> block, the inverse of live
  for (const auto& [block, cluster] : live) owner[cluster] = block;
  std::set<uint64_t> touched;  // blocks some record allocates or discards
  std::set<uint64_t>
      unexplained;  // M's blocks a record's cluster took before any record named them
  uint64_t superseded = 0;
  std::map<uint64_t, Alloc> allocs;
  std::map<uint64_t, Discard> discards;
  std::map<uint64_t, std::vector<std::pair<size_t, uint64_t>>> candidates;  // id -> (pos, cluster)
  std::multimap<uint64_t, size_t> claims;  // cluster -> record position allocating it
  std::map<uint64_t, uint64_t> claimant;   // cluster -> id of the last record allocating it
  const uint32_t known = DMU_ALLOC_DISCARD | DMU_ALLOC_PUSH | DMU_ALLOC_DONE;
  for (size_t i = 0; i < records.size(); ++i) {
    const dmu_allocation& r = records[i];
    auto bad = [&](const std::string& why) {
      return fail(EPROTO, dev_.path() + ": record " + std::to_string(i) + " (" +
                              proto::describe(r) + "): " + why);
    };
    if (r.flags & ~known) return bad("unknown flags");
    if (r.nr_blocks == 0 || r.block >= blocks_ || r.nr_blocks > blocks_ - r.block)
      return bad("range outside the target of " + std::to_string(blocks_) + " blocks");
    if (r.flags & DMU_ALLOC_DISCARD) {
      if (r.dev || r.sector || (r.flags & DMU_ALLOC_PUSH)) return bad("a discard with an extent");
      if (discards.count(r.id) || allocs.count(r.id)) return bad("id listed twice");
      for (uint64_t j = 0; j < r.nr_blocks; ++j) touched.insert(r.block + j);
      Discard& d = discards[r.id];
      d.block = r.block;
      d.nr_blocks = r.nr_blocks;
      d.adopted = true;
      for (auto it = live.lower_bound(r.block);
           it != live.end() && it->first < r.block + r.nr_blocks;) {
        candidates[r.id].emplace_back(i, it->second);
        owner.erase(it->second);
        it = live.erase(it);
      }
      continue;
    }
    if (discards.count(r.id)) return bad("id listed twice");
    const uint64_t byte = r.sector * 512;
    if (r.dev != 0 || byte < kDataStart || (byte - kDataStart) % block_bytes_)
      return bad("not a cluster of device 0");
    const uint64_t first = (byte - kDataStart) / block_bytes_;
    if (first >= clusters_.size() || r.nr_blocks > clusters_.size() - first)
      return bad("clusters past the " + std::to_string(clusters_.size()) + " of device 0");
    Alloc& a = allocs[r.id];
    for (uint64_t j = 0; j < r.nr_blocks; ++j) {
      const uint64_t block = r.block + j, cluster = first + j;
      touched.insert(block);
      if (auto o = owner.find(cluster); o != owner.end() && o->second != block) {
        // An allocation that failed since, or (M ahead of the records) a
        // later one a later record names again.
        if (!touched.count(o->second)) unexplained.insert(o->second);
        live.erase(o->second);
        ++superseded;
      }
      if (auto c = claimant.find(cluster); c != claimant.end()) {
        // An earlier record's answer failed (or the same block got the same
        // cluster again after a failure): its DONE must not release it now.
        auto& earlier = allocs[c->second].blocks;
        std::erase_if(earlier, [&](const auto& bc) { return bc.second == cluster; });
      }
      claimant[cluster] = r.id;
      if (auto l = live.find(block); l != live.end()) owner.erase(l->second);
      live[block] = cluster;
      owner[cluster] = block;
      a.blocks.emplace_back(block, cluster);
      claims.emplace(cluster, i);
    }
  }

  // M holds only allocations whose DONE succeeded, and freeing one takes a
  // discard, listed unless published (then M reflects it): a block of M that
  // lost its cluster to a record must be named by some record.
  for (uint64_t block : unexplained)
    if (!touched.count(block))
      return fail(EPROTO, dev_.path() + ": the records reuse the cluster the committed map " +
                              "gives block " + std::to_string(block) +
                              ", and no record allocates or discards that block");

  // Cluster states from scratch: the final live map uses, discards hold.
  std::vector<Cluster> state(clusters_.size(), Cluster::Free);
  for (const auto& [block, cluster] : live) {
    if (state[cluster] != Cluster::Free)
      return fail(EPROTO, dev_.path() + ": committed map and records map cluster " +
                              std::to_string(cluster) + " to two blocks (one is " +
                              std::to_string(block) + ")");
    state[cluster] = Cluster::Used;
  }
  for (auto& [id, list] : candidates) {
    for (auto [pos, cluster] : list) {
      bool reused_later = false;
      for (auto [it, end] = claims.equal_range(cluster); it != end; ++it)
        reused_later = reused_later || it->second > pos;
      if (reused_later || state[cluster] != Cluster::Free) continue;
      state[cluster] = Cluster::Draining;
      discards[id].draining.push_back(cluster);
    }
  }

  clusters_ = std::move(state);
  free_.clear();
  for (uint64_t c = 0; c < clusters_.size(); ++c)
    if (clusters_[c] == Cluster::Free) free_.insert(free_.end(), c);
  live_ = std::move(live);
  for (auto& [id, a] : allocs)
    for (auto [block, cluster] : a.blocks) ++alloc_blocks_[block];
  allocs_ = std::move(allocs);
  discards_ = std::move(discards);
  stats_.adopted_records = records.size();
  stats_.adopted_failed = superseded;
  return records.size();
}

bool Model::discard_pending(uint64_t block) const {
  for (const auto& [id, d] : discards_)
    if (block >= d.block && block - d.block < d.nr_blocks) return true;
  return false;
}

bool Model::waits_for_done(uint64_t block) const {
  return alloc_blocks_.count(block) || discard_pending(block);
}

void Model::take(uint64_t cluster) {
  clusters_[cluster] = Cluster::Used;
  free_.erase(cluster);
}

void Model::release(uint64_t cluster) {
  clusters_[cluster] = Cluster::Free;
  free_.insert(cluster);
  ++stats_.freed_clusters;
}

size_t Model::draining_clusters() const {
  return static_cast<size_t>(std::count(clusters_.begin(), clusters_.end(), Cluster::Draining));
}

std::optional<uint64_t> Model::cluster_of(uint64_t block) const {
  auto it = live_.find(block);
  if (it == live_.end()) return std::nullopt;
  return it->second;
}

std::optional<std::vector<dmu_response>> Model::answer_map(const dmu_request& q) {
  const uint32_t known = DMU_MAP_WRITE | DMU_MAP_DISCARD;
  if (q.type != DMU_REQ_MAP || (q.flags & ~known) || (q.flags & known) == known ||
      q.nr_blocks == 0 || q.block >= blocks_ || q.nr_blocks > blocks_ - q.block)
    return std::vector<dmu_response>{proto::complete(q.id, -EINVAL)};
  if (q.flags & DMU_MAP_DISCARD) return answer_discard(q);
  if (q.flags & DMU_MAP_WRITE) return answer_write(q);
  return answer_read(q);
}

// Mapped blocks remap to their cluster, writable once their allocation's
// DONE arrived (before it a write must ask, and wait); others read zeros.
std::vector<dmu_response> Model::answer_read(const dmu_request& q) const {
  const uint32_t bs = static_cast<uint32_t>(block_bytes_ / 512);
  std::vector<dmu_response> out;
  for (uint64_t b = q.block; b < q.block + q.nr_blocks; ++b) {
    auto it = live_.find(b);
    dmu_response e = proto::zero_extent(q.id, b, 1, false);
    if (it != live_.end())
      e = proto::remap_extent(q.id, b, 1, 0, sector_of(it->second),
                              alloc_blocks_.count(b) ? 0 : DMU_EXT_WRITABLE, false);
    if (!merge_or_push(out, e, bs)) break;
  }
  mark_final(out);
  return out;
}

std::optional<std::vector<dmu_response>> Model::answer_write(const dmu_request& q) {
  if (waits_for_done(q.block)) return std::nullopt;
  const uint32_t bs = static_cast<uint32_t>(block_bytes_ / 512);
  std::vector<dmu_response> out;
  Alloc a;
  a.map = q;
  for (uint64_t b = q.block; b < q.block + q.nr_blocks; ++b) {
    if (b != q.block && waits_for_done(b)) break;  // the kernel asks again for the rest
    if (auto it = live_.find(b); it != live_.end()) {
      if (!merge_or_push(
              out,
              proto::remap_extent(q.id, b, 1, 0, sector_of(it->second), DMU_EXT_WRITABLE, false),
              bs))
        break;
      continue;
    }
    if (free_.empty()) {
      if (b == q.block) {
        ++stats_.enospc;
        return std::vector<dmu_response>{proto::complete(q.id, -ENOSPC)};
      }
      break;
    }
    const uint64_t c = *free_.begin();
    if (!merge_or_push(
            out,
            proto::remap_extent(q.id, b, 1, 0, sector_of(c), DMU_EXT_WRITABLE | DMU_EXT_NEW, false),
            bs))
      break;
    take(c);
    live_[b] = c;
    ++alloc_blocks_[b];
    a.blocks.emplace_back(b, c);
    ++stats_.allocated_blocks;
  }
  if (!a.blocks.empty()) allocs_[q.id] = std::move(a);
  mark_final(out);
  return out;
}

// Unmapped at once (later reads are ZERO); the clusters drain until DONE.
std::vector<dmu_response> Model::answer_discard(const dmu_request& q) {
  Discard d;
  d.block = q.block;
  d.nr_blocks = q.nr_blocks;
  for (auto it = live_.lower_bound(q.block);
       it != live_.end() && it->first < q.block + q.nr_blocks;) {
    clusters_[it->second] = Cluster::Draining;
    d.draining.push_back(it->second);
    it = live_.erase(it);
    ++stats_.discarded_blocks;
  }
  discards_[q.id] = std::move(d);
  return {proto::complete(q.id, 0)};
}

bool Model::same_map(const dmu_request& done, const dmu_request& map) const {
  return done.flags == map.flags && done.block == map.block && done.nr_blocks == map.nr_blocks;
}

void Model::remember_done(uint64_t id) {
  if (!recent_done_.insert(id).second) return;
  recent_order_.push_back(id);
  if (recent_order_.size() > kRecentDone) {
    recent_done_.erase(recent_order_.front());
    recent_order_.pop_front();
  }
}

DoneKind Model::done(const dmu_request& q, std::vector<dmu_response>& out) {
  if (auto it = allocs_.find(q.id); it != allocs_.end()) {
    Alloc a = std::move(it->second);
    allocs_.erase(it);
    remember_done(q.id);
    if (a.map && !same_map(q, *a.map)) ++stats_.done_mismatch;
    for (auto [block, cluster] : a.blocks)
      if (auto n = alloc_blocks_.find(block); n != alloc_blocks_.end() && --n->second == 0)
        alloc_blocks_.erase(n);
    if (q.status == 0) {
      for (auto [block, cluster] : a.blocks) committable_[block] = cluster;
      ++stats_.done_allocations;
      return DoneKind::Allocation;
    }
    // The kernel dropped the NEW extents; read-only extents of the blocks
    // may still be cached, and the cluster is about to be handed out again.
    for (auto [block, cluster] : a.blocks) {
      auto l = live_.find(block);
      if (l == live_.end() || l->second != cluster) continue;  // discarded since: drains
      live_.erase(l);
      release(cluster);
      if (!out.empty() && out.back().type == DMU_RSP_INVALIDATE &&
          out.back().block + out.back().nr_blocks == block)
        ++out.back().nr_blocks;
      else
        out.push_back(proto::invalidate(block, 1));
    }
    ++stats_.done_failed;
    return DoneKind::FailedAllocation;
  }
  if (auto it = discards_.find(q.id); it != discards_.end()) {
    Discard d = std::move(it->second);
    discards_.erase(it);
    remember_done(q.id);
    if (!(q.flags & DMU_MAP_DISCARD) ||
        (!d.adopted && (q.block != d.block || q.nr_blocks != d.nr_blocks)))
      ++stats_.done_mismatch;
    // Whatever its status: the blocks were unmapped when it was answered,
    // and no I/O through their old mappings is left.
    committable_.erase(committable_.lower_bound(d.block),
                       committable_.lower_bound(d.block + d.nr_blocks));
    for (uint64_t cluster : d.draining)
      if (clusters_[cluster] == Cluster::Draining) release(cluster);
    ++stats_.done_discards;
    return DoneKind::Discard;
  }
  if (recent_done_.count(q.id)) {
    ++stats_.done_duplicate;
    return DoneKind::Duplicate;
  }
  ++stats_.done_ignored;
  return DoneKind::Ignored;
}

Model::Snapshot Model::snapshot() const {
  Snapshot s;
  s.entries.reserve(committable_.size());
  for (const auto& [block, cluster] : committable_) s.entries.push_back({block, cluster});
  return s;
}

Result<void> Model::commit(const Snapshot& s) {
  const int slot = newest_slot_ < 0 ? 0 : 1 - newest_slot_;
  const uint64_t generation = generation_ + 1;
  auto written = [&]() -> Result<void> {
    if (s.entries.size() > kMaxEntries)
      return fail(ENOSPC, dev_.path() + ": " + std::to_string(s.entries.size()) +
                              " entries do not fit a slot");
    DMU_TRY(dev_.write(model::slot_offset(slot),
                       model::encode_slot(generation, block_bytes_, s.entries)));
    return dev_.sync();
  }();
  if (!written) {
    ++stats_.commit_errors;
    return written;
  }
  newest_slot_ = slot;
  generation_ = generation;
  stats_.generation = generation;
  ++stats_.commits;
  return {};
}

}  // namespace dmu::testd
