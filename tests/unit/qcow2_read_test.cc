// The qcow2 engine reads what QEMU writes: for images made by qemu-img and
// qemu-io in every supported option, every guest byte read through map(),
// the data files and read_compressed() equals `qemu-img convert -O raw`,
// map() agrees with `qemu-img map` on data vs zero, and info() agrees with
// `qemu-img info`.
#include <gtest/gtest.h>

#include "fileio/file.h"
#include "formats/format_specific_json.h"
#include "tests/unit/qcow2_test_helpers.h"

namespace dmu::qcow2_test {
namespace {

using test::run_ok;
using test::shell_quote;

struct ReadCase {
  const char* name;
  const char* create_options;  // qemu-img create -o
  const char* size;
  std::vector<std::string> io;            // qemu-io -c commands
  const char* convert_options = nullptr;  // when set: qemu-img convert -c -o ... from the image
};

const std::vector<std::string> kMixedWrites = {
    "write -P 0x11 0 64k",   "write -P 0x22 100k 8k", "write -z 1M 128k",
    "write -P 0x33 2M 1M",   "discard 2M 64k",        "write -P 0x44 3M 512",
    "write -P 0x55 5M 192k", "write -z -u 5M 64k",    "write -P 0x66 7M 4k"};

const std::vector<std::string> kSubclusterWrites = {
    "write -P 0x11 0 4k",  "write -P 0x22 6k 2k",   "write -P 0x33 64k 64k",
    "write -z 128k 8k",    "write -P 0x44 130k 2k", "write -z 200k 64k",
    "write -P 0x55 1M 3k", "discard 2M 64k",        "write -P 0x66 2M 4k"};

std::vector<ReadCase> cases() {
  return {
      {"v3_default", "compat=1.1", "8M", kMixedWrites},
      {"v2_compat_0_10",
       "compat=0.10",
       "8M",
       {"write -P 0x11 0 64k", "write -P 0x22 100k 8k", "write -P 0x33 2M 1M",
        "write -P 0x44 3M 512", "write -P 0x55 7M 4k"}},
      {"cluster_512",
       "cluster_size=512",
       "2M",
       {"write -P 0x11 0 1k", "write -P 0x22 1500 100", "write -z 64k 4k",
        "write -P 0x33 1M 300k"}},
      {"cluster_4k", "cluster_size=4k", "8M", kMixedWrites},
      {"cluster_2M", "cluster_size=2M", "16M", kMixedWrites},
      {"refcount_bits_1", "refcount_bits=1", "8M", kMixedWrites},
      {"refcount_bits_2", "refcount_bits=2", "8M", kMixedWrites},
      {"refcount_bits_4", "refcount_bits=4", "8M", kMixedWrites},
      {"refcount_bits_8", "refcount_bits=8", "8M", kMixedWrites},
      {"refcount_bits_32", "refcount_bits=32", "8M", kMixedWrites},
      {"refcount_bits_64", "refcount_bits=64", "8M", kMixedWrites},
      {"lazy_refcounts", "lazy_refcounts=on", "8M", kMixedWrites},
      {"extended_l2", "extended_l2=on", "8M", kSubclusterWrites},
      {"extended_l2_cluster_16k", "extended_l2=on,cluster_size=16k", "4M", kSubclusterWrites},
      {"data_file", "data_file=read.data", "8M", kMixedWrites},
      {"data_file_raw", "data_file=read.data,data_file_raw=on", "8M", kMixedWrites},
      {"data_file_extended_l2", "data_file=read.data,extended_l2=on", "8M", kSubclusterWrites},
      {"compressed_zlib", "compat=1.1", "8M", kMixedWrites, "compression_type=zlib"},
      {"compressed_zstd", "compat=1.1", "8M", kMixedWrites, "compression_type=zstd"},
      {"compressed_v2",
       "compat=0.10",
       "4M",
       {"write -P 0x11 0 64k", "write -P 0x33 2M 1M"},
       "compat=0.10"},
      {"compressed_extended_l2", "compat=1.1", "8M", kMixedWrites,
       "extended_l2=on,compression_type=zstd"},
      {"compressed_cluster_4k", "compat=1.1", "2M", {"write -P 0x11 0 1M"}, "cluster_size=4k"},
  };
}

class Qcow2Read : public ::testing::TestWithParam<ReadCase> {};

std::string in(const test::TempDir& dir, const std::string& cmd) {
  return "cd " + shell_quote(dir.path()) + " && " + cmd;
}

TEST_P(Qcow2Read, EveryByteMatchesQemuConvertAndMapAgrees) {
  const ReadCase& c = GetParam();
  test::TempDir dir;
  std::string img = dir.file("read.qcow2");
  run_ok(in(dir, std::string("qemu-img create -q -f qcow2 -o ") + c.create_options +
                     " read.qcow2 " + c.size));
  std::string io;
  for (const auto& cmd : c.io) io += " -c " + shell_quote(cmd);
  run_ok(in(dir, "qemu-io -f qcow2" + io + " read.qcow2"));
  if (c.convert_options) {
    run_ok(in(dir, std::string("qemu-img convert -c -O qcow2 -o ") + c.convert_options +
                       " read.qcow2 comp.qcow2 && mv comp.qcow2 read.qcow2"));
  }
  auto expected = qemu_raw(img, dir.file("expected.raw"));

  auto im = open_image(posix_env(), img, formats::Access::ReadOnly);
  ASSERT_TRUE(im) << im.error().message;
  EXPECT_EQ(read_all(**im), expected);
  expect_map_agrees(**im, img);
  if (c.convert_options) {
    // convert -c really produced compressed clusters for us to decode.
    auto m = (*im)->map(0, 4096);
    ASSERT_TRUE(m);
    EXPECT_EQ(m->kind, MapKind::Compressed);
  }

  auto qinfo = qemu_json(in(dir, "qemu-img info --output=json read.qcow2"));
  const auto& info = (*im)->info();
  EXPECT_EQ(info.format, "qcow2");
  EXPECT_EQ(info.virtual_size, qinfo["virtual-size"].get<uint64_t>());
  EXPECT_EQ(info.cluster_size, qinfo["cluster-size"].get<uint64_t>());
  EXPECT_EQ(info.dirty, qinfo["dirty-flag"].get<bool>());
  EXPECT_EQ(dmu::formats::format_specific_json(info.format_specific), qinfo["format-specific"]);
}

INSTANTIATE_TEST_SUITE_P(QemuImages, Qcow2Read, ::testing::ValuesIn(cases()),
                         [](const auto& p) { return std::string(p.param.name); });

TEST(Qcow2Read, ExtendedL2GranularityIsTheSubclusterAndMapsStopAtSubclusters) {
  test::TempDir dir;
  std::string img = dir.file("sc.qcow2");
  run_ok(in(dir, "qemu-img create -q -f qcow2 -o extended_l2=on sc.qcow2 1M"));
  run_ok(in(dir, "qemu-io -f qcow2 -c 'write -P 1 2k 2k' -c 'write -z 4k 2k' sc.qcow2"));
  auto im = open_image(posix_env(), img, formats::Access::ReadOnly);
  ASSERT_TRUE(im) << im.error().message;
  EXPECT_EQ((*im)->info().granularity, 2048u);
  auto m0 = (*im)->map(0, 65536);
  ASSERT_TRUE(m0);
  EXPECT_EQ(m0->kind, MapKind::Unallocated);
  EXPECT_EQ(m0->length, 2048u);
  auto m1 = (*im)->map(2048, 65536);
  ASSERT_TRUE(m1);
  EXPECT_EQ(m1->kind, MapKind::Data);
  EXPECT_EQ(m1->length, 2048u);
  EXPECT_TRUE(m1->writable);
  auto m2 = (*im)->map(4096, 65536);
  ASSERT_TRUE(m2);
  EXPECT_EQ(m2->kind, MapKind::Zero);
  EXPECT_EQ(m2->length, 2048u);
}

TEST(Qcow2Read, SequentialDataIsOneMappingNotOnePerCluster) {
  test::TempDir dir;
  std::string img = dir.file("seq.qcow2");
  run_ok(in(dir, "qemu-img create -q -f qcow2 -o cluster_size=4k seq.qcow2 8M"));
  run_ok(in(dir, "qemu-io -f qcow2 -c 'write -P 7 0 1M' seq.qcow2"));
  auto im = open_image(posix_env(), img, formats::Access::ReadOnly);
  ASSERT_TRUE(im) << im.error().message;
  auto m = (*im)->map(0, 8 << 20);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->kind, MapKind::Data);
  EXPECT_EQ(m->length, 1u << 20);
  auto rest = (*im)->map(1 << 20, 7 << 20);
  ASSERT_TRUE(rest);
  EXPECT_EQ(rest->kind, MapKind::Unallocated);
  EXPECT_EQ(rest->length, 7u << 20);
}

TEST(Qcow2Read, BackingFileIsReportedAndUnwrittenRangesAreUnallocated) {
  test::TempDir dir;
  run_ok(in(dir,
            "qemu-img create -q -f qcow2 base.qcow2 4M && "
            "qemu-io -f qcow2 -c 'write -P 0xaa 0 4M' base.qcow2 && "
            "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 && "
            "qemu-io -f qcow2 -c 'write -P 0xbb 64k 64k' -c 'write -z 1M 64k' top.qcow2"));
  auto top = open_image(posix_env(), dir.file("top.qcow2"), formats::Access::ReadOnly);
  ASSERT_TRUE(top) << top.error().message;
  auto base = open_image(posix_env(), dir.file("base.qcow2"), formats::Access::ReadOnly);
  ASSERT_TRUE(base) << base.error().message;
  EXPECT_EQ((*top)->info().backing_file, "base.qcow2");
  EXPECT_EQ((*top)->info().backing_file_format, "qcow2");
  auto m = (*top)->map(0, 4 << 20);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->kind, MapKind::Unallocated);
  EXPECT_EQ(m->length, 65536u);
  Image& b = **base;
  auto got =
      read_all(**top, [&](uint64_t off, std::span<uint8_t> out) { read_guest(b, off, out); });
  EXPECT_EQ(got, qemu_raw(dir.file("top.qcow2"), dir.file("top.raw")));
}

