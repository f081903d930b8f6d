// qcow (version 1) engine, write side: writes through the protocol of
// formats/image.h must read back identically in QEMU, keep the image
// consistent by dmu check, and follow the engine's rules for zeros, failed
// writes, busy clusters and read-only images.
#include <gtest/gtest.h>

#include <random>

#include "fileio/file.h"
#include "formats/image.h"
#include "tests/support/test_support.h"
#include "tests/unit/engine_harness.h"

namespace dmu::formats::qcow {
namespace {

using formats::Access;
using formats::Image;
using formats::MapKind;
using test::run_ok;
using test::shell_quote;

std::unique_ptr<Image> open_qcow(const std::string& path, Access access = Access::ReadWrite) {
  auto img = formats::find_driver("qcow")->open(posix_env(), path, access);
  EXPECT_TRUE(img) << img.error().message;
  return img ? std::move(*img) : nullptr;
}

void create_qcow(const std::string& path, uint64_t size, const std::string& backing = "") {
  formats::CreateOptions o;
  o.virtual_size = size;
  if (!backing.empty()) o.backing_file = backing;
  auto r = formats::find_driver("qcow")->create(posix_env(), path, o);
  ASSERT_TRUE(r) << r.error().message;
}

std::vector<uint8_t> pattern(size_t n, uint8_t v) {
  return std::vector<uint8_t>(n, v);
}

TEST(QcowWrite, RandomWritesReadBackIdenticallyInQemu) {
  test::TempDir dir;
  std::string img = dir.file("w.qcow");
  const uint64_t size = 6 << 20;
  create_qcow(img, size);
  std::vector<uint8_t> expect(size, 0);
  {
    auto image = open_qcow(img);
    ASSERT_TRUE(image);
    std::mt19937 rng(1);
    for (int i = 0; i < 60; ++i) {
      uint64_t off = rng() % size, len = 1 + rng() % 20000;
      len = std::min(len, size - off);
      auto data = test::random_bytes(len, i);
      ASSERT_TRUE(test::write_chain({image.get()}, off, data));
      std::copy(data.begin(), data.end(), expect.begin() + off);
      if (i % 7 == 0) {
        ASSERT_TRUE(image->commit());
      }
    }
    ASSERT_TRUE(image->commit());
    auto ours = test::read_all({image.get()});
    ASSERT_TRUE(ours);
    EXPECT_EQ(*ours, expect);
    auto check = image->check(formats::Repair::None);
    ASSERT_TRUE(check) << check.error().message;
    EXPECT_EQ(check->corruptions, 0u);
    EXPECT_EQ(check->leaks, 0u);
  }
  EXPECT_EQ(test::qemu_export(img, "qcow", dir), expect);
  test::write_file(dir.file("expect.raw"), expect);
  run_ok("qemu-img compare -f qcow -F raw " + img + " " + dir.file("expect.raw"));
}

TEST(QcowWrite, PartialClusterOverBackingKeepsBackingBytes) {
  test::TempDir dir;
  std::string base = dir.file("base.qcow"), top = dir.file("top.qcow");
  run_ok("qemu-img create -f qcow " + base + " 2M");
  run_ok("qemu-io -f qcow -c 'write -P 0x5b 0 2M' " + base);
  create_qcow(top, 2 << 20, "base.qcow");
  auto b = open_qcow(base, Access::ReadOnly);
  auto t = open_qcow(top);
  ASSERT_TRUE(b && t);
  ASSERT_TRUE(test::write_chain({t.get(), b.get()}, 700, pattern(1000, 0x11)));
  ASSERT_TRUE(test::write_chain({t.get(), b.get()}, 100000, pattern(5000, 0x22)));
  ASSERT_TRUE(t->commit());
  auto expect = pattern(2 << 20, 0x5b);
  std::fill(expect.begin() + 700, expect.begin() + 1700, 0x11);
  std::fill(expect.begin() + 100000, expect.begin() + 105000, 0x22);
  EXPECT_EQ(test::qemu_export(top, "qcow", dir), expect);
  auto m = t->map(512, 512);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->kind, MapKind::Data);
  EXPECT_TRUE(m->writable);
}

TEST(QcowWrite, OverCompressedClusterRewritesItWhole) {
  test::TempDir dir;
  std::string img = dir.file("c.qcow");
  run_ok("qemu-img create -f qcow " + img + " 1M");
  run_ok("qemu-io -f qcow -c 'write -c -P 0x33 64k 4k' " + img);
  auto image = open_qcow(img);
  ASSERT_TRUE(image);
  auto before = image->map(64 * 1024, 4096);
  ASSERT_TRUE(before);
  ASSERT_EQ(before->kind, MapKind::Compressed);
  ASSERT_TRUE(test::write_chain({image.get()}, 64 * 1024 + 1024, pattern(512, 0x44)));
  ASSERT_TRUE(image->commit());
  auto after = image->map(64 * 1024, 4096);
  ASSERT_TRUE(after);
  EXPECT_EQ(after->kind, MapKind::Data);
  auto expect = pattern(1 << 20, 0);
  std::fill(expect.begin() + 65536, expect.begin() + 65536 + 4096, 0x33);
  std::fill(expect.begin() + 65536 + 1024, expect.begin() + 65536 + 1536, 0x44);
  EXPECT_EQ(test::qemu_export(img, "qcow", dir), expect);
}

TEST(QcowWrite, WritesAreVisibleBeforeCommitButNotDurableWithoutIt) {
  test::TempDir dir;
  std::string img = dir.file("p.qcow");
  create_qcow(img, 1 << 20);
  {
    auto image = open_qcow(img);
    ASSERT_TRUE(image);
    ASSERT_TRUE(test::write_chain({image.get()}, 8192, pattern(4096, 9)));
    auto m = image->map(8192, 4096);
    ASSERT_TRUE(m);
    EXPECT_EQ(m->kind, MapKind::Data);
    // Dropped without commit: nothing points at the cluster on disk.
  }
  auto image = open_qcow(img, Access::ReadOnly);
  ASSERT_TRUE(image);
  auto m = image->map(8192, 4096);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->kind, MapKind::Unallocated);
}

