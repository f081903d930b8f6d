// Map service: MAP requests for writing.
//
//   1. Snapshot how the range reads now (Chain::map), cluster-aligned so it
//      covers any allocation the engine may make for it, and put the old
//      contents that no device holds sector-wise (compressed clusters, data
//      at unaligned or out-of-file places) into the scratch store.
//   2. Image::prepare_write until the asked blocks are covered, extended so
//      every fresh (newly allocated) range is covered whole: the kernel must
//      fill all of it before DONE, or metadata would point at garbage.
//   3. Answer one WRITABLE extent per run of blocks that is contiguous on one
//      device, DMU_EXT_NEW where a block holds fresh parts, and COPY messages
//      with the old contents of every fresh range (from backing devices or
//      the scratch store; nothing for zeros) and, for parts of a NEW block
//      that were already allocated, from themselves.
//   4. Remember the preparation tokens under the request id for DONE.
#include <algorithm>
#include <iterator>

#include "common/checked.h"
#include "mapper/map_service.h"
#include "mapper/map_service_internal.h"
#include "mapper/protocol.h"

namespace dmu::mapper {

using formats::ChainMapping;
using formats::WriteTarget;

namespace {

// A writable extent may reach this far past the asked blocks when the engine
// hands out a long in-place range (raw, preallocated images).
constexpr uint64_t kWritableAhead = 16 << 20;

struct OldRun {
  uint64_t offset;
  ChainMapping mapping;
  bool scratch = false;  // old contents are read from scratch slots, block by block
  uint64_t end() const { return offset + mapping.length; }
};

}  // namespace

// The state of one write answer while it is built; abandon() undoes it.
class MapService::WriteAnswer {
 public:
  WriteAnswer(MapService& s, const dmu_request& r)
      : s_(s), r_(r), B_(s.block_size_), vsize_(s.chain_.virtual_size()) {}

  void run(std::vector<dmu_response>& out);

 private:
  Result<void> snapshot(uint64_t lo, uint64_t hi, std::vector<dmu_response>& out);
  Result<WriteTarget> prepare(uint64_t from, uint64_t to);
  Result<void> prepare_all(uint64_t start, uint64_t end);
  Result<void> build_extents();
  // Extents and COPY messages for segs_ over [lo_, cov_end_).
  Result<void> assemble();
  // Shortens the answer to the protocol's message limit.
  Result<void> fit(uint64_t start);
  Result<void> copy_old(uint64_t from, uint64_t to);
  Result<void> copy_self(const WriteTarget& t, uint64_t from, uint64_t to);
  // Appends a COPY, joined to the previous one where both are contiguous in
  // the guest and on the source and stay inside one extent.
  void add_copy(const dmu_response& c);
  // Index in extents_ of the extent holding guest sector s (extents_.size() if none).
  size_t extent_of(uint64_t sector) const;
  void abandon(const Error& e, std::vector<dmu_response>& out);

