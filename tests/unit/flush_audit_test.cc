// The flush auditor (tests/kmod/flush_audit.h): its stamps and marks, its
// journal, and above all verify() on dm-log-writes logs built in the
// kernel's format, which must pass a log where every fsync was honest and
// report a failure for each way a kernel (or the model daemon) can
// acknowledge a flush before the data is durable.
#include "tests/kmod/flush_audit.h"

#include <gtest/gtest.h>
#include <zlib.h>

#include <algorithm>
#include <map>

#include "tests/kmod/log_writes.h"
#include "tests/support/test_support.h"
#include "tests/unit/log_writes_builder.h"

namespace dmu::testd::audit {
namespace {

using test::LogBuilder;
using test::TempDir;

constexpr uint64_t kRun = 0x1234abcd5678ef01ULL;
constexpr uint64_t kOtherRun = 0x0badcafe0badcafeULL;
constexpr uint64_t kMiB = 1 << 20;

// The bytes the writer writes: one stamp per 4 KiB.
std::vector<uint8_t> stamped(uint32_t thread, uint64_t seq, uint64_t voff, uint64_t run = kRun,
                             uint64_t bytes = kUnit) {
  std::vector<uint8_t> v(bytes);
  for (uint64_t k = 0; k < bytes; k += kUnit)
    fill_unit(make_stamp(thread, seq, voff + k, run),
              std::span<uint8_t, kUnit>(v.data() + k, kUnit));
  return v;
}

std::string describe(const Report& r) {
  std::string s = r.summary() + "\n";
  for (const auto& f : r.failures) s += f.line() + "\n";
  return s;
}

// ---- stamps -------------------------------------------------------------------

TEST(FlushAuditStamp, RoundTripsAndIsLaidOutAsStructStamp) {
  std::vector<uint8_t> u = stamped(3, 77, 0x123000);
  Decoded d = decode_unit(std::span<const uint8_t, kUnit>(u.data(), kUnit));
  EXPECT_EQ(d.kind, UnitKind::Stamped);
  model::Stamp s;
  std::memcpy(&s, u.data(), sizeof s);  // the header's struct, little-endian host
  EXPECT_EQ(std::memcmp(s.magic, model::kStampMagic, 8), 0);
  EXPECT_EQ(s.thread, 3u);
  EXPECT_EQ(s.reserved, 0u);
  EXPECT_EQ(s.seq, 77u);
  EXPECT_EQ(s.offset, 0x123000u);
  EXPECT_EQ(s.run, kRun);
  EXPECT_EQ(d.stamp.seq, 77u);
  EXPECT_EQ(d.stamp.run, kRun);
}

TEST(FlushAuditStamp, PatternDependsOnEveryField) {
  const auto base = stamped(1, 2, 4096);
  const std::vector<std::vector<uint8_t>> others = {stamped(2, 2, 4096), stamped(1, 3, 4096),
                                                    stamped(1, 2, 8192),
                                                    stamped(1, 2, 4096, kOtherRun)};
  for (const auto& o : others)
    EXPECT_FALSE(std::equal(base.begin() + 40, base.end(), o.begin() + 40));
  // The pattern is not constant within the block either.
  EXPECT_FALSE(std::equal(base.begin() + 40, base.begin() + 48, base.begin() + 48));
}

TEST(FlushAuditStamp, ClassifiesTornZeroAndForeignBlocks) {
  auto u = stamped(1, 2, 4096);
  u[4000] ^= 1;  // one bit of the pattern
  EXPECT_EQ(decode_unit(std::span<const uint8_t, kUnit>(u.data(), kUnit)).kind, UnitKind::Corrupt);
  auto r = stamped(1, 2, 4096);
  r[12] = 1;  // reserved must be zero
  EXPECT_EQ(decode_unit(std::span<const uint8_t, kUnit>(r.data(), kUnit)).kind, UnitKind::Corrupt);
  std::vector<uint8_t> z(kUnit, 0);
  EXPECT_EQ(decode_unit(std::span<const uint8_t, kUnit>(z.data(), kUnit)).kind, UnitKind::Zero);
  auto f = test::random_bytes(kUnit, 9);
  EXPECT_EQ(decode_unit(std::span<const uint8_t, kUnit>(f.data(), kUnit)).kind, UnitKind::Other);
}

// ---- marks ---------------------------------------------------------------------

TEST(FlushAuditMark, RoundTripsWithinWhatDmLogWritesKeeps) {
  for (SyncMark m : {SyncMark{0, 1}, SyncMark{7, 123456}, SyncMark{UINT32_MAX, UINT64_MAX}}) {
    const std::string t = mark_text(m);
    EXPECT_LE(t.size(), log_writes::max_mark_bytes(512));
    EXPECT_EQ(t.find(' '), std::string::npos);  // one message argument
    auto back = parse_mark(t);
    ASSERT_TRUE(back) << t;
    EXPECT_EQ(*back, m);
  }
  EXPECT_EQ(mark_text({2, 15}), "synced-2-15");
  for (const char* bad : {"synced-1", "synced-a-2", "synced--1-2", "synced-1-2x", "synced-1-",
                          "synced-4294967296-1", "commit-recv-3", "dm-log-writes-end", ""})
    EXPECT_FALSE(parse_mark(bad)) << bad;
}

// ---- journal -------------------------------------------------------------------

TEST(FlushAuditJournal, RoundTripsAndNamesTheBadLine) {
  TempDir dir;
  Journal j{kRun, 8192, 2, {{0, 1, 0, 1}, {1, 1, 8 * kMiB, 2}, {0, 2, 8192, 4}}, {{0, 1, 3}}};
  ASSERT_TRUE(write_journal(dir.file("j"), j));
  auto back = read_journal(dir.file("j"));
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(back->run, kRun);
  EXPECT_EQ(back->block_size, 8192u);
  EXPECT_EQ(back->threads, 2u);
  ASSERT_EQ(back->writes.size(), 3u);
  EXPECT_EQ(back->writes[1].offset, 8 * kMiB);
  EXPECT_EQ(back->writes[2].order, 4u);
  ASSERT_EQ(back->syncs.size(), 1u);
  EXPECT_EQ(back->syncs[0].order, 3u);
  auto text = test::read_file(dir.file("j"));
  const std::string s(text.begin(), text.end());
  EXPECT_NE(s.find("s 0 1 3\nw 0 2 8192 4\n"), std::string::npos) << s;  // completion order

  test::write_file(
      dir.file("bad"),
      std::vector<uint8_t>{'r', 'u', 'n', ' ', '1', ' ', 'b', 'l',  'o', 'c', 'k', '-',
                           's', 'i', 'z', 'e', ' ', '4', '0', '9',  '6', ' ', 't', 'h',
                           'r', 'e', 'a', 'd', 's', ' ', '1', '\n', 'w', ' ', '1', '\n'});
  auto bad = read_journal(dir.file("bad"));
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().message.find(dir.file("bad") + ": line 2:"), 0u) << bad.error().message;
}

// ---- verify: identity layout ------------------------------------------------------

class FlushAuditVerify : public ::testing::Test {
 protected:
  Report verify_log(const LogBuilder& log, Layout layout = Layout::Identity,
                    const Journal* journal = nullptr, uint64_t block_size = 0) {
    log.save(dir_.file("log"));
    VerifyOptions o{dir_.file("log"), layout, block_size, ""};
    if (journal) {
      EXPECT_TRUE(write_journal(dir_.file("journal"), *journal));
      o.journal_path = dir_.file("journal");
    }
    auto r = verify(o);
    EXPECT_TRUE(r) << r.error().message;
    return r ? *r : Report{};
  }
  TempDir dir_;
};

TEST_F(FlushAuditVerify, PassesWhenEveryMarkFollowsTheFlushOfItsWrites) {
  LogBuilder log;
  log.write(0, stamped(0, 1, 0)).write(kMiB, stamped(1, 1, kMiB));
  log.write(4096, stamped(0, 2, 4096));
  log.flush().mark("commit-recv-1").mark("synced-0-2").mark("synced-1-1");
  log.write(0, stamped(0, 3, 0));  // thread 0 goes on; not covered by its mark
  log.flush().mark("synced-0-3").mark("dm-log-writes-end");
  Report r = verify_log(log);
  EXPECT_TRUE(r.passed()) << describe(r);
  EXPECT_EQ(r.marks, 3u);
  EXPECT_EQ(r.checked, 5u);  // 2 + 1 + 2
  EXPECT_EQ(r.run, kRun);
  EXPECT_EQ(r.flushes, 2u);
}

TEST_F(FlushAuditVerify, FailsA_WriteLoggedAfterTheFlushBeforeTheMark) {
  // Thread 0's second write completed before its fsync, but the kernel
  // flushed before writing it: the write is logged after the FLUSH.
  LogBuilder log;
  log.write(0, stamped(0, 1, 0)).write(8192, stamped(0, 2, 8192));
  log.flush();
  log.write(4096, stamped(0, 3, 4096)).write(0, stamped(0, 4, 0));
  log.mark("synced-0-4");
  Report r = verify_log(log);
  EXPECT_FALSE(r.passed());
  ASSERT_EQ(r.failures.size(), 2u) << describe(r);
  EXPECT_EQ(r.failures[0].offset, 0u);
  EXPECT_EQ(r.failures[0].problem, Problem::Stale);  // seq 1 is durable, 4 is not
  EXPECT_EQ(r.failures[0].mark, "synced-0-4");
  EXPECT_EQ(r.failures[1].offset, 4096u);
  EXPECT_EQ(r.failures[1].problem, Problem::NoStamp);
  EXPECT_NE(r.failures[0].line().find("stale seq: found seq 1, expected >= 4"), std::string::npos)
      << r.failures[0].line();
}

TEST_F(FlushAuditVerify, FailsB_NoFlushBetweenTheWriteAndTheMark) {
  LogBuilder log;
  log.write(0, stamped(0, 1, 0)).mark("synced-0-1");
  Report r = verify_log(log);
  EXPECT_FALSE(r.passed());
  ASSERT_EQ(r.failures.size(), 1u) << describe(r);
  EXPECT_EQ(r.failures[0].problem, Problem::NoStamp);
  // The flush only later: the mark already failed.
  log.flush();
  EXPECT_EQ(verify_log(log).failures.size(), 1u);
}

TEST_F(FlushAuditVerify, AWriteFailingAtEveryLaterMarkIsListedOnceAndCountedEachTime) {
  LogBuilder log;
  log.write(0, stamped(0, 1, 0)).mark("synced-0-1");
  log.write(4096, stamped(0, 2, 4096)).flush().mark("synced-0-2");  // 0 still not durable
  log.mark("synced-0-2");
  Report r = verify_log(log);
  EXPECT_EQ(r.failure_count, 1u) << describe(r);  // flushed before the second mark
  LogBuilder never;
  never.write(0, stamped(0, 1, 0)).mark("synced-0-1").mark("synced-0-1").mark("synced-0-1");
  never.write(4096, stamped(0, 2, 4096)).mark("synced-0-2");
  Report n = verify_log(never);
  EXPECT_EQ(n.failure_count, 5u) << describe(n);  // 0 at four marks, 4096 at one
  ASSERT_EQ(n.failures.size(), 2u) << describe(n);
  EXPECT_EQ(n.failures[0].entry, 1u);
  EXPECT_EQ(n.failures[1].offset, 4096u);
  EXPECT_FALSE(n.passed());
  EXPECT_EQ(n.summary(), "dmu-flush-audit: marks=4 checked=5 failures=5");
}

TEST_F(FlushAuditVerify, ListsAtMostMaxFailures) {
  LogBuilder log;
  for (uint64_t i = 0; i < 20; ++i) log.write(i * 4096, stamped(0, i + 1, i * 4096));
  log.mark("synced-0-20");
  log.save(dir_.file("log"));
  VerifyOptions o{dir_.file("log"), Layout::Identity, 0, ""};
  o.max_failures = 5;
  auto r = verify(o);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->failure_count, 20u);
  EXPECT_EQ(r->failures.size(), 5u);
}

