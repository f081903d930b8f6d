// Hostile answers of the kernel target's test daemon (tests/kmod/responder.h):
// each kind provokes exactly the write() result and request fate the protocol
// header promises, against FakeKernel where it models the rule, message by
// message where it does not (limits, fills).  tests/vm/cases/kmod-hostile.sh
// runs the same answers against the real module.
#include <gtest/gtest.h>

#include <cstring>
#include <set>
#include <span>

#include "tests/kmod/responder.h"
#include "tests/unit/fake_kernel.h"
#include "tests/unit/test_daemon_support.h"

namespace dmu::testd {
namespace {

using proto::map_request;

std::vector<dmu_response> messages(const std::vector<uint8_t>& bytes) {
  std::vector<dmu_response> out(bytes.size() / sizeof(dmu_response));
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(dmu_response));
  return out;
}

HostileAnswer answer_of(HostileKind kind, uint64_t seq, std::span<const dmu_request> qs) {
  auto r = make({.mode = Mode::Hostile, .blocks = {0, 16}, .hostile = kind});
  return r.hostile_answer(qs, seq);
}

// The kinds whose rules FakeKernel applies (field checks, ids, lengths).
// The limits (256 messages, 16 open pushes, 64 filling pushes) and extents
// being filled it does not model: those kinds are checked message by message
// below, and against the real module in tests/vm/cases/kmod-hostile.sh.
constexpr HostileKind kFakeKernelKinds[] = {
    HostileKind::BadDevice,      HostileKind::PastEnd,         HostileKind::ZeroLength,
    HostileKind::Overlong,       HostileKind::UnknownId,       HostileKind::DuplicateFinal,
    HostileKind::Truncated,      HostileKind::Garbage,         HostileKind::Reserved,
    HostileKind::CopyOutsideNew, HostileKind::ExtentBlockWrap, HostileKind::ExtentSectorWrap,
    HostileKind::CopyWrap,       HostileKind::InvalidateWrap,  HostileKind::WritableReadOnly};

// Every such kind, alone (bad message first) and after a valid prefix: the
// fake kernel, applying the header's rules, returns what the daemon
// expects, and leaves the request in the state its promised fate needs
// (failed at once, still pending for the timeout, or answered).
TEST(TestDaemonResponder, Hostile_EveryKindGetsTheWriteResultAndFateTheHeaderPromises) {
  for (HostileKind kind : kFakeKernelKinds) {
    for (uint64_t seq : {0u, 1u, 2u, 3u}) {
      SCOPED_TRACE(std::string(hostile_name(kind)) + " seq " + std::to_string(seq));
      FakeKernel k(kSectors, kBs, {kSectors, kSectors});
      k.set_writable_devs(1);
      Geometry g = geometry();
      g.writable_devs = 1;
      auto made = Responder::create({.mode = Mode::Hostile, .blocks = {0, 16}, .hostile = kind}, g);
      ASSERT_TRUE(made) << made.error().message;
      Responder& r = *made;
      const auto q = map_request(7, 3, 1, DMU_MAP_WRITE);
      k.issue(q);
      ASSERT_TRUE(r.hostile_for(q));
      ASSERT_EQ(r.hostile_requests(), 1u);
      HostileAnswer a = r.hostile_answer(q, seq);
      EXPECT_EQ(k.write_raw(a.bytes), a.expected_return);
      EXPECT_TRUE(a.cleanup.empty());
      ASSERT_EQ(a.fates.size(), 1u);
      EXPECT_EQ(a.fates[0].id, q.id);
      switch (a.fates[0].fate) {
        case Fate::Fails:
          EXPECT_FALSE(k.pending(q.id));
          EXPECT_TRUE(k.failed.count(q.id));
          break;
        case Fate::Pending:
          EXPECT_TRUE(k.pending(q.id));
          break;
        case Fate::Succeeds:
          EXPECT_FALSE(k.pending(q.id));
          EXPECT_EQ(k.completed.count(q.id), 1u);
          EXPECT_FALSE(k.failed.count(q.id));
          break;
      }
    }
  }
}

// The fates the header promises, kind by kind: a bad message naming the
// request fails it; bytes naming no request leave it to the timeout; a
// valid answer before the bad message stands.
TEST(TestDaemonResponder, Hostile_FateOfEachKind) {
  const std::pair<HostileKind, Fate> expected[] = {
      {HostileKind::BadDevice, Fate::Fails},          {HostileKind::PastEnd, Fate::Fails},
      {HostileKind::ZeroLength, Fate::Fails},         {HostileKind::Overlong, Fate::Fails},
      {HostileKind::UnknownId, Fate::Pending},        {HostileKind::DuplicateFinal, Fate::Succeeds},
      {HostileKind::Truncated, Fate::Pending},        {HostileKind::Garbage, Fate::Fails},
      {HostileKind::Reserved, Fate::Fails},           {HostileKind::CopyOutsideNew, Fate::Fails},
      {HostileKind::ExtentBlockWrap, Fate::Fails},    {HostileKind::ExtentSectorWrap, Fate::Fails},
      {HostileKind::CopyWrap, Fate::Fails},           {HostileKind::InvalidateWrap, Fate::Pending},
      {HostileKind::WritableReadOnly, Fate::Fails},   {HostileKind::AnswerTooLong, Fate::Fails},
      {HostileKind::PushOpenLimit, Fate::Pending},    {HostileKind::PushTooLong, Fate::Pending},
      {HostileKind::PushFillLimit, Fate::Pending},    {HostileKind::NewOverBusy, Fate::Fails},
      {HostileKind::PushNewOverBusy, Fate::Succeeds}, {HostileKind::OpenMsgsLimit, Fate::Fails},
      {HostileKind::PushAcrossReload, Fate::Succeeds},
  };
  EXPECT_EQ(std::size(expected) + 1, std::size(kAllHostileKinds));  // + push-flood
  for (auto [kind, fate] : expected) {
    SCOPED_TRACE(std::string(hostile_name(kind)));
    Geometry g = geometry();
    g.writable_devs = 1;
    auto r = Responder::create({.mode = Mode::Hostile, .blocks = {0, 16}, .hostile = kind}, g);
    ASSERT_TRUE(r) << r.error().message;
    const auto q = map_request(7, 3, 1, DMU_MAP_WRITE);
    const auto a = r->hostile_answer(q, 0);
    ASSERT_FALSE(a.fates.empty());
    EXPECT_EQ(a.fates.back().id, q.id);
    EXPECT_EQ(fate_name(a.fates.back().fate), fate_name(fate));
  }
}

// Wrap-around values: each message is bad only because a sum wraps 2^64.
TEST(TestDaemonResponder, Hostile_WrapKindsWrapExactly) {
  const auto q = map_request(7, 3, 1, 0);
  auto block = messages(answer_of(HostileKind::ExtentBlockWrap, 0, {&q, 1}).bytes);
  ASSERT_EQ(block.size(), 1u);
  EXPECT_EQ(block[0].block + block[0].nr_blocks, 1u);  // wrapped
  EXPECT_GT(block[0].nr_blocks, block[0].block);
  auto sector = messages(answer_of(HostileKind::ExtentSectorWrap, 0, {&q, 1}).bytes);
  EXPECT_EQ(sector[0].sector + sector[0].nr_blocks * kBs, 0u);
  EXPECT_EQ(sector[0].nr_blocks, 1u);
  auto src = messages(answer_of(HostileKind::CopyWrap, 0, {&q, 1}).bytes);
  ASSERT_EQ(src.size(), 2u);
  EXPECT_EQ(src[0].ext_flags, uint32_t{DMU_EXT_WRITABLE | DMU_EXT_NEW});
  EXPECT_LT(src[1].sector + src[1].nr_blocks, src[1].sector);  // source wraps
  auto virt = messages(answer_of(HostileKind::CopyWrap, 2, {&q, 1}).bytes);
  EXPECT_LT(virt[1].block + virt[1].nr_blocks, virt[1].block);  // virtual sector wraps
  for (uint64_t seq = 0; seq < 4; ++seq) {  // block 0 too, whichever variant it gets
    const auto q0 = map_request(9, 0, 1, 0);
    auto c = messages(answer_of(HostileKind::CopyWrap, seq, {&q0, 1}).bytes);
    const dmu_response& copy = c.back();
    EXPECT_TRUE(copy.block + copy.nr_blocks < copy.block || copy.sector + copy.nr_blocks < copy.sector)
        << "seq " << seq;
  }
  auto inv = messages(answer_of(HostileKind::InvalidateWrap, 0, {&q, 1}).bytes);
  EXPECT_EQ(inv[0].type, uint32_t{DMU_RSP_INVALIDATE});
  EXPECT_EQ(inv[0].id, 0u);
  EXPECT_EQ(inv[0].block + inv[0].nr_blocks, 1u);
}

// The limit kinds: exactly one message past the documented limit, all the
// messages before it valid on their own, write() consuming up to it.
TEST(TestDaemonResponder, Hostile_LimitKindsGoOnePastTheLimit) {
  const auto q = map_request(7, 3, 1, DMU_MAP_WRITE);
  {
    auto a = answer_of(HostileKind::AnswerTooLong, 0, {&q, 1});
    auto m = messages(a.bytes);
    ASSERT_EQ(m.size(), 257u);
    std::set<uint64_t> blocks;
    for (size_t i = 0; i < m.size(); ++i) {
      EXPECT_EQ(m[i].id, q.id);
      EXPECT_EQ(m[i].flags, i + 1 == m.size() ? uint32_t{DMU_RSP_FINAL} : 0u);
      blocks.insert(m[i].block);
    }
    EXPECT_EQ(blocks.size(), 257u);  // no overlap: only the count is wrong
    EXPECT_EQ(a.expected_return, 256 * 64);
  }
  {
    auto a = answer_of(HostileKind::PushOpenLimit, 1, {&q, 1});
    auto m = messages(a.bytes);
    ASSERT_EQ(m.size(), 18u);  // INVALIDATE, 16 open pushes, the 17th
    std::set<uint64_t> ids;
    for (size_t i = 1; i < m.size(); ++i) {
      EXPECT_TRUE(proto::is_push_id(m[i].id));
      EXPECT_EQ(m[i].flags, 0u);
      ids.insert(m[i].id);
    }
    EXPECT_EQ(ids.size(), 17u);
    EXPECT_EQ(a.expected_return, 17 * 64);
    ASSERT_EQ(a.cleanup.size(), 16u);  // FINAL for each open push
    for (size_t i = 0; i < 16; ++i) {
      EXPECT_EQ(a.cleanup[i].id, m[i + 1].id);
      EXPECT_EQ(a.cleanup[i].flags, uint32_t{DMU_RSP_FINAL});
      EXPECT_NE(a.cleanup[i].block, m[i + 1].block);
    }
    EXPECT_EQ(a.fates[0].fate, Fate::Pending);
  }
  {
    auto a = answer_of(HostileKind::PushTooLong, 0, {&q, 1});
    auto m = messages(a.bytes);
    ASSERT_EQ(m.size(), 257u);
    for (const auto& x : m) EXPECT_EQ(x.id, m[0].id);
    EXPECT_TRUE(proto::is_push_id(m[0].id));
    EXPECT_EQ(m.back().flags, uint32_t{DMU_RSP_FINAL});
    EXPECT_EQ(a.expected_return, 256 * 64);
  }
  {
    auto a = answer_of(HostileKind::PushFillLimit, 0, {&q, 1});
    auto m = messages(a.bytes);
    ASSERT_EQ(m.size(), 65u);
    std::set<uint64_t> ids, blocks;
    for (const auto& x : m) {
      EXPECT_EQ(x.ext_flags, uint32_t{DMU_EXT_WRITABLE | DMU_EXT_NEW});
      EXPECT_EQ(x.flags, uint32_t{DMU_RSP_FINAL});
      ids.insert(x.id);
      blocks.insert(x.block);
      EXPECT_GE(x.block, 16u);  // away from the hostile range
    }
    EXPECT_EQ(ids.size(), 65u);
    EXPECT_EQ(blocks.size(), 65u);
    EXPECT_EQ(a.expected_return, 64 * 64);
    EXPECT_EQ(a.awaited_dones.size(), 64u);
  }
  {
    auto r = make({.mode = Mode::Hostile, .blocks = {0, 80}, .hostile = HostileKind::OpenMsgsLimit});
    ASSERT_EQ(r.hostile_requests(), 65u);
    std::vector<dmu_request> qs;
    for (uint64_t i = 0; i < 65; ++i) qs.push_back(map_request(100 + i, i, 1, 0));
    auto a = r.hostile_answer(qs, 0);
    auto m = messages(a.bytes);
    ASSERT_EQ(m.size(), 64u * 255 + 1);
    for (size_t i = 0; i + 1 < m.size(); ++i) {
      EXPECT_EQ(m[i].id, 100 + i / 255);
      EXPECT_EQ(m[i].flags, 0u);  // no FINAL: every answer stays open
    }
    EXPECT_EQ(m.back().id, 164u);
    EXPECT_EQ(a.expected_return, 64 * 255 * 64);
    ASSERT_EQ(a.cleanup.size(), 64u);  // then each answer's 256th message, FINAL
    for (size_t i = 0; i < 64; ++i) {
      EXPECT_EQ(a.cleanup[i].id, 100 + i);
      EXPECT_EQ(a.cleanup[i].flags, uint32_t{DMU_RSP_FINAL});
      EXPECT_EQ(a.cleanup[i].block, i + 255);  // past the answer's other 255 blocks
    }
    ASSERT_EQ(a.fates.size(), 65u);
    EXPECT_EQ(a.fates[0].fate, Fate::Succeeds);
    EXPECT_EQ(a.fates[63].fate, Fate::Succeeds);
    EXPECT_EQ(a.fates[64].fate, Fate::Fails);
  }
}

TEST(TestDaemonResponder, Hostile_NewOverBusyAnswersTheFirstThenOverlapsIt) {
  const dmu_request qs[] = {map_request(7, 3, 1, DMU_MAP_WRITE),
                            map_request(8, 5, 1, DMU_MAP_WRITE)};
  auto r = make({.mode = Mode::Hostile, .blocks = {0, 16}, .hostile = HostileKind::NewOverBusy});
  EXPECT_EQ(r.hostile_requests(), 2u);
  auto a = r.hostile_answer(qs, 1);
  auto m = messages(a.bytes);
  ASSERT_EQ(m.size(), 3u);
  EXPECT_EQ(proto::describe(m[1]),
            "EXTENT id=7 block=3+1 REMAP dev=0 sector=24 writable new final");
  EXPECT_EQ(proto::describe(m[2]),
            "EXTENT id=8 block=3+3 REMAP dev=0 sector=24 writable new final");
  EXPECT_EQ(a.expected_return, 2 * 64);
  ASSERT_EQ(a.fates.size(), 2u);
  EXPECT_EQ(a.fates[0].id, 7u);
  EXPECT_EQ(a.fates[0].fate, Fate::Succeeds);
  EXPECT_EQ(a.fates[1].id, 8u);
  EXPECT_EQ(a.fates[1].fate, Fate::Fails);

  auto p = answer_of(HostileKind::PushNewOverBusy, 0, {&qs[0], 1});
  auto pm = messages(p.bytes);
  ASSERT_EQ(pm.size(), 2u);
  EXPECT_EQ(pm[0].id, 7u);
  EXPECT_TRUE(proto::is_push_id(pm[1].id));
  EXPECT_EQ(pm[1].block, pm[0].block);
  EXPECT_EQ(pm[1].ext_flags, uint32_t{DMU_EXT_WRITABLE | DMU_EXT_NEW});
  EXPECT_EQ(p.expected_return, 64);
}

// push-across-reload: every message valid against the table it meets;
// only the push's NEW extent on the last block goes bad with a reload, and
// its FINAL (sent after the gate) is a ZERO extent well inside the target.
TEST(TestDaemonResponder, Hostile_PushAcrossReloadLeavesThePushOpenUntilTheGate) {
  const auto q = map_request(7, 3, 1, 0);
  auto a = answer_of(HostileKind::PushAcrossReload, 0, {&q, 1});
  auto m = messages(a.bytes);
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[0].id, 7u);
  EXPECT_EQ(m[0].flags, uint32_t{DMU_RSP_FINAL});
  EXPECT_TRUE(proto::is_push_id(m[1].id));
  EXPECT_EQ(m[1].flags, 0u);
  EXPECT_EQ(m[1].block, kSectors / kBs - 1);
  EXPECT_EQ(m[1].ext_flags, uint32_t{DMU_EXT_WRITABLE | DMU_EXT_NEW});
  EXPECT_EQ(a.expected_return, 2 * 64);
  ASSERT_EQ(a.after_gate.size(), 1u);
  EXPECT_EQ(a.after_gate[0].id, m[1].id);
  EXPECT_EQ(a.after_gate[0].flags, uint32_t{DMU_RSP_FINAL});
  EXPECT_EQ(a.after_gate[0].kind, uint32_t{DMU_EXT_ZERO});
  EXPECT_LT(a.after_gate[0].block + 8, m[1].block);
  EXPECT_EQ(a.after_gate_expected, -EINVAL);
  ASSERT_EQ(a.fates.size(), 1u);
  EXPECT_EQ(a.fates[0].fate, Fate::Succeeds);
}

