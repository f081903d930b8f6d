// The kernel target's test daemon (tests/kmod/) against FakeKernel: each mode
// answers as the VM cases rely on (its hostile answers: test_daemon_hostile_test.cc),
// the loop sends hostile answers as promised, commits wait for the configured delay
// without holding up MAP answers, and rejected messages do not swallow the
// rest of a batch.  tests/vm/cases/kmod-*.sh run the same daemon against the
// real module.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <span>
#include <sstream>

#include "tests/kmod/daemon.h"
#include "tests/kmod/responder.h"
#include "tests/unit/fake_kernel.h"
#include "tests/unit/test_daemon_support.h"

namespace dmu::testd {
namespace {

using proto::map_request;

TEST(TestDaemonResponder, Identity_ReadMapsSameSectorOnDev0ReadOnly) {
  auto r = make({});
  auto a = r.answer_map(map_request(1, 10, 2, 0));
  ASSERT_EQ(a.size(), 1u);
  EXPECT_EQ(proto::describe(a[0]), "EXTENT id=1 block=10+2 REMAP dev=0 sector=80 final");
}

TEST(TestDaemonResponder, Identity_WriteAndWritableReadsGetWritableExtents) {
  auto r = make({});
  EXPECT_EQ(r.answer_map(map_request(1, 10, 1, DMU_MAP_WRITE))[0].ext_flags,
            uint32_t{DMU_EXT_WRITABLE});
  auto w = make({.writable_reads = true});
  EXPECT_EQ(w.answer_map(map_request(2, 10, 1, 0))[0].ext_flags, uint32_t{DMU_EXT_WRITABLE});
}

TEST(TestDaemonResponder, Identity_ExtentBlocksReadsAheadButStopsAtTargetEnd) {
  auto r = make({.extent_blocks = 64});
  EXPECT_EQ(r.answer_map(map_request(1, 100, 1, 0))[0].nr_blocks, 64u);
  EXPECT_EQ(r.answer_map(map_request(2, 1000, 1, 0))[0].nr_blocks, 24u);  // 1024 - 1000
  EXPECT_EQ(r.answer_map(map_request(3, 100, 80, 0))[0].nr_blocks, 80u);  // request is longer
}

TEST(TestDaemonResponder, Error_FailsRequestsTouchingTheRangeWithTheErrno) {
  auto r =
      make({.mode = Mode::Error, .extent_blocks = 64, .blocks = {200, 10}, .error_errno = ENOSPC});
  auto a = r.answer_map(map_request(1, 205, 1, 0));
  ASSERT_EQ(a.size(), 1u);
  EXPECT_EQ(proto::describe(a[0]), "COMPLETE id=1 status=-28 final");
  EXPECT_EQ(r.answer_map(map_request(2, 195, 10, DMU_MAP_WRITE))[0].type,
            uint32_t{DMU_RSP_COMPLETE});
  // Read-ahead before the range stops at its first block, so its requests
  // still reach the daemon.
  auto before = r.answer_map(map_request(3, 180, 1, 0));
  EXPECT_EQ(before[0].block + before[0].nr_blocks, 200u);
  EXPECT_EQ(r.answer_map(map_request(4, 210, 1, 0))[0].kind, uint32_t{DMU_EXT_REMAP});
}

TEST(TestDaemonResponder, Zero_ReadsAreZeroUntilWrittenThenRemapped) {
  auto r = make({.mode = Mode::Zero, .extent_blocks = 16});
  auto read = r.answer_map(map_request(1, 0, 1, 0));
  ASSERT_EQ(read.size(), 1u);
  EXPECT_EQ(proto::describe(read[0]), "EXTENT id=1 block=0+16 ZERO final");
  auto write = r.answer_map(map_request(2, 4, 2, DMU_MAP_WRITE));
  ASSERT_EQ(write.size(), 1u);  // NEW without COPY: the kernel fills zeros
  EXPECT_EQ(proto::describe(write[0]),
            "EXTENT id=2 block=4+2 REMAP dev=0 sector=32 writable new final");
  auto again = r.answer_map(map_request(3, 0, 1, 0));
  ASSERT_EQ(again.size(), 3u);  // zero 0..3, remap 4..5, zero 6..15
  EXPECT_EQ(again[0].kind, uint32_t{DMU_EXT_ZERO});
  EXPECT_EQ(again[0].nr_blocks, 4u);
  EXPECT_EQ(proto::describe(again[1]), "EXTENT id=3 block=4+2 REMAP dev=0 sector=32");
  EXPECT_EQ(again[2].block, 6u);
  EXPECT_EQ(again[2].flags, uint32_t{DMU_RSP_FINAL});
}

TEST(TestDaemonResponder, Copy_WriteGetsNewExtentOnDev1WithCopyFromDev0) {
  auto r = make({.mode = Mode::Copy});
  auto a = r.answer_map(map_request(5, 3, 2, DMU_MAP_WRITE));
  ASSERT_EQ(a.size(), 2u);
  EXPECT_EQ(proto::describe(a[0]), "EXTENT id=5 block=3+2 REMAP dev=1 sector=24 writable new");
  EXPECT_EQ(proto::describe(a[1]), "COPY id=5 vsector=24+16 from dev=0 sector=24 final");
  EXPECT_TRUE(r.allocated(3));
  EXPECT_TRUE(r.allocated(4));
  EXPECT_FALSE(r.allocated(5));
}

TEST(TestDaemonResponder, Copy_ReadsOldDataReadOnlyUntilAllocated) {
  auto r = make({.mode = Mode::Copy, .writable_reads = true, .extent_blocks = 4});
  r.answer_map(map_request(1, 2, 1, DMU_MAP_WRITE));
  auto a = r.answer_map(map_request(2, 0, 1, 0));
  ASSERT_EQ(a.size(), 3u);
  EXPECT_EQ(proto::describe(a[0]), "EXTENT id=2 block=0+2 REMAP dev=0 sector=0");
  EXPECT_EQ(proto::describe(a[1]), "EXTENT id=2 block=2+1 REMAP dev=1 sector=16 writable");
  EXPECT_EQ(proto::describe(a[2]), "EXTENT id=2 block=3+1 REMAP dev=0 sector=24 final");
}

TEST(TestDaemonResponder, CopyHalf_CopiesOnlyTheFirstHalfOfEachBlock) {
  auto r = make({.mode = Mode::Copy, .copy_half = true});
  auto a = r.answer_map(map_request(1, 10, 2, DMU_MAP_WRITE));
  ASSERT_EQ(a.size(), 3u);
  EXPECT_EQ(proto::describe(a[1]), "COPY id=1 vsector=80+4 from dev=0 sector=80");
  EXPECT_EQ(proto::describe(a[2]), "COPY id=1 vsector=88+4 from dev=0 sector=88 final");
}

TEST(TestDaemonResponder, CopyHalf_LongWriteIsCutToTheKernelsMessageLimit) {
  auto r = make({.mode = Mode::Copy, .copy_half = true});
  auto a = r.answer_map(map_request(1, 0, 300, DMU_MAP_WRITE));
  ASSERT_EQ(a.size(), 256u);  // one NEW extent + 255 COPY
  EXPECT_EQ(a[0].block, 0u);
  EXPECT_EQ(a[0].nr_blocks, 255u);
  EXPECT_EQ(a.back().flags, uint32_t{DMU_RSP_FINAL});
  EXPECT_TRUE(r.allocated(254));
  EXPECT_FALSE(r.allocated(255));  // asked again later, then allocated
  auto rest = r.answer_map(map_request(2, 255, 45, DMU_MAP_WRITE));
  EXPECT_EQ(rest.size(), 46u);
}

TEST(TestDaemonResponder, Zero_AlternatingBlocksStayWithinTheMessageLimit) {
  auto r = make({.mode = Mode::Zero, .extent_blocks = 1024});
  for (uint64_t b = 0; b < 1024; b += 2) r.answer_map(map_request(b + 1, b, 1, DMU_MAP_WRITE));
  auto a = r.answer_map(map_request(5000, 0, 1, 0));
  EXPECT_EQ(a.size(), 256u);
  EXPECT_EQ(a.back().flags, uint32_t{DMU_RSP_FINAL});
}

TEST(TestDaemonResponder, Create_RefusesModesTheTargetCannotServe) {
  DaemonConfig copy{.mode = Mode::Copy};
  EXPECT_FALSE(Responder::create(copy, geometry(1)));
  Geometry no_copy = geometry();
  no_copy.features = DMU_FEATURE_PUSH;
  EXPECT_FALSE(Responder::create(copy, no_copy));
  EXPECT_FALSE(Responder::create({.mode = Mode::Zero, .push_all = true}, geometry()));
  Geometry no_push = geometry();
  no_push.features = DMU_FEATURE_COPY;
  EXPECT_FALSE(Responder::create({.push_all = true}, no_push));
  Geometry read_only = geometry();
  read_only.writable_devs = 0;  // the table's writable_devs 0
  EXPECT_FALSE(Responder::create({.mode = Mode::Model}, read_only));
  EXPECT_FALSE(Responder::create({.mode = Mode::Model}, no_copy));
  EXPECT_TRUE(Responder::create({.mode = Mode::Model}, geometry(1)));
  EXPECT_FALSE(Responder::create({.mode = Mode::Copy}, [] {
    Geometry one_writable = geometry(2);
    one_writable.writable_devs = 1;
    return one_writable;
  }()));
}

TEST(TestDaemonResponder, PushBatches_CoverTheTargetOnceWithPushIdsEachEndingFinal) {
  auto r = make({.push_all = true, .push_extent_blocks = 10});
  auto batches = r.push_batches();
  uint64_t next = 0;
  std::set<uint64_t> ids;
  for (const auto& b : batches) {
    ASSERT_FALSE(b.empty());
    for (size_t i = 0; i < b.size(); ++i) {
      EXPECT_TRUE(proto::is_push_id(b[i].id));
      EXPECT_EQ(b[i].id, b[0].id);
      EXPECT_EQ(b[i].block, next);
      EXPECT_EQ(b[i].sector, next * kBs);
      EXPECT_EQ(b[i].ext_flags, uint32_t{DMU_EXT_WRITABLE});
      EXPECT_EQ(b[i].flags == DMU_RSP_FINAL, i + 1 == b.size());
      next += b[i].nr_blocks;
    }
    ids.insert(b[0].id);
  }
  EXPECT_EQ(next, 1024u);
  EXPECT_EQ(ids.size(), batches.size());
}

// --- The fake kernel's protocol-2 rules -------------------------------------

std::vector<dmu_request> read_all(FakeKernel& k) {
  std::vector<dmu_request> got(64);
  auto n = k.read_requests(got, std::chrono::milliseconds(0));
  got.resize(n ? *n : 0);
  return got;
}

void answer(FakeKernel& k, const dmu_response& r) {
  auto w = k.write_responses({&r, 1});
  ASSERT_TRUE(w && w->complete());
}

TEST(FakeKernel, DoneRepeatsTheMapAndRecordsAreListedInApplicationOrder) {
  FakeKernel k(kSectors, kBs, {kSectors});
  k.issue(map_request(1, 5, 2, DMU_MAP_WRITE));
  k.issue(map_request(2, 9, 1, DMU_MAP_DISCARD));
  read_all(k);
  answer(k, proto::remap_extent(1, 5, 2, 0, 40, DMU_EXT_WRITABLE | DMU_EXT_NEW, true));
  answer(k, proto::complete(2, 0));
  EXPECT_EQ(k.bind_info().allocations, 2u);
  auto listed = *k.list_allocations();
  ASSERT_EQ(listed.size(), 2u);
  EXPECT_EQ(proto::describe(listed[0]), "ALLOC id=1 block=5+2 dev=0 sector=40");
  EXPECT_EQ(proto::describe(listed[1]), "DISCARD id=2 block=9+1");
  EXPECT_FALSE(k.finish(2));  // the write applied before it has not reported DONE
  EXPECT_TRUE(k.finish(1));
  EXPECT_TRUE(k.finish(2));
  EXPECT_FALSE(k.finish(2));  // once
  auto dones = read_all(k);
  ASSERT_EQ(dones.size(), 2u);
  EXPECT_EQ(proto::describe(dones[0]), "DONE id=1 block=5+2 write status=0");
  EXPECT_EQ(proto::describe(dones[1]), "DONE id=2 block=9+1 discard status=0");
  EXPECT_EQ(proto::describe((*k.list_allocations())[1]), "DISCARD id=2 block=9+1 done");
}

TEST(FakeKernel, CommittedPublishesOnlyDonesReadBeforeTheCommit) {
  FakeKernel k(kSectors, kBs, {kSectors});
  k.auto_done = true;
  k.issue(map_request(1, 0, 1, DMU_MAP_WRITE));
  k.issue(map_request(2, 1, 1, DMU_MAP_WRITE));
  read_all(k);
  answer(k, proto::remap_extent(1, 0, 1, 0, 0, DMU_EXT_WRITABLE | DMU_EXT_NEW, true));
  k.issue(proto::commit_request(3));
  answer(k, proto::remap_extent(2, 1, 1, 0, 8, DMU_EXT_WRITABLE | DMU_EXT_NEW, true));
  EXPECT_EQ(read_all(k).size(), 3u);  // DONE 1, COMMIT 3, DONE 2
  answer(k, proto::committed(3, 0));
  EXPECT_EQ(k.published, (std::set<uint64_t>{1}));
  EXPECT_EQ(k.unpublished(), 1u);
}

TEST(FakeKernel, RebindRedeliversReadDonesThenResendsUnansweredRequests) {
  FakeKernel k(kSectors, kBs, {kSectors});
  k.auto_done = true;
  k.issue(map_request(1, 0, 1, DMU_MAP_WRITE));
  read_all(k);
  answer(k, proto::remap_extent(1, 0, 1, 0, 0, DMU_EXT_WRITABLE | DMU_EXT_NEW, true));
  k.issue(proto::commit_request(2));
  k.issue(map_request(3, 4, 1, 0));
  EXPECT_EQ(read_all(k).size(), 3u);  // DONE 1, COMMIT 2, MAP 3: none answered
  k.issue(map_request(4, 5, 1, 0));   // not read yet
  EXPECT_EQ(k.rebind(), 2u);
  EXPECT_EQ(k.bind_info().resent, 2u);
  std::vector<std::string> order;
  for (const auto& q : read_all(k)) order.push_back(proto::describe(q));
  EXPECT_EQ(order,
            (std::vector<std::string>{"DONE id=1 block=0+1 write status=0", "COMMIT id=2",
                                      "MAP id=3 block=4+1 read", "MAP id=4 block=5+1 read"}));
  answer(k, proto::committed(2, 0));
  EXPECT_TRUE(k.published.count(1));
  EXPECT_TRUE(k.list_allocations()->empty());
}

// --- The loop -------------------------------------------------------------

struct Loop {
  explicit Loop(const DaemonConfig& c)
      : kernel(kSectors, kBs, {kSectors, kSectors}),
        daemon(c, kernel.bind_info(3), make(c), kernel, log, [this] { return now; }) {}
  FakeKernel kernel;
  std::ostringstream log;
  std::chrono::steady_clock::time_point now{};
  Daemon daemon;
};

TEST(TestDaemonLoop, Commit_AnsweredOnlyAfterTheDelayWhileMapsGoOn) {
  Loop t({.commit_delay_ms = 50});
  t.kernel.issue(proto::commit_request(11));
  ASSERT_TRUE(t.daemon.step(std::chrono::milliseconds(0)));
  EXPECT_FALSE(t.kernel.committed.count(11));
  t.now += std::chrono::milliseconds(30);
  t.kernel.issue(map_request(12, 0, 1, 0));
  ASSERT_TRUE(t.daemon.step(std::chrono::milliseconds(0)));
  EXPECT_TRUE(t.kernel.completed.count(12));  // MAP answered while the commit waits
  EXPECT_FALSE(t.kernel.committed.count(11));
  t.now += std::chrono::milliseconds(20);
  ASSERT_TRUE(t.daemon.step(std::chrono::milliseconds(0)));
  ASSERT_TRUE(t.kernel.committed.count(11));
  EXPECT_EQ(t.kernel.committed[11], 0);
  EXPECT_EQ(t.daemon.counters().commits, 1u);
}

TEST(TestDaemonLoop, CommitErrno_FailsEveryCommitWithoutMarkingTheLog) {
  Loop t({.commit_errno = ENOSPC});
  std::vector<std::string> marks;
  t.daemon.set_marker([&](const std::string& m) { marks.push_back(m); });
  t.kernel.issue(proto::commit_request(7));
  ASSERT_TRUE(t.daemon.step(std::chrono::milliseconds(0)));
  ASSERT_TRUE(t.kernel.committed.count(7));
  EXPECT_EQ(t.kernel.committed[7], -ENOSPC);
  EXPECT_EQ(t.daemon.counters().commit_errors, 1u);
  EXPECT_EQ(marks, (std::vector<std::string>{"commit-recv-7"}));  // never "committed-7"
}

TEST(TestDaemonLoop, CommitErrnoWhile_FailsOnlyWhileTheFileExists) {
  const auto flag =
      std::filesystem::temp_directory_path() / ("dmu-commit-fails-" + std::to_string(::getpid()));
  std::filesystem::remove(flag);
  Loop t({.commit_errno = EIO, .commit_errno_while = flag.string()});
  t.kernel.issue(proto::commit_request(1));
  ASSERT_TRUE(t.daemon.step(std::chrono::milliseconds(0)));
  EXPECT_EQ(t.kernel.committed[1], 0);
  { std::ofstream{flag}; }
  t.kernel.issue(proto::commit_request(2));
  ASSERT_TRUE(t.daemon.step(std::chrono::milliseconds(0)));
  EXPECT_EQ(t.kernel.committed[2], -EIO);
  std::filesystem::remove(flag);
}

// The FINAL waits for the gate file.  FakeKernel knows no reload, so it
// accepts that FINAL: the daemon must report the promise broken.
TEST(TestDaemonLoop, Hostile_PushAcrossReloadSendsFinalOnceTheGateExists) {
  const auto gate =
      std::filesystem::temp_directory_path() / ("dmu-gate-" + std::to_string(::getpid()));
  { std::ofstream{gate}; }
  Loop t({.mode = Mode::Hostile,
          .blocks = {0, 8},
          .hostile = HostileKind::PushAcrossReload,
          .gate_file = gate.string()});
  t.kernel.issue(map_request(1, 2, 1, 0));
  ASSERT_TRUE(t.daemon.step(std::chrono::milliseconds(0)));
  std::filesystem::remove(gate);
  EXPECT_TRUE(t.kernel.completed.count(1));
  EXPECT_EQ(t.kernel.writes, 2);  // the answer with the open push, then its FINAL
  EXPECT_NE(t.log.str().find("event=gate_wait file=" + gate.string()), std::string::npos);
  EXPECT_NE(t.log.str().find("gate_expected=-22 gate_got=64"), std::string::npos);
  EXPECT_EQ(t.daemon.counters().hostile_broken, 1u);
}

TEST(TestDaemonLoop, Marker_SeesCommitArriveThenItsAnswerAfterTheDelay) {
  Loop t({.commit_delay_ms = 10});
  std::vector<std::string> marks;
  t.daemon.set_marker([&](const std::string& m) {
    marks.push_back(m + (t.kernel.committed.count(5) ? " after" : " before"));
  });
  t.kernel.issue(proto::commit_request(5));
  ASSERT_TRUE(t.daemon.step(std::chrono::milliseconds(0)));
  t.now += std::chrono::milliseconds(10);
  ASSERT_TRUE(t.daemon.step(std::chrono::milliseconds(0)));
  EXPECT_EQ(marks, (std::vector<std::string>{"commit-recv-5 before", "committed-5 before"}));
  EXPECT_TRUE(t.kernel.committed.count(5));
}

TEST(TestDaemonLoop, HangAfterRequests_LeavesTheBatchUnansweredAndStopsReading) {
  Loop t({.hang_after_requests = 2});
  t.kernel.issue(map_request(1, 0, 1, 0));
  ASSERT_TRUE(t.daemon.step(std::chrono::milliseconds(0)));
  EXPECT_TRUE(t.kernel.completed.count(1));
  t.kernel.issue(map_request(2, 1, 1, 0));
  ASSERT_TRUE(t.daemon.step(std::chrono::milliseconds(0)));
  EXPECT_TRUE(t.daemon.hung());
  EXPECT_TRUE(t.kernel.pending(2));
  t.kernel.issue(map_request(3, 2, 1, 0));
  ASSERT_TRUE(t.daemon.step(std::chrono::milliseconds(0)));
  EXPECT_TRUE(t.kernel.pending(3));
  EXPECT_NE(t.log.str().find("event=hang unanswered=1 requests=2"), std::string::npos);
}

TEST(TestDaemonLoop, HangAfterRequests_CountsOnlyMaps) {
  Loop t({.hang_after_requests = 1});
  t.kernel.issue(proto::done_request(4, 0));
  t.kernel.issue(proto::done_request(5, 0));
  ASSERT_TRUE(t.daemon.step(std::chrono::milliseconds(0)));
  EXPECT_FALSE(t.daemon.hung());  // DONEs handed back after a restart do not count
  EXPECT_EQ(t.daemon.counters().dones, 2u);
  t.kernel.issue(map_request(1, 0, 1, 0));
  ASSERT_TRUE(t.daemon.step(std::chrono::milliseconds(0)));
  EXPECT_TRUE(t.daemon.hung());
  EXPECT_TRUE(t.kernel.pending(1));
}

TEST(TestDaemonLoop, Done_IsCountedAndLogged) {
  Loop t({});
  t.kernel.issue(proto::done_request(4, 0));
  t.kernel.issue(proto::done_request(5, -5));
  ASSERT_TRUE(t.daemon.step(std::chrono::milliseconds(0)));
  EXPECT_EQ(t.daemon.counters().dones, 2u);
  EXPECT_EQ(t.daemon.counters().done_errors, 1u);
  EXPECT_NE(t.log.str().find("event=done id=5 status=-5"), std::string::npos);
  EXPECT_EQ(t.kernel.writes, 0);  // DONE needs no answer
}

TEST(TestDaemonLoop, RejectedMessage_RestOfTheBatchIsStillDelivered) {
  Loop t({});
  t.kernel.issue(map_request(1, 0, 1, 0));
  t.kernel.issue(map_request(2, 1, 1, 0));
  t.kernel.issue(map_request(3, 2, 1, 0));
  t.kernel.issue(proto::commit_request(99));
  // Request 2 ends before the daemon answers it, so its answer is refused.
  auto early = proto::complete(2, 0);
  ASSERT_TRUE(t.kernel.write_responses({&early, 1}));
  ASSERT_TRUE(t.daemon.step(std::chrono::milliseconds(0)));
  EXPECT_EQ(t.daemon.counters().rejected, 1u);
  EXPECT_TRUE(t.kernel.completed.count(1));
  EXPECT_TRUE(t.kernel.completed.count(3));
  EXPECT_TRUE(t.kernel.committed.count(99));
  EXPECT_NE(t.log.str().find("event=rejected errno=22 msg=\"EXTENT id=2"), std::string::npos);
}

TEST(TestDaemonLoop, Hostile_LogsEachAnswerAsPromised) {
  Loop t({.mode = Mode::Hostile, .blocks = {0, 8}, .hostile = HostileKind::BadDevice});
  t.kernel.issue(map_request(1, 0, 1, 0));
  t.kernel.issue(map_request(2, 100, 1, 0));
  t.kernel.issue(map_request(3, 1, 1, DMU_MAP_WRITE));
  ASSERT_TRUE(t.daemon.step(std::chrono::milliseconds(0)));
  EXPECT_EQ(t.daemon.counters().hostile_sent, 2u);
  EXPECT_EQ(t.daemon.counters().hostile_as_promised, 2u);
  EXPECT_EQ(t.daemon.counters().hostile_broken, 0u);
  EXPECT_EQ(t.kernel.failed.size(), 2u);
  EXPECT_TRUE(t.kernel.completed.count(2));  // outside the range: served
  EXPECT_NE(t.log.str().find("kind=bad-dev id=1 block=0 bytes=64 expected=-22 got=-22"),
            std::string::npos);
  EXPECT_NE(t.log.str().find("id=3 block=1 bytes=128 expected=64 got=64 fates=3:1:fails"),
            std::string::npos);
}

TEST(TestDaemonLoop, Hostile_NoCompleteFollowsABadAnswer) {
  // A foreign id names no request: the daemon must leave the request to the
  // kernel's timeout, not end it with a COMPLETE of its own.
  Loop t({.mode = Mode::Hostile, .blocks = {0, 8}, .hostile = HostileKind::UnknownId});
  t.kernel.issue(map_request(1, 0, 1, 0));
  ASSERT_TRUE(t.daemon.step(std::chrono::milliseconds(0)));
  EXPECT_TRUE(t.kernel.pending(1));
  EXPECT_FALSE(t.kernel.completed.count(1));
  EXPECT_EQ(t.kernel.writes, 1);
  EXPECT_EQ(t.daemon.counters().hostile_as_promised, 1u);
  EXPECT_NE(t.log.str().find("fates=1:0:pending"), std::string::npos);
}

TEST(TestDaemonLoop, Hostile_NewOverBusyHoldsTheFirstRequestForTheSecond) {
  Loop t({.mode = Mode::Hostile, .blocks = {0, 8}, .hostile = HostileKind::NewOverBusy});
  t.kernel.issue(map_request(1, 2, 1, DMU_MAP_WRITE));
  ASSERT_TRUE(t.daemon.step(std::chrono::milliseconds(0)));
  EXPECT_EQ(t.kernel.writes, 0);  // held
  EXPECT_TRUE(t.kernel.pending(1));
  t.kernel.issue(map_request(2, 100, 1, 0));  // outside: answered meanwhile
  t.kernel.issue(map_request(3, 4, 1, DMU_MAP_WRITE));
  ASSERT_TRUE(t.daemon.step(std::chrono::milliseconds(0)));
  EXPECT_TRUE(t.kernel.completed.count(2));
  EXPECT_EQ(t.daemon.counters().hostile_sent, 1u);
  // FakeKernel does not model extents being filled, so it accepts the
  // overlap the module refuses: the promise is reported broken here.
  EXPECT_NE(t.log.str().find("fates=1:2:succeeds,3:4:fails"), std::string::npos);
}

TEST(TestDaemonLoop, Hostile_PushFillLimitWaitsForTheDonesBeforeTheNextAnswer) {
  Loop t({.mode = Mode::Hostile, .blocks = {0, 8}, .hostile = HostileKind::PushFillLimit});
  t.kernel.issue(map_request(1, 2, 1, 0));
  t.kernel.issue(map_request(2, 3, 1, 0));
  ASSERT_TRUE(t.daemon.step(std::chrono::milliseconds(0)));
  EXPECT_EQ(t.daemon.counters().hostile_sent, 1u);  // the second waits for 64 DONEs
  const auto& pushes = t.kernel.accepted;
  std::vector<uint64_t> ids;
  for (const auto& m : pushes)
    if (proto::is_push_id(m.id)) ids.push_back(m.id);
  ASSERT_GE(ids.size(), 64u);  // the fake kernel accepts the 65th too
  for (size_t i = 0; i < 63; ++i) t.kernel.issue(proto::done_request(ids[i], 0));
  ASSERT_TRUE(t.daemon.step(std::chrono::milliseconds(0)));
  EXPECT_EQ(t.daemon.counters().hostile_sent, 1u);
  t.kernel.issue(proto::done_request(ids[63], 0));
  ASSERT_TRUE(t.daemon.step(std::chrono::milliseconds(0)));
  EXPECT_EQ(t.daemon.counters().hostile_sent, 2u);
}

TEST(TestDaemonLoop, Hostile_PushOpenLimitClosesItsPushesAfterwards) {
  Loop t({.mode = Mode::Hostile, .blocks = {0, 8}, .hostile = HostileKind::PushOpenLimit});
  t.kernel.issue(map_request(1, 2, 1, 0));
  ASSERT_TRUE(t.daemon.step(std::chrono::milliseconds(0)));
  EXPECT_EQ(t.kernel.writes, 2);  // the answer, then the FINALs
  EXPECT_NE(t.log.str().find("cleanup_expected=1024 cleanup_got=1024"), std::string::npos);
  EXPECT_TRUE(t.kernel.pending(1));
}

TEST(TestDaemonLoop, Flood_PushesBatchesAndServesRequestsMeanwhile) {
  FakeKernel kernel(8 * 4096, kBs, {8 * 4096});
  std::ostringstream log;
  std::chrono::steady_clock::time_point now{};
  const DaemonConfig c{.mode = Mode::Hostile, .blocks = {0, 1}, .hostile = HostileKind::PushFlood};
  auto r = Responder::create(c, Geometry::from(kernel.bind_info()));
  ASSERT_TRUE(r) << r.error().message;
  Daemon d(c, kernel.bind_info(), std::move(*r), kernel, log, [&] { return now; });
  kernel.issue(map_request(1, 0, 1, 0));
  ASSERT_TRUE(d.flood(5));
  EXPECT_TRUE(kernel.completed.count(1));
  EXPECT_EQ(d.counters().pushed_extents, 5u * 256);
  EXPECT_NE(log.str().find("event=flood batches=5 extents=1280 refused=0"), std::string::npos);
}

TEST(TestDaemonLoop, Hostile_KernelBreakingThePromiseIsReportedBroken) {
  // The kernel no longer knows the request, so it refuses the first of the
  // two answers instead of the second: write() returns -EINVAL, not 64.
  Loop t({.mode = Mode::Hostile, .blocks = {0, 8}, .hostile = HostileKind::DuplicateFinal});
  t.kernel.issue(map_request(1, 0, 1, 0));
  auto early = proto::complete(1, 0);
  ASSERT_TRUE(t.kernel.write_responses({&early, 1}));
  ASSERT_TRUE(t.daemon.step(std::chrono::milliseconds(0)));
  EXPECT_EQ(t.daemon.counters().hostile_sent, 1u);
  EXPECT_EQ(t.daemon.counters().hostile_broken, 1u);
  EXPECT_NE(t.log.str().find("expected=64 got=-22"), std::string::npos);
  EXPECT_NE(t.log.str().find("ok=0"), std::string::npos);
}

TEST(TestDaemonLoop, PushAll_PushesAndReportsTheListedExtents) {
  Loop t({.push_all = true, .push_extent_blocks = 256});
  ASSERT_TRUE(t.daemon.push_all());
  EXPECT_EQ(t.daemon.counters().pushed_extents, 4u);
  EXPECT_EQ(t.kernel.cache.size(), 4u);
  EXPECT_NE(t.log.str().find("event=push extents=4 batches=1"), std::string::npos);
  EXPECT_NE(t.log.str().find("event=extents cached=4 blocks=1024 pushed=4 pushed_used=0"),
            std::string::npos);
}

TEST(TestDaemonLoop, Counters_AreOneParseableLine) {
  Loop t({});
  t.kernel.issue(map_request(1, 0, 1, DMU_MAP_WRITE));
  ASSERT_TRUE(t.daemon.step(std::chrono::milliseconds(0)));
  t.daemon.report_counters();
  EXPECT_NE(t.log.str().find("event=counters requests=1 maps=1 map_reads=0 map_writes=1 "),
            std::string::npos);
  EXPECT_NE(t.log.str().find(" resent=3\n"), std::string::npos);
}

}  // namespace
}  // namespace dmu::testd