TEST_F(FlushAuditVerify, FuaWriteIsDurableWithoutAFlush) {
  LogBuilder log;
  log.fua(0, stamped(0, 1, 0)).mark("synced-0-1");
  Report r = verify_log(log);
  EXPECT_TRUE(r.passed()) << describe(r);
}

TEST_F(FlushAuditVerify, FlushWithDataMakesOnlyWhatCameBeforeDurable) {
  // A PREFLUSH bio with data: the flush precedes its data.
  LogBuilder log;
  log.write(0, stamped(0, 1, 0));
  log.write(4096, stamped(0, 2, 4096), LogBuilder::kFlush).mark("synced-0-2");
  Report r = verify_log(log);
  ASSERT_EQ(r.failures.size(), 1u) << describe(r);
  EXPECT_EQ(r.failures[0].offset, 4096u);
  LogBuilder fua;
  fua.write(0, stamped(0, 1, 0));
  fua.write(4096, stamped(0, 2, 4096), LogBuilder::kFlush | LogBuilder::kFua).mark("synced-0-2");
  Report f = verify_log(fua);
  EXPECT_TRUE(f.passed()) << describe(f);
}

TEST_F(FlushAuditVerify, LaterPlainWriteDoesNotUndoDurability) {
  // Durable seq 1, then seq 2 written but not flushed: the mark for seq 1
  // still passes (the block holds seq 1 durably), the one for 2 fails.
  LogBuilder log;
  log.write(0, stamped(0, 1, 0)).flush().mark("synced-0-1");
  log.write(0, stamped(0, 2, 0)).mark("synced-0-1").mark("synced-0-2");
  Report r = verify_log(log);
  ASSERT_EQ(r.failures.size(), 1u) << describe(r);
  EXPECT_EQ(r.failures[0].mark, "synced-0-2");
  EXPECT_EQ(r.failures[0].problem, Problem::Stale);
}

