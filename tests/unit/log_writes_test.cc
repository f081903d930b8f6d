// The dm-log-writes log reader (tests/kmod/log_writes.h) against logs built
// in the kernel's format, and dmu-log-writes-dump's output on them.
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

}  // namespace
}  // namespace dmu::testd::log_writes