TEST(QcowWrite, FailedWriteLeavesOldContentsAndLeaksOnlySpace) {
  test::TempDir dir;
  std::string img = dir.file("f.qcow");
  create_qcow(img, 1 << 20);
  auto image = open_qcow(img);
  ASSERT_TRUE(image);
  auto t = image->prepare_write(0, 4096);
  ASSERT_TRUE(t);
  ASSERT_TRUE(t->fresh);
  ASSERT_TRUE(image->data_files()[0]->write(t->host_offset, pattern(4096, 0xee)));
  ASSERT_TRUE(image->write_done(t->token, false));
  ASSERT_TRUE(image->commit());
  auto m = image->map(0, 4096);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->kind, MapKind::Unallocated);
  auto check = image->check(formats::Repair::None);
  ASSERT_TRUE(check);
  EXPECT_EQ(check->corruptions, 0u);
  EXPECT_EQ(check->leaks, 1u);
  auto fixed = image->check(formats::Repair::Leaks);
  ASSERT_TRUE(fixed);
  EXPECT_EQ(fixed->leaks_fixed, 1u);
  EXPECT_EQ(fixed->leaks, 0u);
  EXPECT_EQ(test::qemu_export(img, "qcow", dir), pattern(1 << 20, 0));
}

TEST(QcowWrite, OverlappingPreparationsAreRefusedAsBusy) {
  test::TempDir dir;
  std::string img = dir.file("b.qcow");
  create_qcow(img, 1 << 20);
  auto image = open_qcow(img);
  ASSERT_TRUE(image);
  auto t = image->prepare_write(0, 8192);
  ASSERT_TRUE(t);
  auto again = image->prepare_write(4096, 512);
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code, EBUSY);
  ASSERT_TRUE(image->write_done(t->token, false));
  EXPECT_TRUE(image->prepare_write(4096, 512));
  EXPECT_FALSE(image->write_done(999999, true));
}

