// The dm-log-writes log reader (tests/kmod/log_writes.h) against logs built
// in the kernel's format, dmu-log-writes-dump's output on them, and the
// replay of a log up to a mark (dmu-log-writes-replay).
#include "tests/kmod/log_writes.h"

#include <gtest/gtest.h>

#include "tests/support/test_support.h"
#include "tests/unit/log_writes_builder.h"

namespace dmu::testd::log_writes {
namespace {

using test::LogBuilder;
using test::TempDir;

std::vector<Entry> read_all(const std::string& path, std::vector<std::vector<uint8_t>>* datas) {
  auto r = Reader::open(path);
  EXPECT_TRUE(r) << r.error().message;
  std::vector<Entry> out;
  if (!r) return out;
  for (;;) {
    std::vector<uint8_t> data;
    auto e = r->next(&data);
    EXPECT_TRUE(e) << e.error().message;
    if (!e || !*e) break;
    out.push_back(**e);
    if (datas) datas->push_back(data);
  }
  return out;
}

class LogWritesReader : public ::testing::TestWithParam<uint32_t> {};

TEST_P(LogWritesReader, ReadsEveryKindOfEntryInOrder) {
  const uint32_t ss = GetParam();
  TempDir dir;
  auto a = test::random_bytes(2 * ss, 1), b = test::random_bytes(ss, 2);
  LogBuilder log(ss);
  log.write(3 * ss, a).flush().fua(7 * ss, b).discard(10 * ss, 4 * ss).mark("synced-1-2");
  log.write(0, b, LogBuilder::kFlush | LogBuilder::kFua | LogBuilder::kMeta);
  log.save(dir.file("log"));

  auto r = Reader::open(dir.file("log"));
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->nr_entries(), 6u);
  EXPECT_EQ(r->sectorsize(), ss);
  std::vector<std::vector<uint8_t>> data;
  auto e = read_all(dir.file("log"), &data);
  ASSERT_EQ(e.size(), 6u);
  EXPECT_EQ(e[0].offset, 3u * ss);
  EXPECT_EQ(e[0].length, 2u * ss);
  EXPECT_EQ(e[0].flags, 0u);
  EXPECT_EQ(data[0], a);
  EXPECT_TRUE(e[1].is_flush());
  EXPECT_EQ(e[1].length, 0u);
  EXPECT_TRUE(e[2].is_fua());
  EXPECT_EQ(e[2].offset, 7u * ss);
  EXPECT_EQ(data[2], b);
  EXPECT_TRUE(e[3].is_discard());
  EXPECT_EQ(e[3].offset, 10u * ss);
  EXPECT_EQ(e[3].length, 4u * ss);
  EXPECT_EQ(e[3].data_bytes(), 0u);
  EXPECT_TRUE(data[3].empty());
  EXPECT_TRUE(e[4].is_mark());
  EXPECT_EQ(e[4].mark, "synced-1-2");
  EXPECT_EQ(e[5].flags, kFlush | kFua | kMeta);
  EXPECT_EQ(flag_names(e[5].flags), "FLUSH,FUA,META");
  EXPECT_EQ(data[5], b);
  for (size_t i = 0; i < e.size(); ++i) EXPECT_EQ(e[i].index, i);
}

INSTANTIATE_TEST_SUITE_P(SectorSizes, LogWritesReader, ::testing::Values(512u, 4096u));

TEST(LogWrites, StopsAtTheSuperBlocksEntryCount) {
  // A live log: entries after the last FUA or MARK are not counted yet.
  TempDir dir;
  LogBuilder log;
  log.write(0, test::random_bytes(512, 3)).mark("m").write(512, test::random_bytes(512, 4));
  log.save(dir.file("log"), 2);
  auto e = read_all(dir.file("log"), nullptr);
  ASSERT_EQ(e.size(), 2u);
  EXPECT_EQ(e[1].mark, "m");
}

TEST(LogWrites, MaxMarkIsWhatTheKernelKeeps) {
  EXPECT_EQ(max_mark_bytes(512), 479u);
  TempDir dir;
  LogBuilder log;
  log.mark(std::string(479, 'x'));
  log.save(dir.file("log"));
  auto e = read_all(dir.file("log"), nullptr);
  ASSERT_EQ(e.size(), 1u);
  EXPECT_EQ(e[0].mark, std::string(479, 'x'));
}

TEST(LogWrites, RejectsWhatIsNotALog) {
  TempDir dir;
  test::write_file(dir.file("zeros"), std::vector<uint8_t>(4096, 0));
  auto r = Reader::open(dir.file("zeros"));
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find(dir.file("zeros") + ": not a dm-log-writes log"),
            std::string::npos)
      << r.error().message;
  auto missing = Reader::open(dir.file("missing"));
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message.find(dir.file("missing")), std::string::npos);
}

