// dmu-flush-audit check-image (tests/kmod/flush_audit.h): the virtual disk
// a crash at a mark left must hold every write synced before the mark and
// nothing the writer did not write at that offset; without a mark, exactly
// the last writes.  Each way a mapping stack can lose or misplace a synced
// block must fail, naming the mark, the thread and the offset.
#include <gtest/gtest.h>

#include <algorithm>

#include "tests/kmod/flush_audit.h"
#include "tests/support/test_support.h"

namespace dmu::testd::audit {
namespace {

using test::TempDir;

constexpr uint64_t kRun = 0x1234abcd5678ef01ULL;
constexpr uint64_t kDisk = 64 * kUnit;  // the virtual disk: 64 units
constexpr uint64_t kPart = 32 * kUnit;  // thread 1 writes from here

// Thread 0 writes units 0..31, thread 1 units 32..63, each syncing twice:
//   order: 1 w0s1@u1  2 w1s1@u32  3 w0s2@u2  4 sync0-2  5 w1s2@u33  6 sync1-2
//          7 w0s3@u1  8 w0s4@u3   9 sync0-4  10 w1s3@u34
Journal journal() {
  Journal j;
  j.run = kRun;
  j.block_size = kUnit;
  j.threads = 2;
  j.writes = {{0, 1, 1 * kUnit, 1},         {1, 1, kPart, 2},     {0, 2, 2 * kUnit, 3},
              {1, 2, kPart + kUnit, 5},     {0, 3, 1 * kUnit, 7}, {0, 4, 3 * kUnit, 8},
              {1, 3, kPart + 2 * kUnit, 10}};
  j.syncs = {{0, 2, 4}, {1, 2, 6}, {0, 4, 9}};
  return j;
}

class FlushAuditImage : public ::testing::Test {
 protected:
  FlushAuditImage() : disk_(kDisk, 0) { EXPECT_TRUE(write_journal(dir_.file("j"), journal())); }

  void put(uint32_t thread, uint64_t seq, uint64_t offset, uint64_t at, uint64_t run = kRun) {
    fill_unit(make_stamp(thread, seq, offset, run), std::span<uint8_t, kUnit>(&disk_[at], kUnit));
  }
  void put(uint32_t thread, uint64_t seq, uint64_t offset) { put(thread, seq, offset, offset); }
  // Everything the journal wrote, each offset's last write.
  void put_all() {
    put(0, 3, 1 * kUnit);
    put(0, 2, 2 * kUnit);
    put(0, 4, 3 * kUnit);
    put(1, 1, kPart);
    put(1, 2, kPart + kUnit);
    put(1, 3, kPart + 2 * kUnit);
  }
  ImageReport check(const std::string& mark) {
    test::write_file(dir_.file("disk"), disk_);
    auto r = check_image({dir_.file("disk"), dir_.file("j"), mark, 100});
    EXPECT_TRUE(r) << r.error().message;
    return r ? *r : ImageReport{};
  }
  static std::string describe(const ImageReport& r) {
    std::string s = r.summary() + "\n";
    for (const auto& f : r.failures) s += f + "\n";
    return s;
  }

