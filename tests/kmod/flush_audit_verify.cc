// dmu-flush-audit verify: one pass over a dm-log-writes log, keeping the
// logged device's current and durable contents, checking every
// synced-<thread>-<seq> mark against the durable contents.
//
// When is a logged write durable?  dm-log-writes.c (6.1):
//  - normal_end_io(): a completed plain write goes on unflushed_blocks; a
//    completed FUA write goes straight on logging_blocks; a completed
//    flush appends the blocks it collected, then itself:
//        if (block->flags & LOG_FLUSH_FLAG) {
//                list_splice_tail_init(&block->list, &lc->logging_blocks);
//                list_add_tail(&block->list, &lc->logging_blocks);
//        } else if (block->flags & LOG_FUA_FLAG) {
//                list_add_tail(&block->list, &lc->logging_blocks);
//        } else
//                list_add_tail(&block->list, &lc->unflushed_blocks);
//  - log_writes_map(): the blocks a flush collects are the writes that had
//    completed when the flush was submitted:
//        if (flush_bio && !bio_sectors(bio)) {
//                list_splice_init(&lc->unflushed_blocks, &block->list);
//  - the kthread logs logging_blocks in list order.
// So a plain write is logged only inside the group [writes it covers...,
// FLUSH] of the flush that made it durable, and everything logged before a
// FLUSH entry is durable once that entry is reached: durable := current.
// A FUA write is durable on its own.  A PREFLUSH bio with data is logged as
// one FLUSH entry with data; the flush comes first, the data is durable only
// if the entry is also FUA.  A DISCARD is logged like a plain write without
// data (log_writes_map: "We don't need the data, just submit"); the range
// reads as zeros.  Plain writes left unflushed when the target is removed
// are logged by log_writes_dtr() before "dm-log-writes-end" with no FLUSH
// after them: never durable, as on the device.  Marks are queued straight on
// logging_blocks (log_mark()), so a mark follows every FLUSH entry whose
// flush completed before the mark was sent.
#include <algorithm>
#include <array>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <unordered_set>

#include "common/checked.h"
#include "tests/kmod/flush_audit.h"
#include "tests/kmod/log_writes.h"

namespace dmu::testd::audit {
namespace {

using Block = std::array<uint8_t, kUnit>;

// One 4 KiB of the logged device.  Stamped units are kept as their stamp
// (the rest is the pattern), so the contents of a device full of the
// writer's blocks cost a few dozen bytes a block; anything else is kept
// whole (the model daemon's map slots, foreign or torn data).
struct Cell {
  UnitKind kind = UnitKind::Zero;
  model::Stamp stamp{};
  std::shared_ptr<const Block> raw;  // Corrupt and Other
};

Cell cell_of(std::span<const uint8_t, kUnit> bytes) {
  Decoded d = decode_unit(bytes);
  Cell c{d.kind, d.stamp, nullptr};
  if (d.kind == UnitKind::Corrupt || d.kind == UnitKind::Other) {
    auto b = std::make_shared<Block>();
    std::copy(bytes.begin(), bytes.end(), b->begin());
    c.raw = std::move(b);
  }
  return c;
}

void materialize(const Cell* c, Block& out) {
  if (!c || c->kind == UnitKind::Zero)
    out.fill(0);
  else if (c->kind == UnitKind::Stamped)
    fill_unit(c->stamp, out);
  else
    out = *c->raw;
}

Decoded decoded_of(const Cell* c) {
  if (!c) return {};
  return {c->kind, c->stamp};
}

// The logged device: current contents, and the durable contents as the
// current ones minus what changed since the last FLUSH (undo_ holds the
// durable cell of every 4 KiB written since).
class Contents {
 public:
  explicit Contents(uint64_t meta_limit) : meta_limit_(meta_limit) {}

  // A write (data) or discard (nullptr: zeros) of [offset, offset + len).
  void apply(uint64_t offset, uint64_t len, const uint8_t* data, bool durable) {
    const uint64_t end = offset + len;
    for (uint64_t b = offset / kUnit; b * kUnit < end; ++b) {
      const uint64_t bs = b * kUnit;
      const uint64_t lo = std::max(offset, bs), hi = std::min(end, bs + kUnit);
      const uint8_t* piece = data ? data + (lo - offset) : nullptr;
      auto make = [&](const Cell* old) {
        if (lo == bs && hi == bs + kUnit) {
          if (!piece) return Cell{};
          return cell_of(std::span<const uint8_t, kUnit>(piece, kUnit));
        }
        Block tmp;
        materialize(old, tmp);
        if (piece)
          std::copy(piece, piece + (hi - lo), tmp.begin() + (lo - bs));
        else
          std::fill(tmp.begin() + (lo - bs), tmp.begin() + (hi - bs), 0);
        return cell_of(tmp);
      };
      auto cur = current_.find(b);
      const Cell* old = cur == current_.end() ? nullptr : &cur->second;
      Cell next = make(old);
      if (durable) {
        if (auto u = undo_.find(b); u != undo_.end()) u->second = make(&u->second);
      } else if (!undo_.contains(b)) {
        undo_.emplace(b, old ? *old : Cell{});
      }
      if (next.kind == UnitKind::Zero) {
        if (cur != current_.end()) current_.erase(cur);
      } else if (cur != current_.end()) {
        cur->second = std::move(next);
      } else {
        current_.emplace(b, std::move(next));
      }
      if (bs < meta_limit_) {
        if (durable)
          ++meta_version_;
        else
          meta_pending_ = true;
      }
    }
  }