TEST(LogWrites, TruncatedLogNamesTheEntry) {
  TempDir dir;
  LogBuilder log;
  log.write(0, test::random_bytes(4096, 5)).write(4096, test::random_bytes(4096, 6));
  log.save(dir.file("log"));
  auto bytes = test::read_file(dir.file("log"));
  bytes.resize(bytes.size() - 512);
  test::write_file(dir.file("log"), bytes);
  auto r = Reader::open(dir.file("log"));
  ASSERT_TRUE(r);
  ASSERT_TRUE(r->next());
  auto e = r->next();
  ASSERT_FALSE(e);
  EXPECT_NE(e.error().message.find(dir.file("log") + ": entry 1 at byte"), std::string::npos)
      << e.error().message;
  EXPECT_NE(e.error().message.find("past the end of the log"), std::string::npos);
}

TEST(LogWritesDump, PrintsOneLinePerEntryIn512ByteSectors) {
  TempDir dir;
  LogBuilder log(4096);
  log.write(8192, test::random_bytes(8192, 7)).flush().discard(4096, 4096).mark("synced-0-1");
  log.save(dir.file("log"));
  const std::string dump = std::string(DMU_BUILD_DIR) + "/tests/kmod/dmu-log-writes-dump";
  auto r = test::run(dump + " " + test::shell_quote(dir.file("log")));
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.output,
            "# entries=4 sectorsize=4096\n"
            "0 flags=WRITE sector=16 sectors=16\n"
            "1 flags=FLUSH sector=0 sectors=0\n"
            "2 flags=DISCARD sector=8 sectors=8\n"
            "3 flags=MARK sector=0 sectors=0 mark=synced-0-1\n");
  auto bad = test::run(dump + " " + test::shell_quote(dir.file("nope")));
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_EQ(bad.output.find("dmu-log-writes-dump: " + dir.file("nope")), 0u) << bad.output;
}

// ---- replay ------------------------------------------------------------------

class LogWritesReplay : public ::testing::Test {
 protected:
  LogWritesReplay() : a_(test::random_bytes(4096, 11)), b_(test::random_bytes(1024, 12)) {
    // 0 write a@0  1 write b@8192  2 flush  3 mark one  4 discard 0..2048
    // 5 write b@4096 (FUA)  6 mark two  7 write a@12288
    LogBuilder log;
    log.write(0, a_).write(8192, b_).flush().mark("one").discard(0, 2048).fua(4096, b_);
    log.mark("two").write(12288, a_);
    log.save(dir_.file("log"));
    test::write_file(dir_.file("target"), std::vector<uint8_t>(16384, 0x77));
  }
  // What the target holds after the entries up to `upto` (exclusive).
  std::vector<uint8_t> expected(int upto) const {
    std::vector<uint8_t> t(16384, 0x77);
    auto put = [&](uint64_t at, const std::vector<uint8_t>& d) {
      std::copy(d.begin(), d.end(), t.begin() + static_cast<ptrdiff_t>(at));
    };
    if (upto > 0) put(0, a_);
    if (upto > 1) put(8192, b_);
    if (upto > 4) std::fill(t.begin(), t.begin() + 2048, 0);
    if (upto > 5) put(4096, b_);
    if (upto > 7) put(12288, a_);
    return t;
  }
  TempDir dir_;
  std::vector<uint8_t> a_, b_;
};