  MapService& s_;
  const dmu_request& r_;
  const uint64_t B_;
  const uint64_t vsize_;
  std::vector<OldRun> old_;
  std::map<uint64_t, size_t> old_slots_;  // block -> scratch slot with its old contents
  std::vector<size_t> pinned_;
  std::vector<WriteTarget> segs_;  // in guest order, contiguous
  uint64_t lo_ = 0, cov_end_ = 0;  // blocks [lo_/B, ceil(cov_end_/B)) are answered
  std::vector<bool> block_new_;    // per answered block
  std::vector<dmu_response> extents_, copies_;
};

Result<void> MapService::WriteAnswer::snapshot(uint64_t lo, uint64_t hi,
                                               std::vector<dmu_response>& out) {
  for (uint64_t pos = lo; pos < hi;) {
    DMU_ASSIGN_OR_RETURN(ChainMapping m, s_.chain_.map(pos, hi - pos));
    old_.push_back(OldRun{pos, m});
    pos += m.length;
  }
  for (OldRun& run : old_) {
    bool needs_scratch = run.mapping.kind == ChainMapping::Kind::Compressed;
    if (run.mapping.kind == ChainMapping::Kind::Data) {
      DMU_ASSIGN_OR_RETURN(uint64_t size, s_.device_size(run.mapping.device, true));
      needs_scratch =
          run.mapping.host_offset % 512 != 0 || run.mapping.host_offset + run.mapping.length > size;
    }
    if (!needs_scratch) continue;
    run.scratch = true;
    for (uint64_t b = run.offset / B_; b < ceil_div(run.end(), B_); ++b) {
      if (old_slots_.count(b)) continue;
      DMU_ASSIGN_OR_RETURN(size_t slot, s_.scratch_block(b, out));
      s_.scratch_->pin(slot);
      pinned_.push_back(slot);
      old_slots_[b] = slot;
    }
  }
  return {};
}

Result<WriteTarget> MapService::WriteAnswer::prepare(uint64_t from, uint64_t to) {
  formats::Image& top = s_.chain_.top();
  DMU_ASSIGN_OR_RETURN(WriteTarget t, top.prepare_write(from, to - from));
  segs_.push_back(t);  // from here on abandon() releases it
  auto end = checked_add(t.offset, t.length);
  if (t.length == 0 || t.offset > from || !end || *end <= from || *end > vsize_ ||
      t.file >= top.data_files().size())
    return fail(EIO, top.info().filename + ": engine returned write target [" + hex(t.offset) +
                         ", +" + hex(t.length) + ") for " + hex(from));
  return t;
}

Result<void> MapService::WriteAnswer::prepare_all(uint64_t start, uint64_t end) {
  uint64_t hi = end;
  for (uint64_t pos = start; pos < hi;) {
    DMU_ASSIGN_OR_RETURN(WriteTarget t, prepare(pos, hi));
    if (segs_.size() > 1 && t.offset != pos)
      return fail(EIO, s_.chain_.top().info().filename + ": write target at " + hex(t.offset) +
                           " overlaps the previous one ending at " + hex(pos));
    pos = t.offset + t.length;
    // Fresh ranges are answered whole, and so is the block the range ends in.
    if (t.fresh || pos % B_) {
      const auto block_end = align_up(pos, B_);
      if (!block_end)
        return fail(EIO, s_.chain_.top().info().filename + ": write target past 2^64");
      hi = std::max(hi, std::min(vsize_, *block_end));
    }
  }
  // The first target may start before the asked range (a cluster-aligned
  // allocation): cover the block it starts in from its beginning.
  lo_ = align_down(segs_.front().offset, B_);
  std::vector<WriteTarget> main = std::move(segs_);
  segs_.clear();
  for (uint64_t pos = lo_; pos < main.front().offset;) {
    auto t = prepare(pos, main.front().offset);
    if (t && (t->offset != pos || t->offset + t->length > main.front().offset))
      t = fail(EIO, s_.chain_.top().info().filename + ": write target at " + hex(t->offset) +
                        " does not tile the block at " + hex(lo_));
    if (!t) {
      segs_.insert(segs_.end(), main.begin(), main.end());
      return fail(t.error());
    }
    pos = t->offset + t->length;
  }
  segs_.insert(segs_.end(), main.begin(), main.end());

  const WriteTarget& last = segs_.back();
  const uint64_t last_end = last.offset + last.length;
  cov_end_ = last_end >= vsize_ ? vsize_ : std::max(hi, align_down(last_end, B_));
  cov_end_ = std::min(cov_end_, std::max(hi, align_down(lo_ + kWritableAhead, B_)));
  return {};
}

Result<void> MapService::WriteAnswer::build_extents() {
  const auto& chain = s_.chain_;
  const uint64_t first_block = lo_ / B_;
  const uint64_t nblocks = ceil_div(cov_end_, B_) - first_block;
  block_new_.assign(nblocks, false);
  size_t si = 0;
  for (uint64_t i = 0; i < nblocks; ++i) {
    const uint64_t b0 = (first_block + i) * B_;
    const uint64_t b1 = std::min(b0 + B_, cov_end_);
    while (segs_[si].offset + segs_[si].length <= b0) ++si;
    const WriteTarget& first = segs_[si];
    const unsigned dev = chain.device_index(0, first.file);
    const uint64_t host0 = first.host_offset + (b0 - first.offset);
    bool is_new = false;
    for (size_t k = si; k < segs_.size() && segs_[k].offset < b1; ++k) {
      const WriteTarget& t = segs_[k];
      const uint64_t x = std::max(t.offset, b0);
      if (chain.device_index(0, t.file) != dev ||
          t.host_offset + (x - t.offset) != host0 + (x - b0))
        return fail(EIO, chain.images().front()->info().filename + ": block at " + hex(b0) +
                             " is not contiguous on disk; it cannot be written through a " +
                             std::to_string(B_) + "-byte block");
      is_new = is_new || t.fresh;
    }
    if (host0 % 512)
      return fail(EIO, chain.images().front()->info().filename + ": write target for " + hex(b0) +
                           " at unaligned host offset " + hex(host0));
    block_new_[i] = is_new;
    const uint32_t flags = DMU_EXT_WRITABLE | (is_new ? DMU_EXT_NEW : 0);
    merge_remap(extents_,
                proto::remap_extent(r_.id, first_block + i, 1, dev, host0 / 512, flags, false),
                B_ / 512);
  }
  return {};
}

size_t MapService::WriteAnswer::extent_of(uint64_t sector) const {
  const uint64_t b = sector / (B_ / 512);
  auto it = std::upper_bound(extents_.begin(), extents_.end(), b,
                             [](uint64_t v, const dmu_response& e) { return v < e.block; });
  if (it == extents_.begin() || b >= std::prev(it)->block + std::prev(it)->nr_blocks)
    return extents_.size();
  return size_t(std::prev(it) - extents_.begin());
}

// The kernel takes a COPY only inside one NEW extent.  Two clusters (or
// subclusters) whose old contents lie side by side on the source may have
// been given places apart in the image: their extents are two, and so must
// their COPYs be.
void MapService::WriteAnswer::add_copy(const dmu_response& c) {
  if (!copies_.empty()) {
    dmu_response& last = copies_.back();
    if (last.dev == c.dev && last.block + last.nr_blocks == c.block &&
        last.sector + last.nr_blocks == c.sector && extent_of(last.block) == extent_of(c.block)) {
      last.nr_blocks += c.nr_blocks;
      return;
    }
  }
  copies_.push_back(c);
}

Result<void> MapService::WriteAnswer::copy_old(uint64_t from, uint64_t to) {
  const std::string& name = s_.chain_.top().info().filename;
  auto it = std::upper_bound(old_.begin(), old_.end(), from,
                             [](uint64_t v, const OldRun& run) { return v < run.offset; });
  if (it == old_.begin())
    return fail(EIO, name + ": fresh write target at " + hex(from) + " outside its cluster");
  for (--it; from < to; ++it) {
    if (it == old_.end() || it->offset > from)
      return fail(EIO, name + ": fresh write target at " + hex(from) + " outside its cluster");
    const uint64_t x = from, y = std::min(to, it->end());
    if (x % 512) return fail(EIO, name + ": fresh write target at unaligned " + hex(x));
    const ChainMapping& m = it->mapping;
    if (it->scratch) {
      for (uint64_t p = x; p < y;) {  // old contents from the scratch store, block by block
        const uint64_t b = p / B_, q = std::min(y, (b + 1) * B_);
        const auto slot = old_slots_.find(b);
        if (slot == old_slots_.end())
          return fail(EIO, name + ": no scratch copy of block " + std::to_string(b));
        const uint64_t src = s_.scratch_->offset_of(slot->second) + (p - b * B_);
        add_copy(proto::copy_source(r_.id, p / 512, ceil_div(q - p, 512), s_.scratch_device(),
                                    src / 512, false));
        p = q;
      }
    } else if (m.kind == ChainMapping::Kind::Data) {
      const uint64_t src = m.host_offset + (x - it->offset);
      add_copy(
          proto::copy_source(r_.id, x / 512, ceil_div(y - x, 512), m.device, src / 512, false));
    }  // Zero: the kernel fills zeros where no COPY says otherwise
    from = y;
  }
  return {};
}

Result<void> MapService::WriteAnswer::copy_self(const WriteTarget& t, uint64_t from, uint64_t to) {
  const unsigned dev = s_.chain_.device_index(0, t.file);
  const uint64_t src = t.host_offset + (from - t.offset);
  add_copy(proto::copy_source(r_.id, from / 512, ceil_div(to - from, 512), dev, src / 512, false));
  return {};
}

Result<void> MapService::WriteAnswer::assemble() {
  extents_.clear();
  copies_.clear();
  DMU_TRY(build_extents());
  const uint64_t first_block = lo_ / B_;
  for (const WriteTarget& t : segs_) {
    const uint64_t t_end = std::min(t.offset + t.length, cov_end_);
    if (t.fresh) {
      DMU_TRY(copy_old(t.offset, t_end));
      continue;
    }
    // Already-allocated parts of a NEW block keep their contents.
    for (uint64_t p = std::max(t.offset, lo_); p < t_end;) {
      const uint64_t b = p / B_, q = std::min(t_end, (b + 1) * B_);
      if (block_new_[b - first_block]) DMU_TRY(copy_self(t, p, q));
      p = q;
    }
  }
  return {};
}

Result<void> MapService::WriteAnswer::fit(uint64_t start) {
  auto ends_on_block = [&](const WriteTarget& t) {
    const uint64_t e = t.offset + t.length;
    return e % B_ == 0 || e >= vsize_;
  };
  const uint64_t first_block_end = std::min(vsize_, align_down(start, B_) + B_);
  while (extents_.size() + copies_.size() > kMaxAnswerMessages) {
    // Give back the last preparations until the rest ends on a block boundary.
    size_t keep = segs_.size();
    do {
      --keep;
    } while (keep > 0 && !ends_on_block(segs_[keep - 1]));
    if (keep == 0 || segs_[keep - 1].offset + segs_[keep - 1].length < first_block_end)
      return fail(EIO, s_.chain_.top().info().filename + ": the write at " + hex(start) +
                           " needs more than " + std::to_string(kMaxAnswerMessages) +
                           " messages (a large cluster over a fragmented backing image)");
    for (size_t j = keep; j < segs_.size(); ++j)
      (void)s_.chain_.top().write_done(segs_[j].token, false);
    segs_.resize(keep);
    cov_end_ = std::min(cov_end_, segs_.back().offset + segs_.back().length);
    DMU_TRY(assemble());
  }
  return {};
}

void MapService::WriteAnswer::abandon(const Error& e, std::vector<dmu_response>& out) {
  for (const WriteTarget& t : segs_) (void)s_.chain_.top().write_done(t.token, false);
  for (size_t slot : pinned_) s_.scratch_->unpin(slot);
  out.push_back(proto::complete(r_.id, s_.record_error(e)));
}

void MapService::WriteAnswer::run(std::vector<dmu_response>& out) {
  const formats::ImageInfo& info = s_.chain_.top().info();
  const uint64_t start = r_.block * B_;
  // The answer must cover the first block only: bound what one answer
  // prepares (and pins in the scratch store) so a huge request cannot
  // exhaust it.
  const uint64_t span =
      std::max(B_, std::min(s_.options_.max_write_span, s_.scratch_->slot_count() / 4 * B_));
  // Blocks of other answers in flight (or asked for before us) end this
  // answer; the kernel asks again for the blocks after them.
  const uint64_t busy_from = std::min(s_.in_flight_.next_start_after(r_.block),
                                      s_.waiting_blocks_.next_start_after(r_.block));
  const uint64_t end = std::min<uint64_t>({vsize_, (r_.block + r_.nr_blocks) * B_, start + span,
                                           checked_mul(busy_from, B_).value_or(vsize_)});
  // Any allocation for [start, end) lies within the clusters around it.
  const uint64_t cluster = std::max({B_, info.cluster_size, info.granularity});
  const uint64_t snap_lo = align_down(start, cluster);
  const uint64_t snap_hi = std::min(vsize_, align_up(end, cluster).value_or(vsize_));

  auto built = [&]() -> Result<void> {
    DMU_TRY(snapshot(snap_lo, snap_hi, out));
    DMU_TRY(prepare_all(start, end));
    DMU_TRY(assemble());
    DMU_TRY(fit(start));
    // answer_map refused asked blocks that are lost (see lost_); the blocks
    // answered around them (a fresh range is answered whole) must not be
    // lost either: they would be filled from the mapping the image shows.
    if (s_.lost_.overlaps(lo_ / B_, ceil_div(cov_end_, B_) - lo_ / B_))
      return fail(EIO, "the answer would cover a block whose completed write was lost");
    // The kernel writes into these ranges through a loop device that cannot
    // grow: the files must already reach them.
    for (const dmu_response& e : extents_) {
      const uint64_t bytes = std::min(e.nr_blocks * B_, vsize_ - e.block * B_);
      DMU_TRY(s_.ensure_device_size(e.dev, e.sector * 512 + bytes));
    }
    return {};
  }();
  if (!built) return abandon(built.error(), out);

  Pending p;
  for (const WriteTarget& t : segs_) p.tokens.push_back(t.token);
  p.pinned_slots = std::move(pinned_);
  for (size_t i = 0; i < block_new_.size(); ++i) {
    if (!block_new_[i]) continue;
    if (!p.nr_blocks) p.first_block = lo_ / B_ + i;
    p.nr_blocks = lo_ / B_ + i + 1 - p.first_block;
  }
  s_.add_pending(r_.id, std::move(p));
  // The guest changes these blocks: scratch copies of them go stale.
  s_.forget_scratch(r_.block, r_.nr_blocks);

  out.insert(out.end(), extents_.begin(), extents_.end());
  out.insert(out.end(), copies_.begin(), copies_.end());
  out.back().flags |= DMU_RSP_FINAL;
}

void MapService::answer_map_write(const dmu_request& r, std::vector<dmu_response>& out) {
  if (!chain_.writable()) {
    out.push_back(proto::complete(r.id, -EROFS));
    return;
  }
  WriteAnswer(*this, r).run(out);
}

}  // namespace dmu::mapper
