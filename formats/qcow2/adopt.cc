// adopt_write for the qcow2 engine: a dead process's uncommitted
// preparations become pending clusters again (see formats/image.h).
//
// An adoption is checked against the committed metadata only, cluster by
// cluster, the way classify() would have treated the cluster when the old
// process prepared it:
//   - a cluster already adopted (or pending) must be adopted at the same host
//     cluster again (two writes into one fresh cluster);
//   - an allocated cluster of ours (written in place, or unallocated
//     subclusters filled in place) must be adopted at its own host cluster;
//   - every other cluster (unallocated, zero, compressed, shared with a
//     snapshot) was given a new host cluster, which must be free: not
//     metadata, not referenced (refcount 0, or a refcount nothing refers
//     to: the dead process's allocation made durable by a commit of other
//     writes), not claimed by another adoption.  Without extended L2 (and
//     for compressed or shared clusters) the whole cluster must be covered,
//     or the rest of it would hold garbage.
// Nothing is written while adopting: claimed clusters get their refcount,
// and L2 tables are made writable, in end_adoption().
#include <algorithm>
#include <utility>

#include "common/checked.h"
#include "formats/qcow2/qcow2_image.h"

namespace dmu::formats::qcow2 {
namespace {

// refcounts.cc's limit: host offsets of the qcow2 format.
constexpr uint64_t kMaxAdoptHost = uint64_t(1) << 56;

}  // namespace

Result<void> Qcow2Image::check_adopt_shape(uint64_t offset, uint64_t length, unsigned file,
                                           uint64_t host_offset) const {
  const uint64_t gran = g_.subcluster_size;
  if (file != 0) return fail(EINVAL, "qcow2 images have a single data file");
  if (length == 0 || !range_within(offset, length, virtual_size_))
    return fail(EINVAL, "the range is outside the virtual disk (" + std::to_string(virtual_size_) +
                            " bytes)");
  const uint64_t end = offset + length;
  if (offset % gran || (end % gran && end != virtual_size_))
    return fail(EINVAL, "the range is not aligned to the " + std::to_string(gran) +
                            "-byte allocation unit");
  if (g_.offset_in_cluster(host_offset) != g_.offset_in_cluster(offset))
    return fail(EINVAL, "the host offset is not at the guest offset's place in its cluster");
  if (host_offset >= kMaxAdoptHost || kMaxAdoptHost - host_offset < length)
    return fail(EINVAL, "the host range is beyond the qcow2 limit");
  return {};
}

// A host cluster a new allocation of the dead process used must be free in
// the committed metadata and not claimed by another adoption.
Result<void> Qcow2Image::check_host_free(uint64_t hc) {
  const std::string at = "host cluster " + hex(hc << g_.cluster_bits);
  if (reserved(hc)) return fail(EINVAL, at + " overlaps the image's metadata");
  if (adopt_claimed(hc)) return fail(EINVAL, at + " is already adopted for another guest range");
  DMU_ASSIGN_OR_RETURN(uint64_t refcount, refcounts_->get(hc));
  if (refcount == 0) return {};
  // A refcount nothing refers to: the dead process allocated the cluster and
  // a commit of other writes made its refcount durable.  Still ours to adopt.
  if (!adopt_refs_) {
    DMU_ASSIGN_OR_RETURN(adopt_refs_, count_references());
  }
  if (hc < adopt_refs_->size() && (*adopt_refs_)[hc] != 0)
    return fail(EINVAL, at + " is in use (" + std::to_string((*adopt_refs_)[hc]) +
                            " references: metadata or another guest range's data)");
  return {};
}

Result<Qcow2Image::AdoptPlan> Qcow2Image::plan_adoption(uint64_t c, uint64_t host, uint64_t offset,
                                                        uint64_t end) {
  AdoptPlan p{c, host, false, unit_mask(offset, end, c)};
  const std::string guest = "guest cluster " + hex(c << g_.cluster_bits);
  if (auto it = pending_.find(c); it != pending_.end()) {
    if (it->second.host != host)
      return fail(EINVAL, guest + " is already adopted at host " + hex(it->second.host));
    return p;
  }
  DMU_ASSIGN_OR_RETURN(WriteUnit w, classify(c << g_.cluster_bits));
  if (adopt_discarded_.count(c)) {
    if (w.cls != WriteClass::New && w.host == host) {
      // The dead process committed the discard and this rewrite but died
      // before the kernel heard COMMITTED: both are durable already.
      adopt_discarded_.erase(c);
      return p;
    }
    // Otherwise the cluster reads as discarded now, whatever the committed
    // metadata says: a write after the discard got a new cluster.
    w = WriteUnit{};
  }
  if (w.cls != WriteClass::New) {  // ours already: the old process wrote in place
    if (w.host == host) return p;
    // ... or moved the caller's block of small clusters to a fresh run
    // (write_block.cc); the new place must then be free like any new one.
    if (!groups_clusters()) return fail(EINVAL, guest + " is allocated at host " + hex(w.host));
  }
  const uint64_t base = c << g_.cluster_bits;
  const bool covered = offset <= base && end >= std::min(base + g_.cluster_size, virtual_size_);
  if ((w.whole_cluster || !g_.extended_l2) && !covered)
    return fail(EINVAL, guest + " needs a whole new cluster; the range covers only part of it");
  if (data_file_) {  // external data: the guest offset is the host offset
    if (host != c << g_.cluster_bits)
      return fail(EINVAL, guest + " lives at its own offset in the external data file");
    return p;
  }
  DMU_TRY(check_host_free(host >> g_.cluster_bits));
  p.new_host = true;
  return p;
}

void Qcow2Image::record_adoption(const std::vector<AdoptPlan>& plans, uint64_t token) {
  for (const AdoptPlan& p : plans) {
    auto [it, added] = pending_.try_emplace(p.cluster);
    if (added) {
      it->second.host = p.host;
      it->second.new_host = p.new_host;
      if (p.new_host) adopt_claims_.insert(p.host >> g_.cluster_bits);
    }
    it->second.parts.push_back({token, p.mask});
  }
  tokens_[token] = TokenRecord{plans.front().cluster, plans.size()};
}

Result<uint64_t> Qcow2Image::adopt_write(uint64_t offset, uint64_t length, unsigned file,
                                         uint64_t host_offset) {
  DMU_TRY(check_writable());
  const std::string what = adopt_context(path_, offset, length, file, host_offset);
  if (!adopting_)
    return fail(EBUSY, what + ": the image changed since it was opened or last committed");
  if (auto r = check_adopt_shape(offset, length, file, host_offset); !r)
    return fail(EINVAL, what + ": " + r.error().message);
  const uint64_t end = offset + length;
  const uint64_t c0 = offset >> g_.cluster_bits, c1 = (end - 1) >> g_.cluster_bits;
  const uint64_t host0 = align_down(host_offset, g_.cluster_size);
  // Check every cluster before recording any, so a refusal changes nothing.
  std::vector<AdoptPlan> plans;
  for (uint64_t c = c0; c <= c1; ++c) {
    auto p = plan_adoption(c, host0 + ((c - c0) << g_.cluster_bits), offset, end);
    if (!p) return fail(p.error().code, what + ": " + p.error().message);
    plans.push_back(*p);
  }
  const uint64_t token = next_token_++;
  record_adoption(plans, token);
  return token;
}

// Forgets earlier adoptions of the range's whole clusters (the guest dropped
// that data; MapService::adopt refuses a list where such a write had not
// reported DONE, so no fill still writes there) and marks the clusters
// discarded for later adoptions and for end_adoption().
Result<std::pair<uint64_t, uint64_t>> Qcow2Image::adopt_discard(uint64_t offset,
                                                                uint64_t length) {
  using Range = std::pair<uint64_t, uint64_t>;
  DMU_TRY(check_writable());
  const std::string what = path_ + ": cannot adopt the discard of guest [" + hex(offset) + ", +" +
                           hex(length) + ")";
  if (!adopting_)
    return fail(EBUSY, what + ": the image changed since it was opened or last committed");
  if (length == 0 || !range_within(offset, length, virtual_size_))
    return fail(EINVAL, what + ": the range is outside the virtual disk");
  // discard()'s rules: nothing at all on version 2 over a backing file (the
  // dead process's discard was a no-op there), whole clusters only (and the
  // partial last cluster).
  if (header_.version < 3 && header_.backing_file) return Range{0, 0};
  const uint64_t first = *align_up(offset, g_.cluster_size);
  const uint64_t last = offset + length == virtual_size_
                            ? virtual_size_
                            : align_down(offset + length, g_.cluster_size);
  if (first >= last) return Range{0, 0};
  for (uint64_t c = first >> g_.cluster_bits; c <= (last - 1) >> g_.cluster_bits; ++c) {
    if (auto it = pending_.find(c); it != pending_.end()) {
      // Its tokens stay: write_done skips clusters it has no part in.
      if (it->second.new_host) adopt_claims_.erase(it->second.host >> g_.cluster_bits);
      pending_.erase(it);
    }
    adopt_discarded_.insert(c);
  }
  return Range{first, last};
}

Result<void> Qcow2Image::end_adoption() {
  if (!adopting_) return {};
  adopting_ = false;
  adopt_refs_.reset();
  const std::set<uint64_t> discarded = std::exchange(adopt_discarded_, {});
  if (pending_.empty() && discarded.empty()) return {};
  DMU_TRY(prepare_header_for_write());
  // Refcounts first: while every claim is still reserved, the refcount
  // blocks (and table growth) this needs go elsewhere.
  // set, not add: a claim may carry the refcount an earlier commit stored.
  for (uint64_t hc : adopt_claims_)
    if (auto r = refcounts_->set(hc, 1); !r) return fail_writes(r.error());
  adopt_claims_.clear();
  adopt_refs_.reset();
  // Now the allocator sees the claims as used: L2 tables land elsewhere.
  for (const auto& [c, pc] : pending_)
    if (auto r = ensure_l2(c >> g_.l2_bits); !r) return fail_writes(r.error());
  // The discards, before any adopted write after them is applied (those
  // apply at write_done, on top of what the discard left).  Their old
  // clusters are released at the next commit, as the dead process's were.
  for (uint64_t c : discarded)
    if (auto r = discard_clusters(c, c); !r) return fail_writes(r.error());
  return {};
}

}  // namespace dmu::formats::qcow2