TEST(Qcow2Read, InternalSnapshotsReadTheActiveL1) {
  test::TempDir dir;
  run_ok(in(dir,
            "qemu-img create -q -f qcow2 s.qcow2 4M && "
            "qemu-io -f qcow2 -c 'write -P 1 0 1M' s.qcow2 && "
            "qemu-img snapshot -c first s.qcow2 && "
            "qemu-io -f qcow2 -c 'write -P 2 64k 64k' s.qcow2"));
  auto im = open_image(posix_env(), dir.file("s.qcow2"), formats::Access::ReadOnly);
  ASSERT_TRUE(im) << im.error().message;
  EXPECT_EQ(read_all(**im), qemu_raw(dir.file("s.qcow2"), dir.file("s.raw")));
  // Shared with the snapshot: readable, but not writable in place.
  auto m = (*im)->map(0, 65536);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->kind, MapKind::Data);
  EXPECT_FALSE(m->writable);
  auto own = (*im)->map(65536, 65536);
  ASSERT_TRUE(own);
  EXPECT_TRUE(own->writable);
}

TEST(Qcow2Read, PersistentBitmapsAreListedLikeQemuImgInfoAndOpenReadOnly) {
  test::TempDir dir;
  run_ok(in(dir,
            "qemu-img create -q -f qcow2 bm.qcow2 4M && "
            "qemu-img bitmap --add bm.qcow2 b0 && "
            "qemu-img bitmap --add -g 128k --disable bm.qcow2 b1"));
  auto im = open_image(posix_env(), dir.file("bm.qcow2"), formats::Access::ReadOnly);
  ASSERT_TRUE(im) << im.error().message;
  auto qinfo = qemu_json(in(dir, "qemu-img info --output=json bm.qcow2"));
  EXPECT_EQ(dmu::formats::format_specific_json((*im)->info().format_specific),
            qinfo["format-specific"]);
}

}  // namespace
}  // namespace dmu::qcow2_test
