// Backing chains with the real engines, on images qemu-img makes: names
// resolved like QEMU's, formats probed when the image does not name them,
// loops and depth refused, backing images read-only, and mapping through the
// chain (unallocated falls through, a shorter backing image reads zeros past
// its end).
#include <gtest/gtest.h>

#include "formats/chain.h"
#include "tests/unit/cli_test_support.h"

namespace dmu::formats {
namespace {

using test::run_split;
using test::TempDir;

constexpr uint64_t M = 1024 * 1024;

Result<std::unique_ptr<Chain>> open(const std::string& path, Access access = Access::ReadOnly,
                                    unsigned max_depth = 64) {
  ChainOptions o;
  o.access = access;
  o.max_depth = max_depth;
  return Chain::open(posix_env(), path, o);
}

void sh(const TempDir& dir, const std::string& script) {
  auto r = run_split("set -e; " + script, dir.path());
  ASSERT_EQ(r.exit_code, 0) << r.err;
}

TEST(ResolveBackingPath, IsRelativeToTheDirectoryOfTheNamingImage) {
  EXPECT_EQ(resolve_backing_path("dir/top.qcow2", "base.qcow2"), "dir/base.qcow2");
  EXPECT_EQ(resolve_backing_path("top.qcow2", "base.qcow2"), "base.qcow2");
  EXPECT_EQ(resolve_backing_path("/a/b/top", "../c/base"), "/a/b/../c/base");
  EXPECT_EQ(resolve_backing_path("/a/b/top", "/abs/base"), "/abs/base");
}

TEST(Chain, OpensBackingFilesRelativeToTheImageNotTheWorkingDirectory) {
  TempDir dir;
  sh(dir,
     "mkdir -p a b; qemu-img create -q -f qcow2 b/base.qcow2 2M;"
     "qemu-io -f qcow2 b/base.qcow2 -c 'write -P 5 1M 64k' >/dev/null;"
     "qemu-img create -q -f qcow2 -b ../b/base.qcow2 -F qcow2 a/top.qcow2");
  auto chain = open(dir.file("a/top.qcow2"));  // the test runs elsewhere
  ASSERT_TRUE(chain) << chain.error().message;
  ASSERT_EQ((*chain)->size(), 2u);
  EXPECT_EQ((*chain)->images()[1]->info().filename, dir.file("a/../b/base.qcow2"));
  std::vector<uint8_t> got(64 * 1024);
  ASSERT_TRUE((*chain)->read(1 * M, got));
  EXPECT_EQ(got, std::vector<uint8_t>(64 * 1024, 5));
}

TEST(Chain, ProbesTheBackingFormatWhenTheImageDoesNotNameIt) {
  TempDir dir;  // qcow (v1) headers cannot name a backing format
  sh(dir,
     "qemu-img create -q -f qcow2 base.qcow2 1M; qemu-img create -q -f qcow -b base.qcow2 "
     "-F qcow2 top.qcow");
  auto chain = open(dir.file("top.qcow"));
  ASSERT_TRUE(chain) << chain.error().message;
  EXPECT_FALSE((*chain)->top().info().backing_file_format);
  EXPECT_EQ((*chain)->images()[1]->info().format, "qcow2");
}

TEST(Chain, AQcow2HeaderWithAnUnknownVersionIsRefusedNotOpenedAsRaw) {
  TempDir dir;  // QEMU: "Unsupported qcow2 version 4"; never the raw driver
  sh(dir,
     "qemu-img create -q -f qcow2 v4.qcow2 1M; printf '\\004' | dd of=v4.qcow2 bs=1 seek=7 "
     "conv=notrunc status=none");
  auto chain = open(dir.file("v4.qcow2"));
  ASSERT_FALSE(chain) << "opened as " << (*chain)->top().info().format;
  EXPECT_NE(chain.error().message.find("unsupported qcow2 version 4"), std::string::npos)
      << chain.error().message;
}

TEST(Chain, RefusesALoopThroughTwoImages) {
  TempDir dir;
  sh(dir,
     "qemu-img create -q -f qcow2 a.qcow2 1M; qemu-img create -q -f qcow2 -b a.qcow2 "
     "-F qcow2 b.qcow2; qemu-img rebase -u -b b.qcow2 -F qcow2 a.qcow2");
  auto chain = open(dir.file("b.qcow2"));
  ASSERT_FALSE(chain);
  EXPECT_EQ(chain.error().code, ELOOP);
  EXPECT_NE(chain.error().message.find("loops"), std::string::npos) << chain.error().message;
  EXPECT_NE(chain.error().message.find("b.qcow2"), std::string::npos) << chain.error().message;
}

TEST(Chain, RefusesAnImageThatIsItsOwnBackingFile) {
  TempDir dir;
  sh(dir, "qemu-img create -q -f qcow2 s.qcow2 1M; qemu-img rebase -u -b s.qcow2 -F qcow2 s.qcow2");
  auto chain = open(dir.file("s.qcow2"));
  ASSERT_FALSE(chain);
  EXPECT_EQ(chain.error().code, ELOOP);
}

TEST(Chain, RefusesAChainDeeperThanTheLimit) {
  TempDir dir;
  sh(dir,
     "qemu-img create -q -f qcow2 i0.qcow2 1M; for i in 1 2 3; do qemu-img create -q -f "
     "qcow2 -b i$((i - 1)).qcow2 -F qcow2 i$i.qcow2; done");
  EXPECT_TRUE(open(dir.file("i3.qcow2"), Access::ReadOnly, 4));
  auto chain = open(dir.file("i3.qcow2"), Access::ReadOnly, 3);
  ASSERT_FALSE(chain);
  EXPECT_EQ(chain.error().code, ELOOP);
  EXPECT_NE(chain.error().message.find("deeper than 3"), std::string::npos);
}

TEST(Chain, NamesBothImagesWhenTheBackingFileIsMissing) {
  TempDir dir;
  sh(dir,
     "qemu-img create -q -f qcow2 base.qcow2 1M; qemu-img create -q -f qcow2 -b base.qcow2 "
     "-F qcow2 top.qcow2; rm base.qcow2");
  auto chain = open(dir.file("top.qcow2"));
  ASSERT_FALSE(chain);
  EXPECT_EQ(chain.error().code, ENOENT);
  EXPECT_NE(chain.error().message.find("top.qcow2"), std::string::npos);
  EXPECT_NE(chain.error().message.find("base.qcow2"), std::string::npos);
}

TEST(Chain, OpensBackingImagesReadOnlyUnderAWritableTop) {
  TempDir dir;
  sh(dir,
     "qemu-img create -q -f qcow2 base.qcow2 1M; qemu-img create -q -f qcow2 -b base.qcow2 "
     "-F qcow2 top.qcow2");
  auto chain = open(dir.file("top.qcow2"), Access::ReadWrite);
  ASSERT_TRUE(chain) << chain.error().message;
  EXPECT_TRUE((*chain)->writable());
  EXPECT_TRUE((*chain)->top().prepare_write(0, 4096));
  EXPECT_FALSE((*chain)->images()[1]->prepare_write(0, 4096));
  const unsigned base_dev = (*chain)->device_index(1, 0);
  std::vector<uint8_t> b(1);
  EXPECT_FALSE((*chain)->devices()[base_dev]->write(0, b)) << "base file opened for writing";
}

TEST(Chain, UnallocatedFallsThroughAndShortBackingReadsZeros) {
  TempDir dir;
  sh(dir,
     "qemu-img create -q -f qcow2 base.qcow2 1M;"
     "qemu-io -f qcow2 base.qcow2 -c 'write -P 7 0 1M' >/dev/null;"
     "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 2M;"
     "qemu-io -f qcow2 top.qcow2 -c 'write -P 8 64k 64k' >/dev/null");
  auto chain = open(dir.file("top.qcow2"));
  ASSERT_TRUE(chain) << chain.error().message;
  auto& c = **chain;

  auto top = c.map(64 * 1024, 4096);
  ASSERT_TRUE(top);
  EXPECT_EQ(top->kind, ChainMapping::Kind::Data);
  EXPECT_EQ(top->depth, 0u);
  EXPECT_EQ(c.device_depth(top->device), 0u);

  auto base = c.map(0, 64 * 1024);
  ASSERT_TRUE(base);
  EXPECT_EQ(base->kind, ChainMapping::Kind::Data);
  EXPECT_EQ(base->depth, 1u);
  EXPECT_EQ(c.device_depth(base->device), 1u);
  EXPECT_FALSE(base->writable);

  auto past = c.map(M + 4096, 4096);
  ASSERT_TRUE(past);
  EXPECT_EQ(past->kind, ChainMapping::Kind::Zero);
  EXPECT_FALSE(past->present);
  EXPECT_EQ(past->depth, 0u);  // qemu-img map's depth: the last image covering the range

  std::vector<uint8_t> got(2 * M);
  ASSERT_TRUE(c.read(0, got));
  for (uint64_t i = 0; i < 2 * M; ++i) {
    const uint8_t want = i >= M ? 0 : (i >= 64 * 1024 && i < 128 * 1024) ? 8 : 7;
    ASSERT_EQ(got[i], want) << "at " << i;
  }
}

TEST(Chain, DevicesListEveryDataFileTopFirst) {
  TempDir dir;
  sh(dir,
     "qemu-img create -q -f vmdk -o subformat=twoGbMaxExtentFlat base.vmdk 3G;"
     "qemu-img create -q -f qcow2 -o data_file=top.data -b base.vmdk -F vmdk top.qcow2");
  auto chain = open(dir.file("top.qcow2"));
  ASSERT_TRUE(chain) << chain.error().message;
  auto& c = **chain;
  size_t expected = 0;
  for (const auto& image : c.images()) expected += image->data_files().size();
  ASSERT_EQ(c.devices().size(), expected);
  EXPECT_GE(expected, 3u);  // the data file and two 2 GiB extents at least
  for (unsigned d = 0; d < c.size(); ++d)
    for (unsigned f = 0; f < c.images()[d]->data_files().size(); ++f) {
      EXPECT_EQ(c.devices()[c.device_index(d, f)], c.images()[d]->data_files()[f]);
      EXPECT_EQ(c.device_depth(c.device_index(d, f)), d);
    }
}

}  // namespace
}  // namespace dmu::formats