TEST_F(FlushAuditVerify, DiscardedBlockIsNotDurableData) {
  LogBuilder log;
  log.write(0, stamped(0, 1, 0)).flush().discard(0, 4096).flush().mark("synced-0-1");
  Report r = verify_log(log);
  ASSERT_EQ(r.failures.size(), 1u) << describe(r);
  EXPECT_EQ(r.failures[0].problem, Problem::NoStamp);
}

TEST_F(FlushAuditVerify, TornBlockIsCorrupt) {
  // The last 512 bytes of the block were overwritten by someone else.
  LogBuilder log;
  log.write(0, stamped(0, 1, 0)).write(3584, test::random_bytes(512, 1)).flush();
  log.mark("synced-0-1");
  Report r = verify_log(log);
  ASSERT_EQ(r.failures.size(), 1u) << describe(r);
  EXPECT_EQ(r.failures[0].problem, Problem::Corrupt);
}

TEST_F(FlushAuditVerify, FailsE_StaleStampFromAnotherRun) {
  // Offset 4096 holds thread 0's block of an earlier run, with a higher seq.
  LogBuilder log;
  log.write(0, stamped(0, 1, 0)).write(4096, stamped(0, 2, 4096));
  log.write(4096, stamped(0, 9, 4096, kOtherRun)).flush().mark("synced-0-2");
  Report r = verify_log(log);
  ASSERT_EQ(r.failures.size(), 1u) << describe(r);
  EXPECT_EQ(r.failures[0].offset, 4096u);
  EXPECT_EQ(r.failures[0].problem, Problem::WrongRun);
  // With the journal the run is the writer's even if an old block comes first.
  LogBuilder old;
  old.write(0, stamped(0, 1, 0, kOtherRun)).flush().mark("synced-0-1");
  Journal j{kRun, kUnit, 1, {{0, 1, 0, 1}}, {{0, 1, 2}}};
  Report jr = verify_log(old, Layout::Identity, &j);
  ASSERT_EQ(jr.failures.size(), 1u) << describe(jr);
  EXPECT_EQ(jr.failures[0].problem, Problem::WrongRun);
}