  void flush() {
    undo_.clear();
    if (meta_pending_) ++meta_version_;
    meta_pending_ = false;
  }

  const Cell* current(uint64_t b) const {
    auto it = current_.find(b);
    return it == current_.end() ? nullptr : &it->second;
  }
  const Cell* durable(uint64_t b) const {
    if (auto u = undo_.find(b); u != undo_.end()) return &u->second;
    return current(b);
  }
  void read_durable(uint64_t offset, std::span<uint8_t> out) const {
    Block tmp;
    size_t done = 0;
    while (done < out.size()) {
      const uint64_t at = offset + done, b = at / kUnit, in = at % kUnit;
      const size_t n = std::min<uint64_t>(kUnit - in, out.size() - done);
      materialize(durable(b), tmp);
      std::copy(tmp.begin() + in, tmp.begin() + in + n, out.begin() + done);
      done += n;
    }
  }
  // Changes whenever the durable contents below meta_limit may have changed.
  uint64_t meta_version() const { return meta_version_; }

 private:
  uint64_t meta_limit_;
  std::unordered_map<uint64_t, Cell> current_;
  std::unordered_map<uint64_t, Cell> undo_;
  bool meta_pending_ = false;
  uint64_t meta_version_ = 0;
};

struct MarkSeen {
  uint64_t seq;
  std::string text;
  uint64_t entry;
};

struct ThreadState {
  std::unordered_map<uint64_t, std::vector<uint64_t>> writes;  // write offset -> seqs, sorted
  std::unordered_set<uint64_t> seen;                           // seqs seen in the log
  std::vector<MarkSeen> marks;                                 // by seq
};

struct Finding {
  Problem problem;
  std::string detail;
};

class Auditor {
 public:
  Auditor(const VerifyOptions& o, uint64_t block_size, const std::optional<Journal>& journal,
          Report& report)
      : layout_(o.layout),
        block_size_(block_size),
        max_failures_(o.max_failures),
        inferred_(!journal),
        report_(report),
        contents_(o.layout == Layout::Model ? model::kDataStart : 0) {
    if (journal) {
      report_.run = journal->run;
      report_.run_known = true;
      for (const auto& w : journal->writes) threads_[w.thread].writes[w.offset].push_back(w.seq);
      for (auto& [t, s] : threads_)
        for (auto& [off, seqs] : s.writes) std::sort(seqs.begin(), seqs.end());
      for (const auto& s : journal->syncs) synced_.insert({s.thread, s.seq});
    }
  }

  void on_entry(const log_writes::Entry& e, const std::vector<uint8_t>& data) {
    if (e.is_mark()) {
      if (auto m = parse_mark(e.mark)) check_mark(e, *m);
      return;
    }
    if (e.is_flush()) {
      contents_.flush();
      ++report_.flushes;
    }
    if (e.is_discard()) {
      contents_.apply(e.offset, e.length, nullptr, false);
      return;
    }
    if (e.length == 0) return;
    contents_.apply(e.offset, e.length, data.data(), e.is_fua());
    observe(e);
  }

  void finish() {
    for (const auto& [thread, seq] : synced_) {
      if (marks_seen_.contains({thread, seq})) continue;
      add_failure({mark_text({thread, seq}), kNotLogged, thread, 0, Problem::MissingMark,
                   "the writer put it after fdatasync returned, but the log does "
                   "not have it (log device full? logging disabled?)"});
    }
  }

 private:
  static constexpr uint64_t kNotLogged = UINT64_MAX;

  // Counts every failure; lists it unless the list is full or the same
  // write already failed the same way at an earlier mark.
  void add_failure(Failure f) {
    ++report_.failure_count;
    if (report_.failures.size() >= max_failures_) return;
    std::string key = std::to_string(f.thread) + " " + std::to_string(f.offset) + " " +
                      problem_name(f.problem) + " " + f.detail;
    if (f.problem == Problem::MissingMark) key += " " + f.mark;
    if (!listed_.insert(std::move(key)).second) return;
    report_.failures.push_back(std::move(f));
  }