TEST_F(LogWritesReplay, StopsAtTheMarkAndResumesAfterIt) {
  ReplayOptions o{dir_.file("log"), dir_.file("target"), 0, std::nullopt, "one"};
  auto r = replay(o);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_TRUE(r->stopped_at_mark);
  EXPECT_EQ(r->mark_entry, 3u);
  EXPECT_EQ(r->writes, 2u);
  EXPECT_EQ(r->next_entry, 4u);
  EXPECT_EQ(test::read_file(dir_.file("target")), expected(3));

  // Resumed with the position it printed, and by reading the headers again.
  for (bool with_offset : {true, false}) {
    SCOPED_TRACE(with_offset);
    test::write_file(dir_.file("target"), expected(3));
    ReplayOptions o2{dir_.file("log"), dir_.file("target"), r->next_entry, std::nullopt, "two"};
    if (with_offset) o2.from_offset = r->next_offset;
    auto r2 = replay(o2);
    ASSERT_TRUE(r2) << r2.error().message;
    EXPECT_EQ(r2->mark_entry, 6u);
    EXPECT_EQ(r2->discards, 1u);
    EXPECT_EQ(r2->writes, 1u);
    EXPECT_EQ(r2->bytes, 2048u + 1024u);
    EXPECT_EQ(test::read_file(dir_.file("target")), expected(6));
    auto rest =
        replay({dir_.file("log"), dir_.file("target"), r2->next_entry, r2->next_offset, ""});
    ASSERT_TRUE(rest) << rest.error().message;
    EXPECT_FALSE(rest->stopped_at_mark);
    EXPECT_EQ(rest->next_entry, 8u);
    EXPECT_EQ(test::read_file(dir_.file("target")), expected(8));
  }
}

TEST_F(LogWritesReplay, AMarkNotFoundAfterTheStartIsAnError) {
  auto r = replay({dir_.file("log"), dir_.file("target"), 4, std::nullopt, "one"});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message,
            dir_.file("log") + ": no mark 'one' from entry 4 to the end (entry 8)");
  auto past = replay({dir_.file("log"), dir_.file("target"), 9, std::nullopt, ""});
  ASSERT_FALSE(past);
  EXPECT_NE(past.error().message.find("cannot start at entry 9"), std::string::npos);
  auto bad_seek = replay({dir_.file("log"), dir_.file("target"), 4, 100, ""});
  ASSERT_FALSE(bad_seek);
  EXPECT_NE(bad_seek.error().message.find("cannot resume at entry 4, byte 0x64"), std::string::npos)
      << bad_seek.error().message;
}

TEST_F(LogWritesReplay, AWritePastTheTargetIsRefused) {
  test::write_file(dir_.file("small"), std::vector<uint8_t>(8192, 0));
  auto r = replay({dir_.file("log"), dir_.file("small"), 0, std::nullopt, ""});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message, dir_.file("log") +
                                   ": entry 1 writes 1024 bytes at 0x2000, past "
                                   "the end of " +
                                   dir_.file("small") + " (8192 bytes)");
}

TEST_F(LogWritesReplay, TheProgramPrintsWhereToResume) {
  const std::string prog = std::string(DMU_BUILD_DIR) + "/tests/kmod/dmu-log-writes-replay";
  const std::string base = prog + " --log " + test::shell_quote(dir_.file("log")) + " --target " +
                           test::shell_quote(dir_.file("target"));
  auto one = test::run("{ " + base + " --to-mark one 2>/dev/null; }");
  EXPECT_EQ(one.exit_code, 0) << one.output;
  // Entries 0..3 take 4 header sectors and 4096 + 1024 bytes of data after the super block.
  EXPECT_EQ(one.output, "next-entry=4 next-offset=" + std::to_string(512 + 4 * 512 + 5120) + "\n");
  auto two = test::run(base + " --from-entry 4 --from-offset 7680 --to-mark two");
  EXPECT_EQ(two.exit_code, 0) << two.output;
  EXPECT_NE(two.output.find("stopped at mark two (entry 6)"), std::string::npos) << two.output;
  EXPECT_EQ(test::read_file(dir_.file("target")), expected(6));
  auto none = test::run(base + " --to-mark three");
  EXPECT_EQ(none.exit_code, 1);
  EXPECT_EQ(none.output.find("dmu-log-writes-replay: " + dir_.file("log") + ": no mark 'three'"),
            0u)
      << none.output;
  EXPECT_EQ(test::run(base + " --bogus").exit_code, 2);
}

}  // namespace
}  // namespace dmu::testd::log_writes