TEST_F(FlushAuditVerify, BlockOfAnotherThreadOrOffsetIsMisplaced) {
  LogBuilder log;
  log.write(0, stamped(0, 1, 4096)).flush().mark("synced-0-1");  // written one block off
  Journal j{kRun, kUnit, 1, {{0, 1, 0, 1}}, {{0, 1, 2}}};
  Report r = verify_log(log, Layout::Identity, &j);
  ASSERT_EQ(r.failures.size(), 1u) << describe(r);
  EXPECT_EQ(r.failures[0].problem, Problem::Misplaced);
}

TEST_F(FlushAuditVerify, WriteLoggedOnlyAfterItsMarkIsLate) {
  // Without a journal the writes are learnt from the log; one that shows up
  // only after the mark that covered it is reported there.
  LogBuilder log;
  log.write(0, stamped(0, 1, 0)).flush().mark("synced-0-1");
  log.mark("synced-0-2").write(4096, stamped(0, 2, 4096)).flush();
  Report r = verify_log(log);
  ASSERT_EQ(r.failures.size(), 1u) << describe(r);
  EXPECT_EQ(r.failures[0].problem, Problem::LateWrite);
  EXPECT_EQ(r.failures[0].mark, "synced-0-2");
  EXPECT_EQ(r.failures[0].offset, 4096u);
  // The journal knows the write at the mark already.
  Journal j{kRun, kUnit, 1, {{0, 1, 0, 1}, {0, 2, 4096, 3}}, {{0, 1, 2}, {0, 2, 4}}};
  Report jr = verify_log(log, Layout::Identity, &j);
  ASSERT_EQ(jr.failures.size(), 1u) << describe(jr);
  EXPECT_EQ(jr.failures[0].problem, Problem::NoStamp);
  EXPECT_EQ(jr.failures[0].offset, 4096u);
}