  // The stamps a write entry carries: the run (first stamp seen, without a
  // journal) and, without a journal, the writes the writer made.
  void observe(const log_writes::Entry& e) {
    const uint64_t first = (e.offset + kUnit - 1) / kUnit, end = (e.offset + e.length) / kUnit;
    for (uint64_t b = first; b < end; ++b) {
      const Cell* c = contents_.current(b);
      if (!c || c->kind != UnitKind::Stamped) continue;
      const model::Stamp& s = c->stamp;
      if (!report_.run_known) {
        report_.run = s.run;
        report_.run_known = true;
      }
      if (!inferred_ || s.run != report_.run || s.offset % block_size_) continue;
      ThreadState& t = threads_[s.thread];
      if (!t.seen.insert(s.seq).second) continue;  // the same write again (a copy)
      auto& seqs = t.writes[s.offset];
      seqs.insert(std::upper_bound(seqs.begin(), seqs.end(), s.seq), s.seq);
      // A write an earlier mark of its thread covered reaches the log only now.
      auto m = std::lower_bound(t.marks.begin(), t.marks.end(), s.seq,
                                [](const MarkSeen& x, uint64_t q) { return x.seq < q; });
      if (m != t.marks.end())
        add_failure({m->text, m->entry, s.thread, s.offset, Problem::LateWrite,
                     "seq " + std::to_string(s.seq) + " reached the log only at entry " +
                         std::to_string(e.index) + ", after this mark"});
    }
  }

  void check_mark(const log_writes::Entry& e, SyncMark m) {
    ++report_.marks;
    marks_seen_.insert({m.thread, m.seq});
    ThreadState& t = threads_[m.thread];
    auto pos = std::upper_bound(t.marks.begin(), t.marks.end(), m.seq,
                                [](uint64_t q, const MarkSeen& x) { return q < x.seq; });
    t.marks.insert(pos, {m.seq, e.mark, e.index});
    std::vector<Failure> found;
    for (const auto& [offset, seqs] : t.writes) {
      auto it = std::upper_bound(seqs.begin(), seqs.end(), m.seq);
      if (it == seqs.begin()) continue;  // written only after this sync
      ++report_.checked;
      if (auto f = check_write(m.thread, offset, *(it - 1)))
        found.push_back({e.mark, e.index, m.thread, offset, f->problem, std::move(f->detail)});
    }
    std::sort(found.begin(), found.end(),
              [](const Failure& a, const Failure& b) { return a.offset < b.offset; });
    for (auto& f : found) add_failure(std::move(f));
  }

  // The write of `thread` at `offset` with at least `seq`, in every 4 KiB.
  std::optional<Finding> check_write(uint32_t thread, uint64_t offset, uint64_t seq) {
    for (uint64_t k = 0; k < block_size_; k += kUnit) {
      const uint64_t voff = offset + k;
      auto f = check_unit(thread, voff, seq);
      if (f && k) f->detail = "at +" + hex(k) + ": " + f->detail;
      if (f) return f;
    }
    return std::nullopt;
  }

  std::optional<Finding> check_unit(uint32_t thread, uint64_t voff, uint64_t seq) {
    Decoded d;
    std::string where;
    if (layout_ == Layout::Identity) {
      d = decoded_of(contents_.durable(voff / kUnit));
    } else {
      const ModelMap* map = current_map();
      if (!map) return Finding{Problem::NoMap, map_error_};
      where = " (map slot " + std::to_string(map->slot) + " generation " +
              std::to_string(map->generation) + ")";
      const uint64_t bb = map->block_bytes;
      Block tmp;
      for (uint64_t p = 0; p < kUnit; p += std::min(bb, kUnit)) {
        const uint64_t v = voff + p, vblock = v / bb;
        auto cluster = map->cluster_of(vblock);
        if (!cluster)
          return Finding{Problem::Unmapped,
                         "virtual block " + std::to_string(vblock) + " is not in the map" + where};
        auto at = checked_mul(*cluster, bb);
        auto in = at ? checked_add(*at, v % bb) : std::nullopt;
        auto dev = in ? checked_add(*in, map->data_start) : std::nullopt;
        if (!dev || *dev > (1ULL << 62))
          return Finding{Problem::Unmapped, "virtual block " + std::to_string(vblock) +
                                                " maps to cluster " + std::to_string(*cluster) +
                                                ", out of range" + where};
        if (bb >= kUnit) {  // one whole 4 KiB of the device
          d = decoded_of(contents_.durable(*dev / kUnit));
          break;
        }
        contents_.read_durable(*dev, std::span<uint8_t>(tmp.data() + p, bb));
        if (p + bb == kUnit) d = decode_unit(tmp);
      }
    }
    const model::Stamp& s = d.stamp;
    auto stamp_text = [&] {
      return "thread " + std::to_string(s.thread) + " offset " + hex(s.offset) + " seq " +
             std::to_string(s.seq);
    };
    switch (d.kind) {
      case UnitKind::Zero:
        return Finding{Problem::NoStamp, "zeros, expected seq >= " + std::to_string(seq) + where};
      case UnitKind::Other:
        return Finding{Problem::NoStamp,
                       "foreign data, expected seq >= " + std::to_string(seq) + where};
      case UnitKind::Corrupt:
        return Finding{
            Problem::Corrupt,
            "stamp of " + stamp_text() + " but the rest of the block does not match it" + where};
      case UnitKind::Stamped:
        break;
    }
    if (s.run != report_.run)
      return Finding{Problem::WrongRun, "stamp of run " + hex(s.run) + " (" + stamp_text() +
                                            "), this run is " + hex(report_.run) + where};
    if (s.thread != thread || s.offset != voff)
      return Finding{Problem::Misplaced, "holds the stamp of " + stamp_text() + where};
    if (s.seq < seq)
      return Finding{Problem::Stale, "found seq " + std::to_string(s.seq) +
                                         ", expected >= " + std::to_string(seq) + where};
    return std::nullopt;
  }

