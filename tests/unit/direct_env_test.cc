// direct_io_env (fileio/direct_env.h): the mapping process's files where the
// kernel writes guest data with direct I/O.  Reads and writes at any offset
// and length, growing and hole punching give what buffered I/O gives (the
// file may end at a sector boundary instead), and nothing of the file enters
// the page cache, which is
// what keeps a metadata write from sharing a page with the kernel's data
// writes.  Other files, and read-only opens, stay buffered.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <random>

#include "fileio/direct_env.h"
#include "tests/support/test_support.h"

namespace dmu {
namespace {

// Pages of `path` in the page cache.
size_t cached_pages(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ~size_t(0);
  const off_t size = ::lseek(fd, 0, SEEK_END);
  const size_t page = size_t(::sysconf(_SC_PAGESIZE));
  size_t n = 0;
  if (size > 0) {
    void* map = ::mmap(nullptr, size_t(size), PROT_READ, MAP_SHARED, fd, 0);
    if (map != MAP_FAILED) {
      std::vector<unsigned char> vec((size_t(size) + page - 1) / page);
      if (::mincore(map, size_t(size), vec.data()) == 0)
        for (unsigned char v : vec) n += v & 1;
      ::munmap(map, size_t(size));
    }
  }
  ::close(fd);
  return n;
}

// A file of `bytes`, durable and evicted from the page cache.
void make_cold(const std::string& path, const std::vector<uint8_t>& bytes) {
  test::write_file(path, bytes);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  ::fdatasync(fd);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
}

std::unique_ptr<File> open_direct(Env& env, const std::string& path) {
  auto f = env.open(path, OpenMode::ReadWrite);
  EXPECT_TRUE(f) << f.error().message;
  return f ? std::move(*f) : nullptr;
}

TEST(DirectIoEnv, UnalignedIoGivesWhatBufferedIoGives) {
  test::TempDir dir;
  const auto seed = test::random_bytes(3 << 20, 1);
  make_cold(dir.file("direct"), seed);
  make_cold(dir.file("plain"), seed);
  auto env = direct_io_env({*posix_env().identity(dir.file("direct"))});
  auto d = open_direct(*env, dir.file("direct"));
  ASSERT_TRUE(d);
  if (!does_direct_io(*d)) GTEST_SKIP() << "no 512-byte direct I/O on " << dir.path();
  auto p = *posix_env().open(dir.file("plain"), OpenMode::ReadWrite);

  std::mt19937 rng(5);
  for (int op = 0; op < 300; ++op) {
    // Offsets around the end of the file too, and lengths past the bounce buffer.
    const uint64_t size = *p->size();
    const uint64_t off = rng() % (size + 8192);
    const size_t len = 1 + (rng() % 8 == 0 ? rng() % (2 << 20) : rng() % 3000);
    const unsigned kind = rng() % 10;
    if (kind == 0) {  // grow, from wherever the end is
      const uint64_t to = size + 1 + rng() % 10000;
      ASSERT_TRUE(d->truncate(to)) << "op " << op;
      ASSERT_TRUE(p->truncate(to));
    } else if (kind == 1) {
      const uint64_t at = rng() % size, n = 1 + rng() % std::min<uint64_t>(size - at, 20000);
      ASSERT_TRUE(d->punch_hole(at, n)) << "op " << op;
      ASSERT_TRUE(p->punch_hole(at, n));
    } else if (kind < 6) {
      const auto b = test::random_bytes(len, uint32_t(rng()));
      ASSERT_TRUE(d->write(off, b)) << "op " << op;
      ASSERT_TRUE(p->write(off, b));
    } else {
      std::vector<uint8_t> x(len), y(len);
      auto gx = d->read_some(off, x);
      auto gy = p->read_some(off, y);
      ASSERT_TRUE(gx && gy) << "op " << op;
      // The direct file may end up to a sector later, in zeros.
      ASSERT_TRUE(*gx >= *gy && *gx - *gy < 512)
          << "op " << op << ": read at " << off << "+" << len << " got " << *gx << ", not " << *gy;
      ASSERT_TRUE(std::equal(x.begin(), x.begin() + ptrdiff_t(*gy), y.begin()))
          << "op " << op << ": read at " << off << "+" << len;
      ASSERT_TRUE(std::all_of(x.begin() + ptrdiff_t(*gy), x.begin() + ptrdiff_t(*gx),
                              [](uint8_t v) { return v == 0; }));
    }
  }
  d.reset();
  const auto want = test::read_file(dir.file("plain"));
  auto got = test::read_file(dir.file("direct"));
  ASSERT_GE(got.size(), want.size());
  EXPECT_LT(got.size() - want.size(), 512u) << "grown at most to the end of the last sector";
  EXPECT_TRUE(std::all_of(got.begin() + ptrdiff_t(want.size()), got.end(),
                          [](uint8_t v) { return v == 0; }));
  got.resize(want.size());
  EXPECT_TRUE(got == want);
}

// The mechanism that fixes the loop's "Page cache invalidation failure on
// direct I/O" (and the EIO of its next flush): metadata reads and writes of
// a few bytes between data clusters, growing the file from inside a page and
// punching a hole with partial pages at its ends leave no page of the file
// cached.
TEST(DirectIoEnv, LeavesNothingOfTheFileInThePageCache) {
  test::TempDir dir;
  for (const bool direct : {false, true}) {
    const std::string path = dir.file(direct ? "d" : "p");
    make_cold(path, test::random_bytes(1 << 20, 2));
    if (cached_pages(path) != 0) GTEST_SKIP() << "cannot evict " << path << " from the page cache";
    auto env = direct_io_env(direct ? std::set<std::string>{*posix_env().identity(path)}
                                    : std::set<std::string>{});
    auto f = open_direct(*env, path);
    ASSERT_TRUE(f);
    if (direct && !does_direct_io(*f)) GTEST_SKIP() << "no 512-byte direct I/O on " << dir.path();
    std::vector<uint8_t> entry(8);
    for (uint64_t at : {144u, 147904u, 600000u}) {  // an L1 entry, L2 entries
      ASSERT_TRUE(f->read(at, entry));
      ASSERT_TRUE(f->write(at, test::random_bytes(8, uint32_t(at))));
    }
    ASSERT_TRUE(f->write(1315840, test::random_bytes(32768, 3)));  // a new table
    ASSERT_TRUE(f->truncate(1315840 + 32768 + 1536 + 100000));     // grown from inside a page
    ASSERT_TRUE(f->punch_hole(1000, 9000));                        // partial pages at both ends
    ASSERT_TRUE(f->sync());
    if (direct)
      EXPECT_EQ(cached_pages(path), 0u);
    else
      EXPECT_GT(cached_pages(path), 0u) << "buffered I/O should show in the page cache";
  }
}

TEST(DirectIoEnv, OtherFilesAndReadOnlyOpensAreBuffered) {
  test::TempDir dir;
  make_cold(dir.file("a"), test::random_bytes(4096, 4));
  make_cold(dir.file("b"), test::random_bytes(4096, 4));
  auto env = direct_io_env({*posix_env().identity(dir.file("a"))});
  auto b = env->open(dir.file("b"), OpenMode::ReadWrite);
  ASSERT_TRUE(b);
  EXPECT_FALSE(does_direct_io(**b));
  auto a_ro = env->open(dir.file("a"), OpenMode::ReadOnly);
  ASSERT_TRUE(a_ro);
  EXPECT_FALSE(does_direct_io(**a_ro));
  // Named by another path to the same file: still direct (where it can be).
  auto a = env->open(dir.path() + "/./a", OpenMode::ReadWrite);
  ASSERT_TRUE(a);
  EXPECT_EQ((*a)->path(), dir.path() + "/./a");
}

}  // namespace
}  // namespace dmu