TEST_F(FlushAuditVerify, JournalSyncWithoutItsMarkFails) {
  LogBuilder log;
  log.write(0, stamped(0, 1, 0)).flush().mark("synced-0-1");
  Journal j{kRun, kUnit, 1, {{0, 1, 0, 1}, {0, 2, 0, 3}}, {{0, 1, 2}, {0, 2, 4}}};
  Report r = verify_log(log, Layout::Identity, &j);
  ASSERT_EQ(r.failures.size(), 1u) << describe(r);
  EXPECT_EQ(r.failures[0].problem, Problem::MissingMark);
  EXPECT_EQ(r.failures[0].line(),
            "FAIL mark synced-0-2 (not in the log): thread 0: missing mark: the writer put it "
            "after fdatasync returned, but the log does not have it (log device full? logging "
            "disabled?)");
}

TEST_F(FlushAuditVerify, NothingToCheckIsNotAPass) {
  LogBuilder none;
  none.write(0, stamped(0, 1, 0)).flush().mark("dm-log-writes-end");
  Report r = verify_log(none);
  EXPECT_TRUE(r.failures.empty());
  EXPECT_FALSE(r.passed());
  LogBuilder early;  // a mark before any write: nothing checked
  early.mark("synced-0-0");
  EXPECT_FALSE(verify_log(early).passed());
}

TEST_F(FlushAuditVerify, LargerBlocksAreCheckedIn4KiBPieces) {
  // 8 KiB writes; the second half of one reached the device after the flush.
  LogBuilder log;
  auto w = stamped(0, 1, 0, kRun, 8192);
  log.write(0, std::vector<uint8_t>(w.begin(), w.begin() + 4096)).flush();
  log.write(4096, std::vector<uint8_t>(w.begin() + 4096, w.end())).mark("synced-0-1");
  Report r = verify_log(log, Layout::Identity, nullptr, 8192);
  ASSERT_EQ(r.failures.size(), 1u) << describe(r);
  EXPECT_EQ(r.failures[0].offset, 0u);
  EXPECT_NE(r.failures[0].detail.find("at +0x1000"), std::string::npos) << r.failures[0].detail;
  EXPECT_EQ(r.checked, 1u);
}

TEST_F(FlushAuditVerify, ErrorsNameTheFile) {
  VerifyOptions o{dir_.file("nope"), Layout::Identity, 0, ""};
  auto r = verify(o);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message.find(dir_.file("nope")), 0u) << r.error().message;
  LogBuilder log;
  log.mark("synced-0-1");
  log.save(dir_.file("log"));
  test::write_file(dir_.file("j"), {'x', '\n'});
  auto j = verify({dir_.file("log"), Layout::Identity, 0, dir_.file("j")});
  ASSERT_FALSE(j);
  EXPECT_EQ(j.error().message.find(dir_.file("j") + ": line 1"), 0u) << j.error().message;
}

// ---- verify: model layout --------------------------------------------------------

// A map slot as model_format.h describes it, encoded here from the header's
// words rather than through the auditor's parser.
std::vector<uint8_t> slot_bytes(uint64_t generation, uint64_t block_bytes,
                                const std::vector<std::pair<uint64_t, uint64_t>>& entries) {
  const size_t nr = entries.size();
  std::vector<uint8_t> v(model::kSuperBytes + (nr * 16 + 4095) / 4096 * 4096, 0);
  auto put64 = [&](size_t at, uint64_t x) { std::memcpy(&v[at], &x, 8); };
  std::memcpy(v.data(), "DMUMODL1", 8);
  put64(8, generation);
  put64(16, block_bytes);
  put64(24, nr);
  put64(32, 4 << 20);  // data_start: after the two 2 MiB slots
  for (size_t i = 0; i < nr; ++i) {
    put64(4096 + 16 * i, entries[i].first);
    put64(4096 + 16 * i + 8, entries[i].second);
  }
  uLong crc = ::crc32(0L, v.data(), 48);
  crc = ::crc32(crc, v.data() + 4096, static_cast<uInt>(nr * 16));
  const uint32_t c = static_cast<uint32_t>(crc);
  std::memcpy(&v[40], &c, 4);
  return v;
}

constexpr uint64_t kData = model::kDataStart;

TEST_F(FlushAuditVerify, ModelPassesThroughTheCommittedMap) {
  LogBuilder log;
  // 4 KiB blocks: virtual block 1 lives in cluster 0, virtual block 0 in cluster 1.
  log.write(kData + 0 * 4096, stamped(0, 1, 4096)).write(kData + 1 * 4096, stamped(0, 2, 0));
  log.flush();                                                  // the kernel's flush before COMMIT
  log.write(0, slot_bytes(1, 4096, {{0, 1}, {1, 0}})).flush();  // the daemon's commit
  log.mark("synced-0-2");
  Report r = verify_log(log, Layout::Model);
  EXPECT_TRUE(r.passed()) << describe(r);
  EXPECT_EQ(r.checked, 2u);
  EXPECT_EQ(r.map_changes, 1u);
}