  TempDir dir_;
  std::vector<uint8_t> disk_;
};

TEST_F(FlushAuditImage, PassesWithExactlyTheSyncedWrites) {
  // synced-0-2: thread 0's seqs 1 and 2, nothing of thread 1 yet.
  put(0, 1, 1 * kUnit);
  put(0, 2, 2 * kUnit);
  ImageReport r = check("synced-0-2");
  EXPECT_TRUE(r.passed()) << describe(r);
  EXPECT_EQ(r.expected, 2u);
  EXPECT_EQ(r.stamped, 2u);
  EXPECT_EQ(r.units, 64u);
}

TEST_F(FlushAuditImage, WritesNotSyncedMayOrMayNotBeThere) {
  put_all();  // thread 0's seq 3 overwrote seq 1, thread 1 went on: all newer
  ImageReport r = check("synced-0-2");
  EXPECT_TRUE(r.passed()) << describe(r);
}

TEST_F(FlushAuditImage, EarlierMarksOfOtherThreadsAreCovered) {
  // synced-0-4 comes after synced-1-2: thread 1's seqs 1 and 2 are due too.
  put(0, 3, 1 * kUnit);
  put(0, 2, 2 * kUnit);
  put(0, 4, 3 * kUnit);
  put(1, 1, kPart);
  ImageReport r = check("synced-0-4");
  EXPECT_FALSE(r.passed());
  ASSERT_EQ(r.failures.size(), 1u) << describe(r);
  EXPECT_EQ(r.failures[0],
            "FAIL mark synced-0-4: thread 1 offset 0x21000: no stamp: zeros, expected seq >= 2 "
            "(synced before the mark)");
  put(1, 2, kPart + kUnit);
  EXPECT_TRUE(check("synced-0-4").passed());
}

TEST_F(FlushAuditImage, AnOlderWriteWhereANewerOneWasSyncedIsStale) {
  put_all();
  put(0, 1, 1 * kUnit);  // seq 3 was synced by synced-0-4
  ImageReport r = check("synced-0-4");
  ASSERT_EQ(r.failures.size(), 1u) << describe(r);
  EXPECT_EQ(r.failures[0],
            "FAIL mark synced-0-4: thread 0 offset 0x1000: stale seq: found seq 1, expected seq "
            ">= 3 (synced before the mark)");
  EXPECT_TRUE(check("synced-0-2").passed());  // seq 1 is all synced-0-2 asked for
}

TEST_F(FlushAuditImage, DataOfAnotherPlaceFailsEvenWhereNothingWasSynced) {
  put_all();
  // An L2 entry pointing at the wrong cluster: unit 40 shows unit 33's data.
  put(1, 2, kPart + kUnit, 40 * kUnit);
  ImageReport r = check("synced-0-2");
  ASSERT_EQ(r.failures.size(), 1u) << describe(r);
  EXPECT_EQ(r.failures[0],
            "FAIL mark synced-0-2: offset 0x28000: misplaced: holds the stamp of thread 1 offset "
            "0x21000 seq 2");
}

TEST_F(FlushAuditImage, ForeignTornAndUnknownDataFail) {
  put_all();
  disk_[50 * kUnit + 7] = 0xaa;  // metadata, say, where the guest wrote nothing
  disk_[2 * kUnit + 100] ^= 1;   // a torn block
  put(0, 9, 5 * kUnit);          // a stamp the writer never wrote
  put(1, 1, kPart + 3 * kUnit, kPart + 3 * kUnit, kRun + 1);  // another run's
  ImageReport r = check("synced-0-2");
  EXPECT_EQ(r.failure_count, 4u) << describe(r);
  const std::string all = describe(r);
  EXPECT_NE(all.find("FAIL mark synced-0-2: thread 0 offset 0x2000: corrupt: stamp of thread 0 "
                     "offset 0x2000 seq 2 but the rest of the block does not match it"),
            std::string::npos)
      << all;
  EXPECT_NE(all.find("offset 0x5000: holds seq 9 of thread 0, which the writer never wrote there"),
            std::string::npos)
      << all;
  EXPECT_NE(all.find("offset 0x32000: no stamp: foreign data, where the writer had synced nothing"),
            std::string::npos)
      << all;
  EXPECT_NE(all.find("offset 0x23000: wrong run"), std::string::npos) << all;
}

TEST_F(FlushAuditImage, WithoutAMarkEveryLastWriteMustBeThereExactly) {
  put_all();
  EXPECT_TRUE(check("").passed());
  put(1, 2, kPart + 2 * kUnit);  // not thread 1's last write there...
  put(1, 1, kPart + 2 * kUnit);  // ...nor is this
  ImageReport r = check("");
  ASSERT_EQ(r.failures.size(), 1u) << describe(r);
  EXPECT_EQ(r.failures[0].find("FAIL final image: thread 1 offset 0x22000: "), 0u) << describe(r);
  EXPECT_EQ(r.expected, 6u);
}

TEST_F(FlushAuditImage, AShortDiskAndAnUnknownMarkAreReported) {
  disk_.resize(33 * kUnit);
  put(0, 1, 1 * kUnit);
  put(0, 2, 2 * kUnit);
  ImageReport r = check("synced-0-2");
  ASSERT_EQ(r.failure_count, 1u) << describe(r);
  EXPECT_NE(r.failures[0].find("the virtual disk has 135168 bytes, the writer wrote up to 143360"),
            std::string::npos);

  auto unknown = check_image({dir_.file("disk"), dir_.file("j"), "synced-1-1", 10});
  ASSERT_FALSE(unknown);
  EXPECT_EQ(unknown.error().message, dir_.file("j") + ": the writer journaled no sync synced-1-1");
  auto bad = check_image({dir_.file("disk"), dir_.file("j"), "dm-log-writes-end", 10});
  ASSERT_FALSE(bad);
  auto missing = check_image({dir_.file("nope"), dir_.file("j"), "", 10});
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message.find(dir_.file("nope")), std::string::npos);
}

TEST_F(FlushAuditImage, TheProgramExitsOneOnAFailureAndTwoOnAnError) {
  const std::string prog = std::string(DMU_BUILD_DIR) + "/tests/kmod/dmu-flush-audit";
  put(0, 1, 1 * kUnit);
  test::write_file(dir_.file("disk"), disk_);
  const std::string args =
      " check-image --image " + dir_.file("disk") + " --journal " + dir_.file("j") + " --mark ";
  auto no = test::run(prog + args + "synced-0-2");
  EXPECT_EQ(no.exit_code, 1) << no.output;
  EXPECT_NE(no.output.find("dmu-flush-audit: FAIL mark synced-0-2: thread 0 offset 0x2000: no "
                           "stamp: zeros, expected seq >= 2 (synced before the mark)\n"),
            std::string::npos)
      << no.output;
  EXPECT_NE(no.output.find("dmu-flush-audit: check-image units=64 stamped=1 expected=2 "
                           "failures=1\n"),
            std::string::npos)
      << no.output;
  put(0, 2, 2 * kUnit);
  test::write_file(dir_.file("disk"), disk_);
  auto ok = test::run(prog + args + "synced-0-2");
  EXPECT_EQ(ok.exit_code, 0) << ok.output;
  auto err = test::run(prog + args + "synced-7-7");
  EXPECT_EQ(err.exit_code, 2) << err.output;
  EXPECT_EQ(test::run(prog + " check-image --help").exit_code, 0);
}

}  // namespace
}  // namespace dmu::testd::audit