  // The newest valid map slot of the durable contents (nullptr: none).
  const ModelMap* current_map() {
    if (map_loaded_ && map_version_ == contents_.meta_version()) return map_ ? &*map_ : nullptr;
    map_loaded_ = true;
    map_version_ = contents_.meta_version();
    std::optional<ModelMap> best;
    std::string why;
    for (unsigned slot = 0; slot < 2; ++slot) {
      const uint64_t base = slot * model::kSlotBytes;
      auto m = parse_slot(slot, [&](uint64_t off, std::span<uint8_t> out) {
        contents_.read_durable(base + off, out);
      });
      if (!m) {
        why +=
            (why.empty() ? "" : "; ") + ("slot " + std::to_string(slot) + ": " + m.error().message);
        continue;
      }
      if (!best || m->generation > best->generation) best = std::move(*m);
    }
    if (best && (!map_ || map_->generation != best->generation || map_->slot != best->slot))
      ++report_.map_changes;
    map_ = std::move(best);
    map_error_ = "no valid map slot in the durable contents (" + why + ")";
    return map_ ? &*map_ : nullptr;
  }

  const Layout layout_;
  const uint64_t block_size_;
  const size_t max_failures_;
  const bool inferred_;  // the writes come from the log, not a journal
  Report& report_;
  Contents contents_;
  std::map<uint32_t, ThreadState> threads_;
  std::set<std::pair<uint32_t, uint64_t>> synced_;      // journal: syncs the writer did
  std::set<std::pair<uint32_t, uint64_t>> marks_seen_;  // synced marks in the log
  std::unordered_set<std::string> listed_;              // failures listed, without the mark
  bool map_loaded_ = false;
  uint64_t map_version_ = 0;
  std::optional<ModelMap> map_;
  std::string map_error_;
};

}  // namespace

Result<Report> verify(const VerifyOptions& o) {
  std::optional<Journal> journal;
  uint64_t block_size = o.block_size;
  if (!o.journal_path.empty()) {
    DMU_ASSIGN_OR_RETURN(Journal j, read_journal(o.journal_path));
    if (block_size && block_size != j.block_size)
      return fail(EINVAL, o.journal_path + ": the writer's block size is " +
                              std::to_string(j.block_size) + ", not " + std::to_string(block_size));
    block_size = j.block_size;
    for (const auto& w : j.writes)
      if (w.offset % block_size)
        return fail(EINVAL, o.journal_path + ": write at " + hex(w.offset) +
                                " is not aligned to the block size");
    journal = std::move(j);
  }
  if (!block_size) block_size = kUnit;
  if (block_size % kUnit || block_size > (64ULL << 20))
    return fail(EINVAL, "block size " + std::to_string(block_size) +
                            " is not a multiple of 4096 (at most 64 MiB)");
  DMU_ASSIGN_OR_RETURN(auto reader, log_writes::Reader::open(o.log_path));
  Report report;
  report.entries = reader.nr_entries();
  report.sectorsize = reader.sectorsize();
  Auditor auditor(o, block_size, journal, report);
  std::vector<uint8_t> data;
  for (;;) {
    DMU_ASSIGN_OR_RETURN(auto entry, reader.next(&data));
    if (!entry) break;
    auditor.on_entry(*entry, data);
  }
  auditor.finish();
  return report;
}

}  // namespace dmu::testd::audit