TEST_F(FlushAuditVerify, ModelFindsBlocksInsideLargeClusters) {
  // 64 KiB blocks: virtual offset 0x11000 is block 1 + 0x1000, in cluster 3.
  LogBuilder log;
  log.write(kData + 3 * 65536 + 0x1000, stamped(2, 5, 0x11000));
  log.write(2 * kMiB, slot_bytes(4, 65536, {{1, 3}})).flush().mark("synced-2-5");
  Report r = verify_log(log, Layout::Model);
  EXPECT_TRUE(r.passed()) << describe(r);
}

TEST_F(FlushAuditVerify, FailsC_CommittedSlotLacksTheBlock) {
  LogBuilder log;
  log.write(kData, stamped(0, 1, 0)).write(kData + 4096, stamped(0, 2, 4096));
  log.write(0, slot_bytes(1, 4096, {{0, 0}})).flush();
  // The map with block 1 is written, but its commit is not flushed.
  log.write(2 * kMiB, slot_bytes(2, 4096, {{0, 0}, {1, 1}})).mark("synced-0-2");
  Report r = verify_log(log, Layout::Model);
  ASSERT_EQ(r.failures.size(), 1u) << describe(r);
  EXPECT_EQ(r.failures[0].problem, Problem::Unmapped);
  EXPECT_EQ(r.failures[0].offset, 4096u);
  EXPECT_NE(
      r.failures[0].detail.find("virtual block 1 is not in the map (map slot 0 generation 1)"),
      std::string::npos)
      << r.failures[0].detail;
  // Once flushed, the newer slot is the map and the mark passes.
  log.flush().mark("synced-0-2");
  Report later = verify_log(log, Layout::Model);
  EXPECT_EQ(later.failures.size(), 1u) << describe(later);
  EXPECT_EQ(later.marks, 2u);
}

TEST_F(FlushAuditVerify, FailsD_TornNewestSlotFallsBackToTheOlder) {
  LogBuilder log;
  log.write(kData, stamped(0, 1, 0)).write(0, slot_bytes(1, 4096, {{0, 0}})).flush();
  log.mark("synced-0-1");
  // The next commit moves block 0 to cluster 1, but its slot is torn: the
  // entries did not make it (crc mismatch).  The data went to cluster 1.
  auto torn = slot_bytes(2, 4096, {{0, 1}});
  std::fill(torn.begin() + 4096, torn.end(), 0);
  log.write(kData + 4096, stamped(0, 2, 0)).write(2 * kMiB, torn).flush();
  // Generation 1 still maps block 0 to cluster 0, which holds seq 1: a
  // mark for seq 1 passes, one for seq 2 finds the stale block.
  log.mark("synced-0-1").mark("synced-0-2");
  Report r = verify_log(log, Layout::Model);
  ASSERT_EQ(r.failures.size(), 1u) << describe(r);
  EXPECT_EQ(r.failures[0].mark, "synced-0-2");
  EXPECT_EQ(r.failures[0].problem, Problem::Stale);
  EXPECT_NE(r.failures[0].detail.find("map slot 0 generation 1"), std::string::npos)
      << r.failures[0].detail;
  // Had the torn slot been trusted, cluster 1 would have passed; repaired, it does.
  log.write(2 * kMiB, slot_bytes(2, 4096, {{0, 1}})).flush().mark("synced-0-2");
  Report fixed = verify_log(log, Layout::Model);
  EXPECT_EQ(fixed.failures.size(), 1u) << describe(fixed);
  EXPECT_EQ(fixed.map_changes, 2u);
}

TEST_F(FlushAuditVerify, ModelSlotValidity) {
  auto read_from = [](const std::vector<uint8_t>& bytes) {
    return [&bytes](uint64_t off, std::span<uint8_t> out) {
      std::fill(out.begin(), out.end(), 0);
      for (size_t i = 0; i < out.size() && off + i < bytes.size(); ++i) out[i] = bytes[off + i];
    };
  };
  auto good = slot_bytes(3, 4096, {{0, 5}, {7, 1}});
  auto m = parse_slot(1, read_from(good));
  ASSERT_TRUE(m) << m.error().message;
  EXPECT_EQ(m->generation, 3u);
  EXPECT_EQ(m->cluster_of(7), 1u);
  EXPECT_FALSE(m->cluster_of(6));
  auto unsorted = slot_bytes(3, 4096, {{7, 1}, {0, 5}});
  EXPECT_FALSE(parse_slot(0, read_from(unsorted)));
  auto bad_crc = good;
  bad_crc[4096 + 8] ^= 1;
  auto e = parse_slot(0, read_from(bad_crc));
  ASSERT_FALSE(e);
  EXPECT_NE(e.error().message.find("crc"), std::string::npos);
  auto odd_block = slot_bytes(3, 3000, {});
  EXPECT_FALSE(parse_slot(0, read_from(odd_block)));
  std::vector<uint8_t> zeros(8192, 0);
  EXPECT_FALSE(parse_slot(0, read_from(zeros)));
}

