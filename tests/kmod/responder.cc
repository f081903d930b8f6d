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
// The kernel accepts at most this many messages per answer (kmod/README.md).
constexpr size_t kMaxAnswerMessages = 256;

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
  return config_.mode == Mode::Hostile && q.type == DMU_REQ_MAP &&
         config_.blocks.overlaps(q.block, q.nr_blocks);
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
      if (config_.blocks.overlaps(q.block, q.nr_blocks))
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

HostileAnswer Responder::hostile_answer(const dmu_request& q, uint64_t sequence) const {
  const uint64_t b = std::min<uint64_t>(q.block, geometry_.blocks() - 1);
  const uint32_t wflag = is_write(q) ? DMU_EXT_WRITABLE : 0;
  const dmu_response valid = remap_extent(q.id, b, 1, 0, sector_of(b), wflag, true);
  std::vector<dmu_response> msgs;
  size_t bad_index = 0;
  bool truncated = false;
  HostileAnswer a;
  a.followup = FollowUp::Rejected;  // the kernel fails the request itself

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
      msgs = {remap_extent(q.id, b, geometry_.blocks() - b + 1, 0, sector_of(b), wflag, true)};
      break;
    case HostileKind::UnknownId:
      msgs = {remap_extent(q.id ^ kForeignIdBit, b, 1, 0, sector_of(b), wflag, true)};
      a.followup = FollowUp::Accepted;  // the real request is still pending
      break;
    case HostileKind::DuplicateFinal:
      msgs = {valid, valid};
      bad_index = 1;  // the first answer completes the request; the second is stray
      break;
    case HostileKind::Truncated:
      msgs = {valid};
      truncated = true;
      a.followup = FollowUp::Accepted;  // nothing of the write may have been processed
      break;
    case HostileKind::Garbage: {
      std::mt19937_64 rng(sequence * 0x9e3779b97f4a7c15ULL + q.id);
      dmu_response junk;
      auto* words = reinterpret_cast<uint64_t*>(&junk);
      for (size_t i = 0; i < sizeof junk / sizeof(uint64_t); ++i) words[i] = rng();
      junk.type = 0x40000000u | static_cast<uint32_t>(rng() & 0xffff);  // never a valid type
      junk.id = q.id;
      msgs = {junk};
      a.followup = FollowUp::Either;  // the kernel may or may not tie junk to the id
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
      msgs = {plain,
              copy_source(q.id, sector_of(b), geometry_.block_sectors, 0, sector_of(b), true)};
      bad_index = 1;
      break;
    }
  }
  if (sequence % 2 == 1) {
    msgs.insert(msgs.begin(), proto::invalidate(b, 1));
    ++bad_index;
  }
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
