#include <gtest/gtest.h>

#include "fileio/mem_env.h"
#include "fileio/path.h"
#include "tests/support/fault_env.h"
#include "tests/support/test_support.h"

namespace dmu {
namespace {

using test::CrashKeeps;
using test::FaultEnv;

std::vector<uint8_t> bytes(std::initializer_list<uint8_t> b) { return b; }

TEST(Path, ParentDirectoryIsSomethingToOpen) {
  EXPECT_EQ(parent_directory("dir/sub/a"), "dir/sub");
  EXPECT_EQ(parent_directory("/a"), "/");
  EXPECT_EQ(parent_directory("a"), ".");
}

TEST(Path, DirectoryPrefixTakesARelativeName) {
  EXPECT_EQ(directory_prefix("dir/sub/a") + "b", "dir/sub/b");
  EXPECT_EQ(directory_prefix("/a") + "b", "/b");
  EXPECT_EQ(directory_prefix("a") + "b", "b");
}

TEST(PosixEnv, ReadsBackWhatItWrote) {
  test::TempDir dir;
  auto f = posix_env().open(dir.file("a"), OpenMode::CreateExclusive);
  ASSERT_TRUE(f) << f.error().message;
  ASSERT_TRUE((*f)->write(4096, bytes({1, 2, 3})));
  std::vector<uint8_t> out(3);
  ASSERT_TRUE((*f)->read(4096, out));
  EXPECT_EQ(out, bytes({1, 2, 3}));
  EXPECT_EQ(*(*f)->size(), 4099u);
}

TEST(PosixEnv, ShortReadNamesFileAndOffset) {
  test::TempDir dir;
  auto f = posix_env().open(dir.file("a"), OpenMode::CreateExclusive);
  ASSERT_TRUE(f);
  std::vector<uint8_t> out(16);
  auto r = (*f)->read(0x1000, out);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find(dir.file("a")), std::string::npos);
  EXPECT_NE(r.error().message.find("0x1000"), std::string::npos);
}

TEST(PosixEnv, SyncsTheDirectoryHoldingAFileOrSaysWhichItCannot) {
  test::TempDir dir;
  ASSERT_TRUE(posix_env().open(dir.file("a"), OpenMode::CreateExclusive));
  auto ok = posix_env().sync_directory_of(dir.file("a"));
  EXPECT_TRUE(ok) << ok.error().message;
  auto missing = posix_env().sync_directory_of(dir.file("gone/a"));
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, ENOENT);
  EXPECT_NE(missing.error().message.find(dir.file("gone")), std::string::npos);
}

TEST(PosixEnv, OpenMissingFileFailsWithEnoent) {
  auto f = posix_env().open("/nonexistent/x.qcow2", OpenMode::ReadOnly);
  ASSERT_FALSE(f);
  EXPECT_EQ(f.error().code, ENOENT);
}

TEST(MemEnv, FilesSurviveReopen) {
  MemEnv env;
  {
    auto f = env.open("x", OpenMode::CreateExclusive);
    ASSERT_TRUE(f);
    ASSERT_TRUE((*f)->write(0, bytes({9})));
  }
  EXPECT_EQ(env.contents("x"), bytes({9}));
  EXPECT_FALSE(env.open("x", OpenMode::CreateExclusive));
}

TEST(FaultEnv, CrashDropsUnsyncedWritesAndKeepsSyncedOnes) {
  FaultEnv env;
  auto f = env.open("img", OpenMode::CreateExclusive);
  ASSERT_TRUE(f);
  ASSERT_TRUE(env.sync_directory_of("img"));
  ASSERT_TRUE((*f)->write(0, bytes({1, 1})));
  ASSERT_TRUE((*f)->sync());
  ASSERT_TRUE((*f)->write(1, bytes({2, 2})));
  env.crash(CrashKeeps::Nothing);
  EXPECT_EQ(env.contents("img"), bytes({1, 1}));
}

TEST(FaultEnv, CrashCanKeepEverything) {
  FaultEnv env;
  auto f = env.open("img", OpenMode::CreateExclusive);
  ASSERT_TRUE(f);
  ASSERT_TRUE((*f)->write(0, bytes({1, 2})));
  env.crash(CrashKeeps::Everything);
  EXPECT_EQ(env.contents("img"), bytes({1, 2}));
}

TEST(FaultEnv, PowerCutFailsLaterMutationsAndKillsOldHandles) {
  FaultEnv env;
  auto f = env.open("img", OpenMode::CreateExclusive);
  ASSERT_TRUE(f);
  ASSERT_TRUE(env.sync_directory_of("img"));
  env.power_cut_after(1);
  EXPECT_TRUE((*f)->write(0, bytes({1})));
  EXPECT_FALSE((*f)->write(1, bytes({2})));
  EXPECT_FALSE((*f)->sync());
  env.crash(CrashKeeps::Nothing);
  std::vector<uint8_t> out(1);
  EXPECT_FALSE((*f)->read_some(0, out));  // handle from before the crash
  auto g = env.open("img", OpenMode::ReadWrite);
  ASSERT_TRUE(g);
  EXPECT_EQ(*(*g)->size(), 0u);
}