TEST_F(FlushAuditVerify, ModelWithoutAnyValidSlotFails) {
  LogBuilder log;
  log.write(kData, stamped(0, 1, 0)).flush().mark("synced-0-1");
  Report r = verify_log(log, Layout::Model);
  ASSERT_EQ(r.failures.size(), 1u) << describe(r);
  EXPECT_EQ(r.failures[0].problem, Problem::NoMap);
}

// ---- the writer, and the writer against the verifier -------------------------------

TEST(FlushAuditWriter, WritesStampedBlocksInEachThreadsPartAndMarksAfterEverySync) {
  TempDir dir;
  test::write_file(dir.file("dev"), std::vector<uint8_t>(2 * kMiB, 0));
  std::vector<std::string> marks;
  WriterOptions o;
  o.device = dir.file("dev");
  o.threads = 2;
  o.region_bytes = kMiB;
  o.seconds = 60;  // a bound only: max_writes ends each thread (a loaded host may start one late)
  o.fsync_every = 4;
  o.block_size = 8192;
  o.direct = false;  // $TMPDIR may be tmpfs
  o.run = kRun;
  o.max_writes = 300;
  auto res = run_writer(o, [&](const std::string& text) -> Result<void> {
    marks.push_back(text);
    return {};
  });
  ASSERT_TRUE(res) << res.error().message;
  EXPECT_EQ(res->errors, 0u);
  EXPECT_GT(res->writes, 0u);
  EXPECT_EQ(res->fsyncs, marks.size());
  ASSERT_EQ(res->journal.writes.size(), res->writes);
  ASSERT_EQ(res->journal.syncs.size(), marks.size());
  for (size_t i = 0; i < marks.size(); ++i)  // one thread marks at a time, in journal order
    EXPECT_EQ(parse_mark(marks[i]),
              (SyncMark{res->journal.syncs[i].thread, res->journal.syncs[i].seq}));

  // In completion order: each thread's writes count up from 1, at most
  // fsync_every of them between its syncs, and each sync's mark names the
  // thread's last completed write; its last write is synced.
  std::map<uint32_t, uint64_t> last_write, last_sync;
  std::map<std::pair<uint32_t, uint64_t>, uint64_t> latest;  // (thread, offset) -> seq
  const Journal& j = res->journal;
  for (size_t w = 0, s = 0; w < j.writes.size() || s < j.syncs.size();) {
    if (s == j.syncs.size() || (w < j.writes.size() && j.writes[w].order < j.syncs[s].order)) {
      const auto& x = j.writes[w++];
      EXPECT_EQ(x.seq, last_write[x.thread] + 1);
      EXPECT_LE(x.seq - last_sync[x.thread], o.fsync_every);
      EXPECT_EQ(x.offset / (kMiB / 2), x.thread) << "outside its part";
      EXPECT_EQ(x.offset % 8192, 0u);
      last_write[x.thread] = x.seq;
      latest[{x.thread, x.offset}] = x.seq;
    } else {
      const auto& x = j.syncs[s++];
      EXPECT_EQ(x.seq, last_write[x.thread]);
      last_sync[x.thread] = x.seq;
    }
  }
  EXPECT_EQ(last_write.size(), 2u);
  for (auto [t, seq] : last_write) EXPECT_EQ(last_sync[t], seq) << "thread " << t;
  // The device holds each offset's latest write.
  auto dev = test::read_file(dir.file("dev"));
  for (auto [key, seq] : latest) {
    for (uint64_t k = 0; k < 8192; k += kUnit) {
      Decoded d = decode_unit(std::span<const uint8_t, kUnit>(dev.data() + key.second + k, kUnit));
      ASSERT_EQ(d.kind, UnitKind::Stamped);
      EXPECT_EQ(d.stamp.thread, key.first);
      EXPECT_EQ(d.stamp.seq, seq);
      EXPECT_EQ(d.stamp.offset, key.second + k);
      EXPECT_EQ(d.stamp.run, kRun);
    }
  }
}

