// qcow (version 1) engine against hostile images: every bad header field and
// table entry is refused with an error naming the file and the field or
// offset, and dmu check reports corrupt tables.
#include <gtest/gtest.h>

#include "common/endian.h"
#include "fileio/file.h"
#include "formats/image.h"
#include "tests/support/test_support.h"
#include "tests/unit/engine_harness.h"

namespace dmu::formats::qcow {
namespace {

using formats::Access;
using formats::Image;
using test::run_ok;

// A qemu-made image with some data, as bytes to patch.
std::vector<uint8_t> sample(const test::TempDir& dir, const std::string& extra = "") {
  std::string img = dir.file("sample.qcow");
  run_ok("qemu-img create -f raw " + dir.file("base.raw") + " 4M");
  run_ok("qemu-img create -f qcow " + extra + " " + img + " 4M");
  run_ok("qemu-io -f qcow -c 'write -P 1 0 8k' -c 'write -P 2 3M 4k' " + img);
  return test::read_file(img);
}

Result<std::unique_ptr<Image>> open_bytes(const test::TempDir& dir, const std::vector<uint8_t>& b) {
  std::string path = dir.file("hostile.qcow");
  test::write_file(path, b);
  return formats::find_driver("qcow")->open(posix_env(), path, Access::ReadOnly);
}

void expect_refused(const test::TempDir& dir, const std::vector<uint8_t>& b,
                    const std::string& what) {
  auto img = open_bytes(dir, b);
  ASSERT_FALSE(img) << "opened an image with " << what;
  EXPECT_NE(img.error().message.find(dir.file("hostile.qcow")), std::string::npos)
      << img.error().message;
  EXPECT_NE(img.error().message.find(what), std::string::npos) << img.error().message;
}

TEST(QcowHostile, HeaderFieldsOutOfRangeAreRefusedByName) {
  test::TempDir dir;
  const auto good = sample(dir);
  ASSERT_TRUE(open_bytes(dir, good));
  auto b = good;
  store_be32(&b[4], 2);
  expect_refused(dir, b, "qcow version 2");
  b = good;
  store_be32(&b[36], 1);
  expect_refused(dir, b, "encrypted");
  b = good;
  store_be32(&b[36], 7);
  expect_refused(dir, b, "crypt_method");
  for (uint8_t bits : {0, 8, 17, 63, 255}) {
    b = good;
    b[32] = bits;
    expect_refused(dir, b, "cluster_bits");
  }
  for (uint8_t bits : {0, 5, 14, 200}) {
    b = good;
    b[33] = bits;
    expect_refused(dir, b, "l2_bits");
  }
  b = good;
  store_be64(&b[24], 100);
  expect_refused(dir, b, "virtual size");
  b = good;
  store_be64(&b[24], ~uint64_t(0));
  expect_refused(dir, b, "virtual size");
  b = good;
  store_be64(&b[24], uint64_t(1) << 50);  // a huge L1 table
  expect_refused(dir, b, "L1 table");
  b = good;
  store_be64(&b[40], good.size() - 8);
  expect_refused(dir, b, "L1 table at");
  b = good;
  store_be64(&b[40], ~uint64_t(0) - 4);
  expect_refused(dir, b, "L1 table at");
  b = good;
  store_be64(&b[8], 48);
  store_be32(&b[16], 5000);
  expect_refused(dir, b, "too long");
  b = good;
  store_be64(&b[8], good.size() - 10);
  store_be32(&b[16], 100);
  expect_refused(dir, b, "backing file name at");
  b = good;
  b.resize(20);
  expect_refused(dir, b, "too short");
}

TEST(QcowHostile, BadTableEntriesFailLookupsWithTheOffset) {
  test::TempDir dir;
  const auto good = sample(dir);
  auto img = open_bytes(dir, good);
  ASSERT_TRUE(img);
  const uint64_t l1 = load_be64(&good[40]);
  const uint64_t l2 = load_be64(&good[l1]);
  ASSERT_NE(l2, 0u);

  auto b = good;  // L1 entry past the end of the file
  store_be64(&b[l1], uint64_t(1) << 40);
  img = open_bytes(dir, b);
  ASSERT_TRUE(img);
  auto m = (*img)->map(0, 4096);
  ASSERT_FALSE(m);
  EXPECT_NE(m.error().message.find("L2 table at 0x10000000000"), std::string::npos)
      << m.error().message;

  b = good;  // misaligned data cluster
  store_be64(&b[l2], load_be64(&b[l2]) + 3);
  img = open_bytes(dir, b);
  ASSERT_TRUE(img);
  m = (*img)->map(0, 4096);
  ASSERT_FALSE(m);
  EXPECT_NE(m.error().message.find("not sector-aligned"), std::string::npos);

  b = good;  // data cluster past the end of the file
  store_be64(&b[l2], uint64_t(1) << 33);
  img = open_bytes(dir, b);
  ASSERT_TRUE(img);
  m = (*img)->map(0, 4096);
  ASSERT_FALSE(m);
  EXPECT_NE(m.error().message.find("past the end"), std::string::npos);

  b = good;  // "compressed" cluster of garbage
  store_be64(&b[l2], (uint64_t(1) << 63) | (uint64_t(100) << (63 - 12)) | 512);
  img = open_bytes(dir, b);
  ASSERT_TRUE(img);
  m = (*img)->map(0, 4096);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->kind, formats::MapKind::Compressed);
  std::vector<uint8_t> out(4096);
  auto r = (*img)->read_compressed(0, out);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("does not decompress"), std::string::npos);
}

TEST(QcowCheck, CleanOnQemuMadeImages) {
  test::TempDir dir;
  for (const std::string extra : {"", "-b base.raw -F raw"}) {
    auto img = open_bytes(dir, sample(dir, extra));
    ASSERT_TRUE(img);
    auto r = (*img)->check(formats::Repair::None);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->corruptions, 0u) << extra;
    EXPECT_EQ(r->leaks, 0u) << extra << (r->messages.empty() ? "" : r->messages.back());
    EXPECT_GT(r->allocated_clusters, 0u);
    EXPECT_EQ(r->total_clusters * (*img)->info().cluster_size, 4u << 20);
  }
}

TEST(QcowCheck, ReportsTablesAndClustersOutsideTheFileOrUsedTwice) {
  test::TempDir dir;
  const auto good = sample(dir);
  const uint64_t l1 = load_be64(&good[40]);
  const uint64_t l2 = load_be64(&good[l1]);
  struct Case {
    const char* what;
    uint64_t at, value;
  };
  for (const Case& c :
       {Case{"L2 table at", l1, uint64_t(1) << 40}, Case{"past the end", l2, uint64_t(1) << 33},
        Case{"used more than once", l2 + 8, load_be64(&good[l2])},
        Case{"used more than once", l2, l2},  // data cluster on its own L2 table
        Case{"overlaps", l1 + 8, l2}}) {      // two L1 entries, one table
    auto b = good;
    store_be64(&b[c.at], c.value);
    auto img = open_bytes(dir, b);
    ASSERT_TRUE(img);
    auto r = (*img)->check(formats::Repair::None);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_GE(r->corruptions, 1u) << c.what;
    bool named = false;
    for (const auto& msg : r->messages) named |= msg.find(c.what) != std::string::npos;
    EXPECT_TRUE(named) << c.what;
  }
}

}  // namespace
}  // namespace dmu::formats::qcow