TEST(QcowWrite, ReadOnlyImageRefusesWrites) {
  test::TempDir dir;
  std::string img = dir.file("r.qcow");
  create_qcow(img, 1 << 20);
  auto image = open_qcow(img, Access::ReadOnly);
  ASSERT_TRUE(image);
  auto t = image->prepare_write(0, 512);
  ASSERT_FALSE(t);
  EXPECT_EQ(t.error().code, EROFS);
  EXPECT_NE(t.error().message.find(img), std::string::npos);
}

TEST(QcowWriteZeroes, WithoutBackingDeallocatesWholeClusters) {
  test::TempDir dir;
  std::string img = dir.file("z.qcow");
  create_qcow(img, 1 << 20);
  auto image = open_qcow(img);
  ASSERT_TRUE(image);
  ASSERT_TRUE(test::write_chain({image.get()}, 0, pattern(64 * 1024, 0x77)));
  ASSERT_TRUE(image->commit());
  ASSERT_TRUE(test::zero_chain({image.get()}, 1000, 30000, true));
  ASSERT_TRUE(image->commit());
  auto m = image->map(4096, 4096);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->kind, MapKind::Unallocated);
  auto expect = pattern(1 << 20, 0);
  std::fill(expect.begin(), expect.begin() + 64 * 1024, 0x77);
  std::fill(expect.begin() + 1000, expect.begin() + 31000, 0);
  EXPECT_EQ(test::qemu_export(img, "qcow", dir), expect);
  // A partly covered allocated cluster cannot be expressed.
  auto partial = image->write_zeroes(40000, 1000, false);
  ASSERT_FALSE(partial);
  EXPECT_EQ(partial.error().code, ENOTSUP);
  // Nothing changed by the refused call.
  auto ours = test::read_all({image.get()});
  ASSERT_TRUE(ours);
  EXPECT_EQ(*ours, expect);
}

TEST(QcowWriteZeroes, OverBackingFileIsNotSupported) {
  test::TempDir dir;
  std::string base = dir.file("base.qcow"), top = dir.file("top.qcow");
  create_qcow(base, 1 << 20);
  create_qcow(top, 1 << 20, "base.qcow");
  auto image = open_qcow(top);
  ASSERT_TRUE(image);
  auto r = image->write_zeroes(0, 4096, true);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ENOTSUP);
}

TEST(QcowDiscard, IsANoOpAsInQemu) {
  test::TempDir dir;
  std::string img = dir.file("d.qcow");
  create_qcow(img, 1 << 20);
  auto image = open_qcow(img);
  ASSERT_TRUE(image);
  ASSERT_TRUE(test::write_chain({image.get()}, 0, pattern(8192, 5)));
  ASSERT_TRUE(image->commit());
  ASSERT_TRUE(image->discard(0, 8192));
  ASSERT_TRUE(image->commit());
  auto m = image->map(0, 8192);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->kind, MapKind::Data);
}

TEST(QcowWrite, NewL2TablesForFarApartWrites) {
  test::TempDir dir;
  std::string img = dir.file("l2.qcow");
  const uint64_t size = uint64_t(64) << 20;  // 32 L2 tables of 2 MiB each
  create_qcow(img, size);
  auto image = open_qcow(img);
  ASSERT_TRUE(image);
  std::vector<uint64_t> offsets = {0, 5 << 20, 33 << 20, size - 4096};
  for (uint64_t off : offsets) {
    ASSERT_TRUE(test::write_chain({image.get()}, off, pattern(4096, 0x61)));
  }
  ASSERT_TRUE(image->commit());
  image.reset();
  auto q = test::qemu_map(img, "qcow");
  uint64_t data = 0;
  for (const auto& e : q)
    if (e.data) data += e.length;
  EXPECT_EQ(data, offsets.size() * 4096);
  image = open_qcow(img, Access::ReadOnly);
  ASSERT_TRUE(image);
  test::expect_map_agrees(*image, "qcow");
  auto check = image->check(formats::Repair::None);
  ASSERT_TRUE(check);
  EXPECT_EQ(check->corruptions + check->leaks, 0u);
  EXPECT_EQ(check->allocated_clusters, offsets.size());
}

}  // namespace
}  // namespace dmu::formats::qcow