TEST(FlushAuditWriter, RejectsARegionLargerThanTheDevice) {
  TempDir dir;
  test::write_file(dir.file("dev"), std::vector<uint8_t>(kMiB, 0));
  WriterOptions o;
  o.device = dir.file("dev");
  o.region_bytes = 2 * kMiB;
  o.direct = false;
  auto res = run_writer(o, [](const std::string&) -> Result<void> { return {}; });
  ASSERT_FALSE(res);
  EXPECT_EQ(res.error().message.find(dir.file("dev") + ": the region"), 0u) << res.error().message;
}

TEST(FlushAuditWriter, ItsJournalReplayedAsAnHonestLogPasses) {
  // Turn what the writer did into the log an honest kernel would produce:
  // each write logged as it completed, each sync a FLUSH then the mark.
  TempDir dir;
  test::write_file(dir.file("dev"), std::vector<uint8_t>(kMiB, 0));
  WriterOptions o;
  o.device = dir.file("dev");
  o.threads = 3;
  o.region_bytes = kMiB;
  o.seconds = 60;  // a bound only: max_writes ends each thread
  o.fsync_every = 5;
  o.block_size = 8192;
  o.direct = false;
  o.max_writes = 300;
  auto res = run_writer(o, [](const std::string&) -> Result<void> { return {}; });
  ASSERT_TRUE(res) << res.error().message;
  const Journal& j = res->journal;
  LogBuilder log;
  size_t w = 0, s = 0;
  while (w < j.writes.size() || s < j.syncs.size()) {
    if (s == j.syncs.size() || (w < j.writes.size() && j.writes[w].order < j.syncs[s].order)) {
      const auto& x = j.writes[w++];
      log.write(x.offset, stamped(x.thread, x.seq, x.offset, j.run, o.block_size));
    } else {
      const auto& x = j.syncs[s++];
      log.flush().mark(mark_text({x.thread, x.seq}));
    }
  }
  log.save(dir.file("log"));
  ASSERT_TRUE(write_journal(dir.file("journal"), j));
  for (const std::string& journal : {std::string(), dir.file("journal")}) {
    auto r = verify({dir.file("log"), Layout::Identity, 8192, journal});
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_TRUE(r->passed()) << describe(*r);
    EXPECT_EQ(r->marks, j.syncs.size());
    EXPECT_EQ(r->run, j.run);
  }
}

// ---- the program ---------------------------------------------------------------------

TEST(FlushAuditProgram, VerifyExitsZeroOnlyWhenEveryMarkHolds) {
  TempDir dir;
  const std::string prog = std::string(DMU_BUILD_DIR) + "/tests/kmod/dmu-flush-audit";
  LogBuilder good;
  good.write(0, stamped(0, 1, 0)).flush().mark("synced-0-1");
  good.save(dir.file("good"));
  auto ok = test::run(prog + " verify --log " + dir.file("good") + " --layout identity");
  EXPECT_EQ(ok.exit_code, 0) << ok.output;
  EXPECT_NE(ok.output.find("dmu-flush-audit: marks=1 checked=1 failures=0\n"), std::string::npos)
      << ok.output;

  LogBuilder bad;
  bad.write(0, stamped(0, 1, 0)).mark("synced-0-1");
  bad.save(dir.file("bad"));
  auto no = test::run(prog + " verify --log " + dir.file("bad") + " --layout identity");
  EXPECT_EQ(no.exit_code, 1) << no.output;
  EXPECT_NE(no.output.find("dmu-flush-audit: FAIL mark synced-0-1 (log entry 1): thread 0 offset "
                           "0x0: no stamp: zeros, expected seq >= 1\n"),
            std::string::npos)
      << no.output;
  EXPECT_NE(no.output.find("marks=1 checked=1 failures=1\n"), std::string::npos) << no.output;

  auto missing = test::run(prog + " verify --log " + dir.file("none") + " --layout identity");
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_EQ(missing.output.find("dmu-flush-audit: " + dir.file("none") + ": "), 0u)
      << missing.output;
  EXPECT_EQ(std::count(missing.output.begin(), missing.output.end(), '\n'), 1);
  auto layout = test::run(prog + " verify --log " + dir.file("good") + " --layout linear");
  EXPECT_EQ(layout.exit_code, 2);
  EXPECT_EQ(test::run(prog + " verify --help").exit_code, 0);
  EXPECT_EQ(test::run(prog + " write --help").exit_code, 0);
  EXPECT_EQ(test::run(prog + " --help").exit_code, 0);
  auto write = test::run(prog + " write --device " + dir.file("good"));
  EXPECT_EQ(write.exit_code, 2);
  EXPECT_NE(write.output.find("dmu-flush-audit write: "), std::string::npos) << write.output;
}

}  // namespace
}  // namespace dmu::testd::audit
