// The write side of the qcow2 engine: prepare_write (in place, joining a
// write in flight, filling an existing cluster, or allocating new clusters
// contiguously), write_done (the L2 entry changes in memory), write_zeroes
// and discard with QEMU's semantics.  Durability is commit.cc's business.
#include <algorithm>

#include "common/checked.h"
#include "formats/qcow2/qcow2_image.h"

namespace dmu::formats::qcow2 {

Result<void> Qcow2Image::check_writable() {
  if (access_ != Access::ReadWrite) return fail(EROFS, path_ + ": image is open read-only");
  if (corrupt_)
    return fail(EROFS, path_ +
                           ": image is marked corrupt; repair it (check -r all) before "
                           "writing");
  if (failed_)
    return fail(failed_->code,
                path_ + ": refusing writes after a failed metadata update: " + failed_->message);
  return {};
}

uint32_t Qcow2Image::unit_mask(uint64_t from, uint64_t to, uint64_t cluster) const {
  if (!g_.extended_l2) return 1;
  uint64_t base = cluster << g_.cluster_bits;
  uint64_t a = std::max(from, base) - base;
  uint64_t b = std::min(to, base + g_.cluster_size) - base;  // exclusive, > a
  unsigned first = unsigned(a >> g_.subcluster_bits);
  unsigned last = unsigned((b - 1) >> g_.subcluster_bits);
  uint64_t bits = ((uint64_t(1) << (last + 1)) - 1) & ~((uint64_t(1) << first) - 1);
  return uint32_t(bits);
}

// A host cluster the caller will write into must be where the format says
// it can be: the guest offset itself in an external data file, inside the
// image file otherwise (a corrupt entry must not make us write 400 GiB away).
Result<void> Qcow2Image::check_write_host(uint64_t host, uint64_t guest_cluster) const {
  if (data_file_) {
    if (host != guest_cluster << g_.cluster_bits)
      return fail(corrupt("guest cluster " + std::to_string(guest_cluster) +
                          " maps to data file offset " + hex(host) + ", not its own offset"));
    return {};
  }
  if ((host >> g_.cluster_bits) >= refcounts_->end_cluster())
    return fail(corrupt("guest cluster " + std::to_string(guest_cluster) + " maps to " + hex(host) +
                        ", beyond the end of the image file"));
  return {};
}

// The units of cluster c that lie inside the virtual disk.
uint32_t Qcow2Image::full_mask(uint64_t c) const {
  uint64_t base = c << g_.cluster_bits;
  return unit_mask(base, std::min(base + g_.cluster_size, virtual_size_), c);
}

// How a write treats the unit (subcluster or cluster) starting at pos.
Result<Qcow2Image::WriteUnit> Qcow2Image::classify(uint64_t pos) {
  WriteUnit w;
  const uint64_t c = pos >> g_.cluster_bits;
  const uint64_t unit_in_cluster = g_.offset_in_cluster(pos) & ~(g_.subcluster_size - 1);
  const unsigned sc = unsigned(unit_in_cluster >> g_.subcluster_bits);
  if (auto it = pending_.find(c); it != pending_.end()) {
    w.host = it->second.host + unit_in_cluster;
    w.cls = (it->second.mask() & (1u << sc)) ? WriteClass::Join : WriteClass::Existing;
    return w;
  }
  DMU_ASSIGN_OR_RETURN(L2Slot s, l2_slot(c));
  const uint64_t entry = s.table ? l2_entry(s) : 0;
  const uint64_t bitmap = s.table ? l2_bitmap(s) : 0;
  const bool own_l2 = s.l1_entry & kOflagCopied;
  switch (cluster_type(g_, entry, data_file_ != nullptr)) {
    case ClusterType::Compressed:
      if (data_file_) return fail(corrupt("compressed cluster in an image with a data file"));
      w.whole_cluster = true;
      return w;
    case ClusterType::Unallocated:
    case ClusterType::ZeroPlain:
      return w;
    case ClusterType::ZeroAlloc: {
      // A preallocated zero cluster is reused when it is ours alone.
      DMU_ASSIGN_OR_RETURN(uint64_t host, data_host(entry, s));
      DMU_TRY(check_write_host(host, c));
      if (data_file_ || ((entry & kOflagCopied) && own_l2)) {
        w.cls = WriteClass::Existing;
        w.host = host + unit_in_cluster;
      } else {
        w.whole_cluster = true;
      }
      return w;
    }
    case ClusterType::Normal:
      break;
  }
  DMU_ASSIGN_OR_RETURN(uint64_t host, data_host(entry, s));
  DMU_TRY(check_write_host(host, c));
  const bool own = data_file_ || ((entry & kOflagCopied) && own_l2);
  if (!own) {  // shared with a snapshot: copy the whole cluster
    w.whole_cluster = true;
    return w;
  }
  w.host = host + unit_in_cluster;
  if (!g_.extended_l2) {
    w.cls = WriteClass::InPlace;
    return w;
  }
  if ((bitmap >> 32) & bitmap & kBitmapAllAlloc)
    return fail(corrupt("L2 entry of guest cluster " + std::to_string(c) +
                        " has subclusters both allocated and zero"));
  w.cls = (bitmap & (1u << sc)) ? WriteClass::InPlace : WriteClass::Existing;
  return w;
}

Result<WriteTarget> Qcow2Image::prepare_write(uint64_t offset, uint64_t length) {
  DMU_TRY(check_writable());
  DMU_TRY(end_adoption());
  if (offset >= virtual_size_ || length == 0)
    return fail(EINVAL, path_ + ": write of [" + std::to_string(offset) + ", +" +
                            std::to_string(length) + ") is outside the virtual disk");
  DMU_TRY(prepare_header_for_write());
  const uint64_t gran = g_.subcluster_size;
  const uint64_t start = align_down(offset, gran);
  uint64_t end = offset + std::min(length, virtual_size_ - offset);
  end = std::min(*align_up(end, gran), virtual_size_);
  end = std::min(end, start + std::max(options_.max_allocation_bytes, g_.cluster_size));
  if (groups_clusters()) {
    DMU_ASSIGN_OR_RETURN(std::optional<WriteTarget> moved, prepare_block(start));
    if (moved) {
      DMU_TRY(after_operation());
      return *moved;
    }
    // In place, but no further than this block: the next one may need moving.
    end = std::min(end, align_down(start, write_block_) + write_block_);
  }

  DMU_ASSIGN_OR_RETURN(WriteUnit first, classify(start));
  if (first.cls == WriteClass::New) {
    auto t = prepare_new(start, end, first);
    if (!t) return t;
    DMU_TRY(after_operation());
    return t;
  }
  uint64_t pos = align_down(start, gran) + gran;
  while (pos < end) {
    DMU_ASSIGN_OR_RETURN(WriteUnit w, classify(pos));
    if (w.cls != first.cls || w.host != first.host + (pos - start)) break;
    pos += gran;
  }
  const uint64_t t_end = std::min(pos, end);
  WriteTarget t;
  t.offset = start;
  t.length = t_end - start;
  t.host_offset = first.host;
  t.fresh = first.cls == WriteClass::Existing;
  t.token = next_token_++;
  if (first.cls == WriteClass::InPlace) {
    tokens_[t.token] = TokenRecord{};
  } else {
    const uint64_t c0 = start >> g_.cluster_bits, c1 = (t_end - 1) >> g_.cluster_bits;
    for (uint64_t c = c0; c <= c1; ++c) {
      auto it = pending_.find(c);
      if (it == pending_.end()) {
        // Filling unallocated subclusters of a cluster we own: the L2 table
        // must be writable before write_done changes it.
        DMU_TRY(ensure_l2(c >> g_.l2_bits));
        PendingCluster pc;
        pc.host = first.host - start + (c << g_.cluster_bits);  // modular: exact
        it = pending_.emplace(c, std::move(pc)).first;
      }
      it->second.parts.push_back({t.token, unit_mask(start, t_end, c)});
    }
    tokens_[t.token] = TokenRecord{c0, c1 - c0 + 1};
  }
  DMU_TRY(after_operation());
  return t;
}

// Allocates new host clusters for the run of clusters from start's on that
// all need one, contiguous as far as the allocator can.
Result<WriteTarget> Qcow2Image::prepare_new(uint64_t start, uint64_t end, const WriteUnit& first) {
  const uint64_t c0 = start >> g_.cluster_bits;
  const uint64_t c_last = (end - 1) >> g_.cluster_bits;
  uint64_t n = 1;
  bool last_whole = first.whole_cluster;
  while (c0 + n <= c_last) {
    DMU_ASSIGN_OR_RETURN(WriteUnit w, classify((c0 + n) << g_.cluster_bits));
    if (w.cls != WriteClass::New) break;
    last_whole = w.whole_cluster;
    ++n;
  }
  // L2 tables first, so they do not split the data run.
  for (uint64_t l1i = c0 >> g_.l2_bits; l1i <= (c0 + n - 1) >> g_.l2_bits; ++l1i)
    DMU_TRY(ensure_l2(l1i));
  uint64_t host0, k;
  if (data_file_) {  // external data: host offset == guest offset, not refcounted
    host0 = c0 << g_.cluster_bits;
    k = n;
  } else {
    DMU_ASSIGN_OR_RETURN(ClusterRun run, refcounts_->allocate(n));
    host0 = run.first << g_.cluster_bits;
    k = run.count;
  }
  const bool ext = g_.extended_l2;
  uint64_t t_start = (!ext || first.whole_cluster) ? c0 << g_.cluster_bits : start;
  uint64_t t_end = (c0 + k) << g_.cluster_bits;
  if (ext && k == n && !last_whole) t_end = std::min(t_end, end);
  t_end = std::min(t_end, virtual_size_);
  WriteTarget t;
  t.offset = t_start;
  t.length = t_end - t_start;
  t.host_offset = host0 + (t_start - (c0 << g_.cluster_bits));
  t.fresh = true;
  t.token = next_token_++;
  for (uint64_t i = 0; i < k; ++i) {
    PendingCluster pc;
    pc.host = host0 + (i << g_.cluster_bits);
    pc.new_host = !data_file_;
    pc.parts.push_back({t.token, unit_mask(t_start, t_end, c0 + i)});
    pending_[c0 + i] = std::move(pc);
  }
  tokens_[t.token] = TokenRecord{c0, k};
  return t;
}

// Queues the release of the host clusters an L2 entry referenced; applied
// after the commit that makes the entry's change durable.
void Qcow2Image::free_cluster_entry(uint64_t entry, bool release_space) {
  if (data_file_) return;  // data file clusters are not refcounted
  ClusterRun run;
  switch (cluster_type(g_, entry, false)) {
    case ClusterType::Compressed: {
      CompressedExtent e = compressed_extent(g_, entry);
      run.first = e.offset >> g_.cluster_bits;
      run.count = ((e.offset + e.size - 1) >> g_.cluster_bits) - run.first + 1;
      break;
    }
    case ClusterType::Normal:
    case ClusterType::ZeroAlloc:
      run = {(entry & kL2OffsetMask) >> g_.cluster_bits, 1};
      break;
    default:
      return;
  }
  refcounts_->defer_decrement(run, release_space);
}

// Points the L2 entry of `cluster` at the pending host and marks the
// subclusters in mask allocated.
Result<void> Qcow2Image::apply_part(uint64_t cluster, PendingCluster& pc, uint32_t mask) {
  DMU_ASSIGN_OR_RETURN(L2Slot s, l2_slot(cluster));
  if (!s.table || !(s.l1_entry & kOflagCopied))
    return fail(EIO, path_ + ": internal error: L2 table of guest cluster " +
                         std::to_string(cluster) + " was not prepared for writing");
  const uint64_t entry = l2_entry(s), bitmap = l2_bitmap(s);
  const ClusterType type = cluster_type(g_, entry, data_file_ != nullptr);
  const bool same = (type == ClusterType::Normal || type == ClusterType::ZeroAlloc) &&
                    (entry & kL2OffsetMask) == pc.host;
  if (!same) free_cluster_entry(entry, false);
  uint64_t new_bitmap = 0;
  if (g_.extended_l2) {
    uint64_t alloc = (same ? bitmap & kBitmapAllAlloc : 0) | mask;
    uint64_t zero = (bitmap >> 32) & ~alloc & kBitmapAllAlloc;
    new_bitmap = alloc | (zero << 32);
  }
  set_l2(s, pc.host | kOflagCopied, new_bitmap);
  pc.applied = true;
  return {};
}

Result<void> Qcow2Image::write_done(uint64_t token, bool ok) {
  auto it = tokens_.find(token);
  if (it == tokens_.end())
    return fail(EINVAL, path_ + ": write_done for unknown token " + std::to_string(token));
  DMU_TRY(end_adoption());  // an applied entry needs its L2 table writable
  const TokenRecord rec = it->second;
  tokens_.erase(it);
  Result<void> result;
  for (uint64_t c = rec.first_cluster; c < rec.first_cluster + rec.clusters; ++c) {
    auto pit = pending_.find(c);
    if (pit == pending_.end()) continue;
    PendingCluster& pc = pit->second;
    auto part = std::find_if(pc.parts.begin(), pc.parts.end(),
                             [&](const PendingPart& p) { return p.token == token; });
    if (part == pc.parts.end()) continue;
    uint32_t mask = part->mask;
    pc.parts.erase(part);
    if (ok && !failed_ && result) {
      if (auto r = apply_part(c, pc, mask); !r) result = fail_writes(r.error());
    }
    if (pc.parts.empty()) {
      // Nothing durable points at a never-applied new cluster: free it now.
      if (!pc.applied && pc.new_host) (void)refcounts_->add({pc.host >> g_.cluster_bits, 1}, -1);
      pending_.erase(pit);
    }
  }
  if (!result) return result;
  if (ok && failed_) return check_writable();
  if (access_ == Access::ReadWrite) DMU_TRY(after_operation());
  return {};
}

Result<void> Qcow2Image::check_not_pending(uint64_t first_cluster, uint64_t last_cluster) {
  auto it = pending_.lower_bound(first_cluster);
  if (it != pending_.end() && it->first <= last_cluster)
    return fail(EBUSY,
                path_ + ": guest cluster " + std::to_string(it->first) + " has a write in flight");
  return {};
}

// Makes the subclusters in mask of one cluster read as zeros (whole cluster
// when mask covers it), QEMU's zero_in_l2_slice / zero_l2_subclusters.
Result<void> Qcow2Image::zero_cluster(uint64_t c, uint32_t mask, bool may_unmap) {
  DMU_ASSIGN_OR_RETURN(L2Slot s, l2_slot(c));
  const uint64_t entry = s.table ? l2_entry(s) : 0;
  const uint64_t bitmap = s.table ? l2_bitmap(s) : 0;
  const ClusterType type = cluster_type(g_, entry, data_file_ != nullptr);
  const bool allocated = type == ClusterType::Normal || type == ClusterType::ZeroAlloc ||
                         type == ClusterType::Compressed;
  const bool whole = mask == full_mask(c);
  const bool backing = header_.backing_file.has_value();
  uint64_t new_entry = entry, new_bitmap = bitmap;
  bool unmap = false;
  if (header_.version < 3) {  // no zero flag: deallocate (only without backing)
    new_entry = 0;
    unmap = allocated;
  } else if (whole) {
    if (!backing && !allocated && !(bitmap & kBitmapAllAlloc)) return {};  // reads zero already
    unmap = type == ClusterType::Compressed || (may_unmap && allocated);
    if (unmap) new_entry = 0;
    if (g_.extended_l2)
      new_bitmap = kBitmapAllZero;
    else
      new_entry |= kOflagZero;
  } else {
    new_bitmap = (bitmap & ~uint64_t(mask)) | (uint64_t(mask) << 32);
  }
  if (new_entry == entry && new_bitmap == bitmap) return {};
  DMU_TRY(ensure_l2(c >> g_.l2_bits));
  DMU_ASSIGN_OR_RETURN(s, l2_slot(c));
  set_l2(s, new_entry, new_bitmap);
  if (unmap) free_cluster_entry(entry, true);  // the caller allowed unmapping
  return {};
}

Result<void> Qcow2Image::write_zeroes(uint64_t offset, uint64_t length, bool may_unmap) {
  DMU_TRY(check_writable());
  DMU_TRY(end_adoption());
  if (length == 0 || !range_within(offset, length, virtual_size_))
    return fail(EINVAL, path_ + ": write_zeroes of [" + std::to_string(offset) + ", +" +
                            std::to_string(length) + ") is outside the virtual disk");
  const uint64_t end = offset + length, gran = g_.subcluster_size;
  if (offset % gran || (end % gran && end != virtual_size_))
    return fail(ENOTSUP,
                path_ + ": write_zeroes needs " + std::to_string(gran) + "-byte aligned ranges");
  if (header_.version < 3 && header_.backing_file)
    return fail(ENOTSUP, path_ +
                             ": a version 2 (compat 0.10) image with a backing file "
                             "cannot record zeros");
  const uint64_t c0 = offset >> g_.cluster_bits, c1 = (end - 1) >> g_.cluster_bits;
  DMU_TRY(check_not_pending(c0, c1));
  // Part of a compressed cluster cannot be zeroed in place.
  if (g_.extended_l2) {
    for (uint64_t c : {c0, c1}) {
      if (unit_mask(offset, end, c) == full_mask(c)) continue;
      DMU_ASSIGN_OR_RETURN(L2Slot s, l2_slot(c));
      if (s.table && (l2_entry(s) & kOflagCompressed))
        return fail(ENOTSUP, path_ + ": cannot zero part of the compressed cluster at guest " +
                                 hex(c << g_.cluster_bits));
    }
  }
  DMU_TRY(prepare_header_for_write());
  if (header_.data_file_raw()) {
    // The raw data file must read as zeros too.
    if (auto r = data_file_->punch_hole(offset, length); !r)
      return fail(ENOTSUP,
                  path_ + ": cannot zero the raw external data file: " + r.error().message);
  }
  for (uint64_t c = c0; c <= c1; ++c)
    DMU_TRY(zero_cluster(c, unit_mask(offset, end, c), may_unmap));
  return after_operation();
}

Result<void> Qcow2Image::discard(uint64_t offset, uint64_t length) {
  DMU_TRY(check_writable());
  DMU_TRY(end_adoption());
  if (length == 0 || !range_within(offset, length, virtual_size_))
    return fail(EINVAL, path_ + ": discard of [" + std::to_string(offset) + ", +" +
                            std::to_string(length) + ") is outside the virtual disk");
  // Version 2 has no zero flag: deallocating a cluster would expose the
  // backing file's stale data, so QEMU's qcow2_co_pdiscard refuses with
  // ENOTSUP, which its block layer turns into a successful no-op (a discard
  // is advisory).  The written data stays, exactly as there.
  if (header_.version < 3 && header_.backing_file) return {};
  // Only whole clusters are discarded (and the partial last cluster).
  uint64_t first = *align_up(offset, g_.cluster_size);
  uint64_t last = offset + length == virtual_size_ ? virtual_size_
                                                   : align_down(offset + length, g_.cluster_size);
  if (first >= last) return {};
  const uint64_t c0 = first >> g_.cluster_bits, c1 = (last - 1) >> g_.cluster_bits;
  DMU_TRY(check_not_pending(c0, c1));
  DMU_TRY(prepare_header_for_write());
  if (data_file_) {
    // A raw data file must keep reading like the image; others just
    // release space where the file system can.
    auto r = data_file_->punch_hole(first, last - first);
    if (!r && header_.data_file_raw())
      return fail(ENOTSUP,
                  path_ + ": cannot discard in the raw external data file: " + r.error().message);
  }
  DMU_TRY(discard_clusters(c0, c1));
  return after_operation();
}

Result<void> Qcow2Image::discard_clusters(uint64_t c0, uint64_t c1) {
  const bool backing = header_.backing_file.has_value();
  for (uint64_t c = c0; c <= c1; ++c) {
    DMU_ASSIGN_OR_RETURN(L2Slot s, l2_slot(c));
    if (!s.table && !backing) continue;
    const uint64_t entry = s.table ? l2_entry(s) : 0;
    const uint64_t bitmap = s.table ? l2_bitmap(s) : 0;
    const ClusterType type = cluster_type(g_, entry, data_file_ != nullptr);
    const bool allocated = type == ClusterType::Normal || type == ClusterType::ZeroAlloc ||
                           type == ClusterType::Compressed;
    if (!backing && !allocated) continue;
    uint64_t new_entry = 0, new_bitmap = 0;
    if (g_.extended_l2)
      new_bitmap = kBitmapAllZero;
    else if (header_.version >= 3)
      new_entry = kOflagZero;
    if (new_entry == entry && new_bitmap == bitmap) continue;
    DMU_TRY(ensure_l2(c >> g_.l2_bits));
    DMU_ASSIGN_OR_RETURN(s, l2_slot(c));
    set_l2(s, new_entry, new_bitmap);
    free_cluster_entry(entry, true);  // a discard gives the space back
  }
  return {};
}

}  // namespace dmu::formats::qcow2