TEST(TestDaemonResponder, Hostile_KindsRefuseTargetsThatCannotShowThem) {
  auto ro = Responder::create(
      {.mode = Mode::Hostile, .blocks = {0, 4}, .hostile = HostileKind::WritableReadOnly},
      geometry());
  EXPECT_FALSE(ro);  // every device writable
  Geometry small{8 * 100, kBs, 2, DMU_FEATURE_ALL};
  EXPECT_FALSE(Responder::create(
      {.mode = Mode::Hostile, .blocks = {0, 4}, .hostile = HostileKind::AnswerTooLong}, small));
  Geometry nopush{kSectors, kBs, 2, DMU_FEATURE_COPY};
  EXPECT_FALSE(Responder::create(
      {.mode = Mode::Hostile, .blocks = {0, 4}, .hostile = HostileKind::PushTooLong}, nopush));
  EXPECT_FALSE(Responder::create(
      {.mode = Mode::Hostile, .blocks = {0, 4}, .hostile = HostileKind::PushFlood}, geometry()));
}

TEST(TestDaemonResponder, Hostile_FloodBatchesAreFullDistinctAndCutEachOther) {
  Geometry big{8 * 4096, kBs, 1, DMU_FEATURE_ALL};
  auto r = Responder::create(
      {.mode = Mode::Hostile, .blocks = {0, 1}, .hostile = HostileKind::PushFlood}, big);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_TRUE(r->floods());
  EXPECT_FALSE(r->hostile_for(map_request(1, 0, 1, 0)));  // served as identity
  std::set<uint64_t> ids;
  for (uint64_t n = 0; n < 50; ++n) {
    auto b = r->flood_batch(n);
    ASSERT_EQ(b.size(), 256u);
    ids.insert(b[0].id);
    EXPECT_TRUE(proto::is_push_id(b[0].id));
    EXPECT_EQ(b.back().flags, uint32_t{DMU_RSP_FINAL});
    for (size_t i = 0; i < b.size(); ++i) {
      EXPECT_EQ(b[i].id, b[0].id);
      EXPECT_EQ(b[i].ext_flags, 0u);  // read-only: no fills, no DONE
      EXPECT_LE(b[i].block + b[i].nr_blocks, 4096u);
      if (i) {
        EXPECT_GE(b[i].block, b[i - 1].block + b[i - 1].nr_blocks);
      }
    }
  }
  EXPECT_EQ(ids.size(), 50u);
  EXPECT_NE(r->flood_batch(0)[0].nr_blocks, r->flood_batch(1)[0].nr_blocks);
}

TEST(TestDaemonResponder, Hostile_OnlyRequestsTouchingTheRangeAreHostile) {
  auto r = make({.mode = Mode::Hostile, .extent_blocks = 64, .blocks = {100, 4}});
  EXPECT_TRUE(r.hostile_for(map_request(1, 103, 1, 0)));
  EXPECT_TRUE(r.hostile_for(map_request(1, 98, 4, 0)));
  EXPECT_FALSE(r.hostile_for(map_request(1, 104, 1, 0)));
  auto a = r.answer_map(map_request(2, 50, 1, 0));
  EXPECT_EQ(a[0].block + a[0].nr_blocks, 100u);  // read-ahead stops before the range
}

}  // namespace
}  // namespace dmu::testd