TEST(FaultEnv, RandomSubsetKeepsSomeButNotAllWrites) {
  bool saw_partial = false;
  for (uint32_t seed = 0; seed < 32 && !saw_partial; ++seed) {
    FaultEnv env;
    auto f = env.open("img", OpenMode::CreateExclusive);
    ASSERT_TRUE(f);
    for (uint8_t i = 0; i < 8; ++i) ASSERT_TRUE((*f)->write(i, bytes({uint8_t(i + 1)})));
    env.crash(CrashKeeps::RandomSubset, seed);
    auto c = env.contents("img");
    size_t kept = 0;
    for (uint8_t b : c) kept += b != 0;
    saw_partial = kept > 0 && kept < 8;
  }
  EXPECT_TRUE(saw_partial);
}

// A write of several sectors may be torn between them, never inside one.
TEST(FaultEnv, RandomSubsetTearsWritesAtSectorsOnly) {
  bool saw_torn = false;
  for (uint32_t seed = 0; seed < 32; ++seed) {
    FaultEnv env;
    env.set_contents("img", std::vector<uint8_t>(4096, 0));
    auto f = env.open("img", OpenMode::ReadWrite);
    ASSERT_TRUE(f);
    // 3000 bytes from offset 100: a partial first sector, five whole ones and
    // a partial last one.
    ASSERT_TRUE((*f)->write(100, std::vector<uint8_t>(3000, 7)));
    env.crash(CrashKeeps::RandomSubset, seed);
    const auto c = env.contents("img");
    ASSERT_EQ(c.size(), 4096u);
    size_t kept = 0;
    for (size_t sector = 0; sector < 8; ++sector) {
      const uint64_t lo = std::max<uint64_t>(sector * 512, 100);
      const uint64_t hi = std::min<uint64_t>((sector + 1) * 512, 3100);
      if (lo >= hi) continue;
      const bool first_new = c[lo] == 7;
      for (uint64_t i = lo; i < hi; ++i)
        ASSERT_EQ(c[i] == 7, first_new) << "seed " << seed << ": sector " << sector << " torn";
      kept += first_new;
    }
    for (size_t i = 0; i < 100; ++i) ASSERT_EQ(c[i], 0) << "byte " << i << " never written";
    for (size_t i = 3100; i < 4096; ++i) ASSERT_EQ(c[i], 0) << "byte " << i << " never written";
    saw_torn |= kept > 0 && kept < 7;
  }
  EXPECT_TRUE(saw_torn);
}

TEST(FaultEnv, NewNameIsLostUntilItsDirectoryIsSynced) {
  FaultEnv env;
  for (const char* name : {"d/a", "d/b", "e/c"}) {
    auto f = env.open(name, OpenMode::CreateExclusive);
    ASSERT_TRUE(f);
    ASSERT_TRUE((*f)->write(0, bytes({1})));
    ASSERT_TRUE((*f)->sync());
  }
  ASSERT_TRUE(env.sync_directory_of("d/b"));  // d's entries, not e's
  env.crash(CrashKeeps::Nothing);
  EXPECT_TRUE(env.exists("d/a"));
  EXPECT_EQ(env.contents("d/b"), bytes({1}));
  EXPECT_FALSE(env.exists("e/c"));
}

TEST(FaultEnv, RemovalIsUndoneUntilItsDirectoryIsSynced) {
  for (bool synced : {false, true}) {
    FaultEnv env;
    env.set_contents("d/a", bytes({4}));
    ASSERT_TRUE(env.remove("d/a"));
    EXPECT_FALSE(env.exists("d/a"));
    if (synced) {
      ASSERT_TRUE(env.sync_directory_of("d/a"));
    }
    env.crash(CrashKeeps::Nothing);
    EXPECT_EQ(env.exists("d/a"), !synced);
    if (!synced) {
      EXPECT_EQ(env.contents("d/a"), bytes({4}));
    }
  }
}

TEST(FaultEnv, DirectorySyncFailsAfterThePowerCut) {
  FaultEnv env;
  ASSERT_TRUE(env.open("d/a", OpenMode::CreateExclusive));
  env.power_cut_after(0);
  EXPECT_FALSE(env.sync_directory_of("d/a"));
  env.crash(CrashKeeps::Nothing);
  EXPECT_FALSE(env.exists("d/a"));
}

}  // namespace
}  // namespace dmu
