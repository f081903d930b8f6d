// Responder implementation; see responder.h.
#include "tests/kmod/responder.h"

#include <algorithm>
#include <cstring>
#include <random>

namespace dmu::testd {
namespace {

using proto::complete;
using proto::copy_source;
using proto::remap_extent;
using proto::zero_extent;

constexpr uint64_t kMaxTrackedBlocks = uint64_t{1} << 28;  // 32 MiB of bits
constexpr size_t kPushBatchExtents = 64;
constexpr uint64_t kFarPastEndSector = uint64_t{1} << 50;  // 512 PiB
constexpr uint64_t kForeignIdBit = uint64_t{1} << 40;      // ids the kernel never issued
constexpr size_t kMaxAnswerMessages = limits::kAnswerMessages;
// Push ids of hostile answers and of the flood, apart from --push-all's.
constexpr uint64_t kHostilePushBase = uint64_t{1} << 48;
constexpr uint64_t kFloodIdBase = uint64_t{1} << 49;
constexpr uint64_t kFloodStride = 5;  // blocks between flood extents (at most 4 long)

bool is_write(const dmu_request& q) {
  return q.flags & (DMU_MAP_WRITE | DMU_MAP_DISCARD);
}

void mark_final(std::vector<dmu_response>& msgs) {
  if (!msgs.empty()) msgs.back().flags |= DMU_RSP_FINAL;
}

std::vector<uint8_t> to_bytes(const std::vector<dmu_response>& msgs) {
  std::vector<uint8_t> bytes(msgs.size() * sizeof(dmu_response));
  if (!msgs.empty()) std::memcpy(bytes.data(), msgs.data(), bytes.size());
  return bytes;
}

}  // namespace

Result<Responder> Responder::create(const DaemonConfig& config, const Geometry& g) {
  if (g.block_sectors == 0 || g.target_sectors == 0 || g.nr_devs == 0)
    return fail(EPROTO, "kernel reported an empty target (sectors " +
                            std::to_string(g.target_sectors) + ", block sectors " +
                            std::to_string(g.block_sectors) + ", devices " +
                            std::to_string(g.nr_devs) + ")");
  if (config.mode == Mode::Copy && g.nr_devs < 2)
    return fail(EINVAL, "copy mode needs two devices in the table, the target has " +
                            std::to_string(g.nr_devs));
  const bool allocates =
      config.mode == Mode::Copy || config.mode == Mode::Zero || config.mode == Mode::Model;
  if (allocates && g.writable_devs < (config.mode == Mode::Copy ? 2u : 1u))
    return fail(EINVAL, std::string(mode_name(config.mode)) + " mode writes device " +
                            (config.mode == Mode::Copy ? "1" : "0") + ", but the table has " +
                            std::to_string(g.writable_devs) + " writable devices");
  if (allocates && !(g.features & DMU_FEATURE_COPY))
    return fail(EINVAL, std::string(mode_name(config.mode)) +
                            " mode needs DMU_FEATURE_COPY, which the kernel did not grant");
  if ((config.mode == Mode::Copy || config.mode == Mode::Zero) && g.blocks() > kMaxTrackedBlocks)
    return fail(EINVAL, "target of " + std::to_string(g.blocks()) +
                            " blocks is too large for the test daemon's block map");
  if (config.push_all && config.mode != Mode::Identity)
    return fail(EINVAL, "--push-all works in identity mode only");
  if (config.push_all && !(g.features & DMU_FEATURE_PUSH))
    return fail(EINVAL, "--push-all needs DMU_FEATURE_PUSH, which the kernel did not grant");
  if (config.mode == Mode::Hostile && config.hostile == HostileKind::CopyOutsideNew &&
      !(g.features & DMU_FEATURE_COPY))
    return fail(EINVAL, "hostile kind copy-outside-new needs DMU_FEATURE_COPY");
  if (config.mode == Mode::Hostile) {
    const HostileKind k = config.hostile;
    const std::string name(hostile_name(k));
    const bool pushes = k == HostileKind::PushOpenLimit || k == HostileKind::PushTooLong ||
                        k == HostileKind::PushFillLimit || k == HostileKind::PushNewOverBusy ||
                        k == HostileKind::PushAcrossReload || k == HostileKind::PushFlood;
    const bool fills = k == HostileKind::CopyWrap || k == HostileKind::PushFillLimit ||
                       k == HostileKind::NewOverBusy || k == HostileKind::PushNewOverBusy ||
                       k == HostileKind::PushAcrossReload;
    if (pushes && !(g.features & DMU_FEATURE_PUSH))
      return fail(EINVAL, "hostile kind " + name + " needs DMU_FEATURE_PUSH");
    if (fills && !(g.features & DMU_FEATURE_COPY))
      return fail(EINVAL, "hostile kind " + name + " needs DMU_FEATURE_COPY");
    if (fills && g.writable_devs < 1)
      return fail(EINVAL, "hostile kind " + name + " writes device 0, which is read-only");
    if (k == HostileKind::WritableReadOnly && g.writable_devs >= g.nr_devs)
      return fail(EINVAL, "hostile kind " + name +
                              " needs a read-only device (table option writable_devs < nr_devs)");
    // Room for 257 distinct blocks (answers, pushes) or the flood's spread.
    const uint64_t need = k == HostileKind::PushFlood ? 2 * kFloodStride * kMaxAnswerMessages
                                                      : 2 * kMaxAnswerMessages + 2;
    if (g.blocks() < need)
      return fail(EINVAL, "hostile kind " + name + " needs a target of at least " +
                              std::to_string(need) + " blocks");
  }
  if (config.extent_blocks == 0 || config.push_extent_blocks == 0)
    return fail(EINVAL, "extent sizes must be at least one block");
  return Responder(config, g);
}

Responder::Responder(const DaemonConfig& config, const Geometry& geometry)
    : config_(config), geometry_(geometry) {
  if (config.mode == Mode::Copy || config.mode == Mode::Zero)
    allocated_.assign(geometry.blocks(), false);
}

bool Responder::hostile_for(const dmu_request& q) const {
  return config_.mode == Mode::Hostile && config_.hostile != HostileKind::PushFlood &&
         q.type == DMU_REQ_MAP && config_.blocks.overlaps(q.block, q.nr_blocks);
}

uint64_t Responder::answer_end(const dmu_request& q, bool readahead) const {
  const uint64_t limit = geometry_.blocks();
  uint64_t end = q.block + std::min<uint64_t>(q.nr_blocks, limit - q.block);
  if (readahead)
    end = std::max<uint64_t>(end,
                             q.block + std::min<uint64_t>(config_.extent_blocks, limit - q.block));
  // Never let read-ahead cover blocks whose requests must reach the daemon.
  if (config_.blocks.count && q.block < config_.blocks.start)
    end = std::min<uint64_t>(end, std::max<uint64_t>(config_.blocks.start, q.block + 1));
  return end;
}

std::vector<dmu_response> Responder::answer_map(const dmu_request& q) {
  if (q.nr_blocks == 0 || q.block >= geometry_.blocks())
    return {complete(q.id, -EIO)};  // the kernel asked for nothing sensible
  switch (config_.mode) {
    case Mode::Error:
      if (config_.blocks.overlaps(q.block, q.nr_blocks) &&
          (!config_.error_writes_only || is_write(q)))
        return {complete(q.id, -config_.error_errno)};
      return identity(q);
    case Mode::Zero:
      return zero_mode(q);
    case Mode::Copy:
      return copy_mode(q);
    case Mode::Model:
      return {complete(q.id, -EIO)};  // the daemon asks the Model instead
    case Mode::Identity:
    case Mode::Hostile:
      break;
  }
  return identity(q);
}

std::vector<dmu_response> Responder::identity(const dmu_request& q) const {
  const bool writable = is_write(q) || config_.writable_reads;
  const uint64_t end = answer_end(q, true);
  return {remap_extent(q.id, q.block, end - q.block, 0, sector_of(q.block),
                       writable ? DMU_EXT_WRITABLE : 0, true)};
}

template <class F>
uint64_t Responder::for_each_run(uint64_t begin, uint64_t end, F&& f) const {
  while (begin < end) {
    const bool state = allocated(begin);
    uint64_t run_end = begin + 1;
    while (run_end < end && allocated(run_end) == state) ++run_end;
    const uint64_t done = f(begin, run_end, state);
    if (done != run_end) return done;  // out of room in this answer
    begin = run_end;
  }
  return end;
}

std::vector<dmu_response> Responder::zero_mode(const dmu_request& q) {
  std::vector<dmu_response> out;
  if (q.flags & DMU_MAP_DISCARD) return {complete(q.id, 0)};
  auto room = [&] { return out.size() < kMaxAnswerMessages; };
  if (q.flags & DMU_MAP_WRITE) {
    // Unwritten blocks get a NEW extent without COPY: the kernel must fill
    // what the write does not cover with zeros.
    const uint64_t end =
        for_each_run(q.block, answer_end(q, false), [&](uint64_t b, uint64_t e, bool alloc) {
          if (!room()) return b;
          const uint32_t flags = DMU_EXT_WRITABLE | (alloc ? 0 : DMU_EXT_NEW);
          out.push_back(remap_extent(q.id, b, e - b, 0, sector_of(b), flags, false));
          return e;
        });
    mark_allocated(q.block, end);
  } else {
    for_each_run(q.block, answer_end(q, true), [&](uint64_t b, uint64_t e, bool alloc) {
      if (!room()) return b;
      if (alloc)
        out.push_back(remap_extent(q.id, b, e - b, 0, sector_of(b),
                                   config_.writable_reads ? DMU_EXT_WRITABLE : 0, false));
      else
        out.push_back(zero_extent(q.id, b, e - b, false));
      return e;
    });
  }
  mark_final(out);
  return out;
}

std::vector<dmu_response> Responder::copy_mode(const dmu_request& q) {
  std::vector<dmu_response> out;
  const uint32_t bs = geometry_.block_sectors;
  if (q.flags & DMU_MAP_DISCARD) return {complete(q.id, 0)};
  if (q.flags & DMU_MAP_WRITE) {
    const uint64_t end = for_each_run(
        q.block, answer_end(q, false), [&](uint64_t b, uint64_t e, bool alloc) -> uint64_t {
          if (out.size() + 2 > kMaxAnswerMessages) return b;
          if (alloc) {
            out.push_back(remap_extent(q.id, b, e - b, 1, sector_of(b), DMU_EXT_WRITABLE, false));
            return e;
          }
          // --copy-half needs one COPY per block: shorten the run to what
          // fits; the kernel asks again for the rest.
          if (config_.copy_half) e = std::min<uint64_t>(e, b + kMaxAnswerMessages - 1 - out.size());
          out.push_back(
              remap_extent(q.id, b, e - b, 1, sector_of(b), DMU_EXT_WRITABLE | DMU_EXT_NEW, false));
          if (!config_.copy_half) {
            out.push_back(copy_source(q.id, sector_of(b), (e - b) * bs, 0, sector_of(b), false));
          } else {
            // Only the first half of each block has an old copy; the kernel
            // must zero the second half (unless the write covers it).
            for (uint64_t blk = b; blk < e; ++blk)
              out.push_back(copy_source(q.id, sector_of(blk), bs / 2, 0, sector_of(blk), false));
          }
          return e;
        });
    mark_allocated(q.block, end);
  } else {
    for_each_run(q.block, answer_end(q, true), [&](uint64_t b, uint64_t e, bool alloc) {
      if (out.size() >= kMaxAnswerMessages) return b;
      if (alloc)
        out.push_back(remap_extent(q.id, b, e - b, 1, sector_of(b), DMU_EXT_WRITABLE, false));
      else
        out.push_back(remap_extent(q.id, b, e - b, 0, sector_of(b), 0, false));  // old data
      return e;
    });
  }
  mark_final(out);
  return out;
}

void Responder::mark_allocated(uint64_t begin, uint64_t end) {
  std::fill(allocated_.begin() + static_cast<ptrdiff_t>(begin),
            allocated_.begin() + static_cast<ptrdiff_t>(end), true);
}

std::string_view fate_name(Fate f) {
  switch (f) {
    case Fate::Fails:
      return "fails";
    case Fate::Pending:
      return "pending";
    case Fate::Succeeds:
      return "succeeds";
  }
  return "?";
}

size_t Responder::hostile_requests() const {
  switch (config_.hostile) {
    case HostileKind::NewOverBusy:
      return 2;
    case HostileKind::OpenMsgsLimit:
      return limits::kOpenMsgs / limits::kAnswerMessages + 1;
    default:
      return 1;
  }
}

bool Responder::floods() const {
  return config_.mode == Mode::Hostile && config_.hostile == HostileKind::PushFlood;
}

std::vector<dmu_response> Responder::flood_batch(uint64_t n) const {
  // Extents of 4 blocks in even batches, 1 block in odd ones, 5 blocks
  // apart, starting at a moving offset: never overlapping within a batch,
  // cutting the extents of earlier batches.
  const uint64_t size = n % 2 == 0 ? 4 : 1;
  const uint64_t span = kFloodStride * kMaxAnswerMessages;
  const uint64_t start = (n * 3) % (geometry_.blocks() - span);
  const uint64_t id = DMU_PUSH_ID | kFloodIdBase | n;
  std::vector<dmu_response> batch;
  for (uint64_t i = 0; i < kMaxAnswerMessages; ++i) {
    const uint64_t b = start + i * kFloodStride;
    batch.push_back(remap_extent(id, b, size, 0, sector_of(b), 0, false));
  }
  mark_final(batch);
  return batch;
}

HostileAnswer Responder::hostile_answer(std::span<const dmu_request> qs, uint64_t sequence) const {
  HostileAnswer a;
  if (qs.empty()) return a;
  const dmu_request& q = qs.back();  // the request the bad message is about
  const uint64_t blocks = geometry_.blocks();
  const uint32_t bs = geometry_.block_sectors;
  const uint64_t b = std::min<uint64_t>(q.block, blocks - 1);
  const uint32_t wflag = is_write(q) ? DMU_EXT_WRITABLE : 0;
  const dmu_response valid = remap_extent(q.id, b, 1, 0, sector_of(b), wflag, true);
  // Blocks at the end of the target, away from the hostile range, for pushes.
  auto tail_block = [&](uint64_t i) { return blocks - 1 - i; };
  std::vector<dmu_response> msgs;
  size_t bad_index = 0;
  bool truncated = false;
  Fate fate = Fate::Fails;  // the bad message names q: the kernel fails it

  switch (config_.hostile) {
    case HostileKind::BadDevice:
      msgs = {remap_extent(q.id, b, 1, geometry_.nr_devs, sector_of(b), wflag, true)};
      break;
    case HostileKind::PastEnd:
      msgs = {remap_extent(q.id, b, 1, 0, kFarPastEndSector, wflag, true)};
      break;
    case HostileKind::ZeroLength:
      msgs = {remap_extent(q.id, b, 0, 0, sector_of(b), wflag, true)};
      break;
    case HostileKind::Overlong:
      msgs = {remap_extent(q.id, b, blocks - b + 1, 0, sector_of(b), wflag, true)};
      break;
    case HostileKind::UnknownId:
      msgs = {remap_extent(q.id ^ kForeignIdBit, b, 1, 0, sector_of(b), wflag, true)};
      fate = Fate::Pending;  // names no request
      break;
    case HostileKind::DuplicateFinal:
      msgs = {valid, valid};
      bad_index = 1;  // the first answer completes the request; the second is stray
      fate = Fate::Succeeds;
      break;
    case HostileKind::Truncated:
      msgs = {valid};
      truncated = true;
      fate = Fate::Pending;  // nothing of the write() is looked at
      break;
    case HostileKind::Garbage: {
      std::mt19937_64 rng(sequence * 0x9e3779b97f4a7c15ULL + q.id);
      dmu_response junk;
      auto* words = reinterpret_cast<uint64_t*>(&junk);
      for (size_t i = 0; i < sizeof junk / sizeof(uint64_t); ++i) words[i] = rng();
      junk.type = 0x40000000u | static_cast<uint32_t>(rng() & 0xffff);  // never a valid type
      junk.id = q.id;  // junk that names the request fails it
      msgs = {junk};
      break;
    }
    case HostileKind::Reserved: {
      dmu_response r = valid;
      r.reserved = 1;
      msgs = {r};
      break;
    }
    case HostileKind::CopyOutsideNew: {
      dmu_response plain = valid;
      plain.flags = 0;  // not final: the COPY follows
      msgs = {plain, copy_source(q.id, sector_of(b), bs, 0, sector_of(b), true)};
      bad_index = 1;
      break;
    }
    case HostileKind::ExtentBlockWrap:
      // block + nr_blocks == 1 (mod 2^64): "ends" inside the target.
      msgs = {remap_extent(q.id, b, UINT64_MAX - b + 2, 0, sector_of(b), wflag, true)};
      break;
    case HostileKind::ExtentSectorWrap:
      // sector + the extent's length == 0 (mod 2^64).
      msgs = {remap_extent(q.id, b, 1, 0, UINT64_MAX - bs + 1, wflag, true)};
      break;
    case HostileKind::CopyWrap: {
      const dmu_response fresh =
          remap_extent(q.id, b, 1, 0, sector_of(b), DMU_EXT_WRITABLE | DMU_EXT_NEW, false);
      dmu_response copy = copy_source(q.id, sector_of(b), bs, 0, sector_of(b), true);
      if (sequence % 4 < 2)
        copy.sector = UINT64_MAX - bs / 2 + 1;  // source sector + nr_sectors wraps
      else {
        // virtual sector + nr_sectors wraps to the block's first sector:
        // from its second, so that block 0 wraps too (the old sum, 1 from
        // sector 0, did not wrap and made a valid COPY)
        copy.block = sector_of(b) + 1;
        copy.nr_blocks = UINT64_MAX;
      }
      msgs = {fresh, copy};
      bad_index = 1;
      break;
    }
    case HostileKind::InvalidateWrap:
      msgs = {proto::invalidate(b, UINT64_MAX - b + 2)};
      fate = Fate::Pending;  // id 0 names no request
      break;
    case HostileKind::WritableReadOnly: {
      const uint32_t ro = geometry_.writable_devs;  // the first read-only device
      const uint32_t flags = DMU_EXT_WRITABLE | (is_write(q) ? DMU_EXT_NEW : 0);
      msgs = {remap_extent(q.id, b, 1, ro, sector_of(b), flags, true)};
      break;
    }
    case HostileKind::AnswerTooLong:
      // 257 one-block extents that would be fine in number <= 256.
      for (uint64_t i = 0; i <= kMaxAnswerMessages; ++i) {
        const uint64_t blk = (b + i) % blocks;
        msgs.push_back(remap_extent(q.id, blk, 1, 0, sector_of(blk), wflag, false));
      }
      mark_final(msgs);
      bad_index = kMaxAnswerMessages;
      break;
    case HostileKind::PushOpenLimit:
      // 16 pushes left open, then a 17th: refused, and it names no request.
      for (uint64_t i = 0; i <= limits::kOpenPushes; ++i) {
        const uint64_t id = DMU_PUSH_ID | kHostilePushBase | (sequence << 16) | i;
        const uint64_t blk = tail_block(2 * i);
        msgs.push_back(remap_extent(id, blk, 1, 0, sector_of(blk), 0, false));
        if (i < limits::kOpenPushes) {
          const uint64_t blk2 = tail_block(2 * i + 1);
          a.cleanup.push_back(remap_extent(id, blk2, 1, 0, sector_of(blk2), 0, true));
        }
      }
      bad_index = limits::kOpenPushes;
      fate = Fate::Pending;
      break;
    case HostileKind::PushTooLong: {
      const uint64_t id = DMU_PUSH_ID | kHostilePushBase | (sequence << 16);
      for (uint64_t i = 0; i <= kMaxAnswerMessages; ++i) {
        const uint64_t blk = tail_block(i);
        msgs.push_back(remap_extent(id, blk, 1, 0, sector_of(blk), 0, false));
      }
      mark_final(msgs);
      bad_index = kMaxAnswerMessages;
      fate = Fate::Pending;
      break;
    }
    case HostileKind::PushFillLimit:
      // 64 pushes of one NEW block each (filled with zeros), then a 65th
      // while they fill (the VM case slows the device down).
      for (uint64_t i = 0; i <= limits::kPushFills; ++i) {
        const uint64_t id = DMU_PUSH_ID | kHostilePushBase | (sequence << 16) | i;
        const uint64_t blk = tail_block(i);
        msgs.push_back(
            remap_extent(id, blk, 1, 0, sector_of(blk), DMU_EXT_WRITABLE | DMU_EXT_NEW, true));
        if (i < limits::kPushFills) a.awaited_dones.push_back(id);
      }
      bad_index = limits::kPushFills;
      fate = Fate::Pending;
      break;
    case HostileKind::NewOverBusy: {
      // The first request gets a NEW block; the second a NEW extent over
      // both blocks while the first is being filled.
      const dmu_request& first = qs.front();
      const uint64_t b0 = std::min<uint64_t>(first.block, blocks - 1);
      if (qs.size() > 1)
        msgs.push_back(
            remap_extent(first.id, b0, 1, 0, sector_of(b0), DMU_EXT_WRITABLE | DMU_EXT_NEW, true));
      const uint64_t lo = std::min(b0, b), hi = std::max(b0, b) + 1;
      msgs.push_back(
          remap_extent(q.id, lo, hi - lo, 0, sector_of(lo), DMU_EXT_WRITABLE | DMU_EXT_NEW, true));
      bad_index = msgs.size() - 1;
      if (qs.size() > 1) a.fates.push_back({first.id, first.block, Fate::Succeeds});
      break;
    }
    case HostileKind::PushNewOverBusy: {
      const uint64_t id = DMU_PUSH_ID | kHostilePushBase | (sequence << 16);
      msgs = {remap_extent(q.id, b, 1, 0, sector_of(b), DMU_EXT_WRITABLE | DMU_EXT_NEW, true),
              remap_extent(id, b, 1, 0, sector_of(b), DMU_EXT_WRITABLE | DMU_EXT_NEW, true)};
      bad_index = 1;
      fate = Fate::Succeeds;
      break;
    }
    case HostileKind::OpenMsgsLimit:
      // Every request but the last gets 255 messages and no FINAL: room for
      // 256 each, together the room the kernel gives open answers.  The
      // last one's first message finds no room (and fails it); then each
      // open answer gets its 256th message, FINAL, and succeeds.
      for (size_t i = 0; i + 1 < qs.size(); ++i) {
        for (uint64_t k = 0; k < kMaxAnswerMessages; ++k) {
          const uint64_t blk = (qs[i].block + k) % blocks;
          const bool last = k + 1 == kMaxAnswerMessages;
          (last ? a.cleanup : msgs)
              .push_back(remap_extent(qs[i].id, blk, 1, 0, sector_of(blk), 0, last));
        }
        a.fates.push_back({qs[i].id, qs[i].block, Fate::Succeeds});
      }
      msgs.push_back(remap_extent(q.id, b, 1, 0, sector_of(b), wflag, true));
      bad_index = msgs.size() - 1;
      break;
    case HostileKind::PushAcrossReload: {
      // Each message is valid against the table live when it arrives.  The
      // open push's NEW extent is not, once the case reloaded the table
      // read-only or without the last block; its FINAL (a ZERO extent well
      // inside the target) is: only a check of the whole push at FINAL
      // refuses it, before the kernel zero-fills the last block.
      const uint64_t id = DMU_PUSH_ID | kHostilePushBase | (sequence << 16);
      const uint64_t last = tail_block(0), inside = tail_block(16);
      msgs = {valid, remap_extent(id, last, 1, 0, sector_of(last),
                                  DMU_EXT_WRITABLE | DMU_EXT_NEW, false)};
      bad_index = msgs.size();  // all of it accepted
      a.after_gate = {zero_extent(id, inside, 1, true)};
      a.after_gate_expected = -EINVAL;
      fate = Fate::Succeeds;
      break;
    }
    case HostileKind::PushFlood:
      // Not a bad answer: the flood happens at start (flood_batch()).
      msgs = {valid};
      bad_index = 1;
      fate = Fate::Succeeds;
      break;
  }
  if (sequence % 2 == 1) {
    msgs.insert(msgs.begin(), proto::invalidate(b, 1));
    ++bad_index;
  }
  a.fates.push_back({q.id, q.block, fate});
  a.bytes = to_bytes(msgs);
  if (truncated) {
    a.bytes.resize(a.bytes.size() + sizeof(dmu_response) / 2, 0);
    a.expected_return = -EINVAL;
  } else {
    a.expected_return = bad_index == 0 ? -EINVAL : static_cast<long>(bad_index * DMU_MSG_SIZE);
  }
  return a;
}

std::vector<std::vector<dmu_response>> Responder::push_batches() const {
  std::vector<std::vector<dmu_response>> batches;
  const uint64_t blocks = geometry_.blocks();
  uint64_t push_id = 0;
  for (uint64_t b = 0; b < blocks;) {
    std::vector<dmu_response> batch;
    const uint64_t id = DMU_PUSH_ID | ++push_id;
    while (b < blocks && batch.size() < kPushBatchExtents) {
      const uint64_t n = std::min(config_.push_extent_blocks, blocks - b);
      batch.push_back(remap_extent(id, b, n, 0, sector_of(b), DMU_EXT_WRITABLE, false));
      b += n;
    }
    mark_final(batch);
    batches.push_back(std::move(batch));
  }
  return batches;
}

}  // namespace dmu::testd
