// Hostile and unusual qcow2 headers: every out-of-range field, unknown
// incompatible feature and encryption is refused with an error that names
// the file and the field or feature; unknown compatible bits are ignored;
// tables that would need absurd memory are refused before they are loaded.
#include <gtest/gtest.h>

#include "common/endian.h"
#include "fileio/mem_env.h"
#include "formats/qcow2/header.h"
#include "formats/qcow2/refcounts.h"
#include "tests/unit/qcow2_test_helpers.h"

namespace dmu::qcow2_test {
namespace {

using formats::Access;
constexpr const char* kPath = "hostile.qcow2";

// A small valid image from qemu-img (4 MiB, 64 KiB clusters, some data).
const std::vector<uint8_t>& base_image() {
  static const std::vector<uint8_t> bytes = [] {
    test::TempDir dir;
    test::run_ok("cd " + test::shell_quote(dir.path()) +
                 " && qemu-img create -q -f qcow2 b.qcow2 4M && "
                 "qemu-io -f qcow2 -c 'write -P 1 0 128k' b.qcow2");
    return test::read_file(dir.file("b.qcow2"));
  }();
  return bytes;
}

struct Patched {
  MemEnv env;
  explicit Patched(const std::function<void(std::vector<uint8_t>&)>& patch) {
    auto b = base_image();
    patch(b);
    env.set_contents(kPath, b);
  }
  Result<std::unique_ptr<formats::Image>> open(Access a = Access::ReadOnly) {
    return open_image(env, kPath, a);
  }
};

void expect_refused(const std::function<void(std::vector<uint8_t>&)>& patch, const char* mentions,
                    Access access = Access::ReadOnly) {
  Patched p(patch);
  auto im = p.open(access);
  ASSERT_FALSE(im) << "expected a refusal mentioning '" << mentions << "'";
  EXPECT_NE(im.error().message.find(kPath), std::string::npos) << im.error().message;
  EXPECT_NE(im.error().message.find(mentions), std::string::npos) << im.error().message;
}

TEST(Qcow2Header, ProbeRecognisesTheMagicWithVersionTwoAndUpLikeQemu) {
  const auto& b = base_image();
  EXPECT_EQ(formats::qcow2::probe(b, kPath), 100);
  auto v1 = b;
  store_be32(v1.data() + 4, 1);
  EXPECT_EQ(formats::qcow2::probe(v1, kPath), 0);  // qcow (version 1)
  for (uint32_t version : {4u, 5u, 0xffffffffu}) {
    auto future = b;
    store_be32(future.data() + 4, version);
    EXPECT_EQ(formats::qcow2::probe(future, kPath), 100) << version;  // then refused by open
  }
  EXPECT_EQ(formats::qcow2::probe(std::span<const uint8_t>(b.data(), 4), kPath), 0);
  auto raw = std::vector<uint8_t>(512, 0);
  EXPECT_EQ(formats::qcow2::probe(raw, kPath), 0);
}

TEST(Qcow2Header, OutOfRangeFieldsAreRefusedNamingTheField) {
  expect_refused([](auto& b) { b[0] = 'X'; }, "magic");
  expect_refused([](auto& b) { store_be32(b.data() + 4, 4); }, "version 4");
  expect_refused([](auto& b) { store_be32(b.data() + 20, 8); }, "cluster_bits 8");
  expect_refused([](auto& b) { store_be32(b.data() + 20, 22); }, "cluster_bits 22");
  expect_refused([](auto& b) { store_be32(b.data() + 100, 96); }, "header_length");
  expect_refused([](auto& b) { store_be32(b.data() + 100, 1 << 20); }, "header_length");
  expect_refused([](auto& b) { store_be32(b.data() + 96, 7); }, "refcount_order 7");
  expect_refused([](auto& b) { store_be64(b.data() + 8, 70000); }, "backing_file_offset");
  expect_refused(
      [](auto& b) {
        store_be64(b.data() + 8, 1024);
        store_be32(b.data() + 16, 2000);
      },
      "backing file name length");
  expect_refused([](auto& b) { store_be64(b.data() + 24, uint64_t(1) << 40); }, "l1_size");
  expect_refused([](auto& b) { store_be32(b.data() + 36, 0x10000000); }, "l1_size");
  expect_refused([](auto& b) { store_be64(b.data() + 40, 0x30008); }, "L1 table offset");
  expect_refused([](auto& b) { store_be64(b.data() + 40, ~uint64_t(0) - 0xffff); }, "L1 table");
  expect_refused([](auto& b) { store_be32(b.data() + 56, 0); }, "refcount table");
  expect_refused([](auto& b) { store_be32(b.data() + 56, 1000); }, "8 MiB");
  expect_refused([](auto& b) { store_be64(b.data() + 48, 0x10100); }, "refcount table offset");
  expect_refused([](auto& b) { store_be32(b.data() + 60, 70000); }, "nb_snapshots");
  expect_refused(
      [](auto& b) {
        store_be32(b.data() + 60, 1);
        store_be64(b.data() + 64, 0x10001);
      },
      "snapshot table offset");
  expect_refused([](auto& b) { store_be64(b.data() + 24, (uint64_t(1) << 62)); }, "32 MiB");
}

TEST(Qcow2Header, UnknownIncompatibleFeaturesAreRefusedByName) {
  // Bit 10 is unknown and the image's feature table does not name it.
  expect_refused([](auto& b) { store_be64(b.data() + 72, uint64_t(1) << 10); }, "bit 10");
  // Named by the feature name table (type 0, bit 9), as QEMU reports it.
  expect_refused(
      [](auto& b) {
        store_be64(b.data() + 72, uint64_t(1) << 9);
        uint64_t ext = 112;
        ASSERT_EQ(load_be32(b.data() + ext), 0x6803f857u);
        uint8_t* entry = b.data() + ext + 8;  // first entry: incompatible bit 0 "dirty bit"
        entry[1] = 9;
        std::memcpy(entry + 2, "time travel\0", 12);
      },
      "'time travel'");
}

TEST(Qcow2Header, EncryptionIsRefusedNamingTheMethod) {
  expect_refused([](auto& b) { store_be32(b.data() + 32, 1); }, "AES");
  expect_refused([](auto& b) { store_be32(b.data() + 32, 2); }, "LUKS");
}

TEST(Qcow2Header, CompressionTypeMustMatchItsFeatureBit) {
  expect_refused([](auto& b) { store_be64(b.data() + 72, 8); }, "compression type bit");
  expect_refused(
      [](auto& b) {
        store_be64(b.data() + 72, 8);
        b[104] = 2;
      },
      "compression_type 2");
  expect_refused([](auto& b) { b[104] = 1; }, "compression_type 1");
}

TEST(Qcow2Header, InconsistentFeatureCombinationsAreRefused) {
  // 4 KiB clusters make the existing one-entry L1 table too small.
  expect_refused([](auto& b) { store_be32(b.data() + 20, 12); }, "l1_size");
  expect_refused([](auto& b) { store_be64(b.data() + 72, 4); }, "external data file");
  expect_refused([](auto& b) { store_be64(b.data() + 88, 2); }, "data-file-raw");
}

TEST(Qcow2Header, ExtendedL2NeedsSixteenKiBClusters) {
  // A 4 KiB-cluster image with the extended L2 bit set.
  test::TempDir dir;
  test::run_ok("cd " + test::shell_quote(dir.path()) +
               " && qemu-img create -q -f qcow2 -o cluster_size=4k s.qcow2 1M");
  auto b = test::read_file(dir.file("s.qcow2"));
  store_be64(b.data() + 72, 16);
  MemEnv env;
  env.set_contents(kPath, b);
  auto im = open_image(env, kPath, Access::ReadOnly);
  ASSERT_FALSE(im);
  EXPECT_NE(im.error().message.find("16 KiB"), std::string::npos) << im.error().message;
}

TEST(Qcow2Header, HeaderExtensionsMustStayInsideTheFirstCluster) {
  expect_refused([](auto& b) { store_be32(b.data() + 112 + 4, 0x10000); }, "header extension");
  expect_refused(
      [](auto& b) {
        // A second feature table right after the first.
        uint64_t next = 112 + 8 + ((load_be32(b.data() + 116) + 7) & ~7u);
        store_be32(b.data() + next, 0x6803f857);
        store_be32(b.data() + next + 4, 48);
      },
      "duplicate");
  expect_refused(
      [](auto& b) {
        store_be32(b.data() + 112, 0x23852875);  // bitmaps extension with a bad length
        store_be32(b.data() + 116, 16);
      },
      "bitmaps extension");
}

TEST(Qcow2Header, UnknownCompatibleBitsAreIgnoredAndKept) {
  Patched p([](auto& b) { store_be64(b.data() + 80, uint64_t(1) << 33); });
  {
    auto im = p.open(Access::ReadWrite);
    ASSERT_TRUE(im) << im.error().message;
    write_guest(**im, 0, pattern(4096, 3));
  }
  auto after = p.env.contents(kPath);
  EXPECT_EQ(load_be64(after.data() + 80), uint64_t(1) << 33);
  auto im = p.open();
  ASSERT_TRUE(im);
  auto r = (*im)->check(formats::Repair::None);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->corruptions + r->leaks, 0u);
}

TEST(Qcow2Header, CorruptTablesFailReadsWithErrorsNotCrashes) {
  // L1 entry 0 points at an unaligned L2 table.
  Patched p([](auto& b) { store_be64(b.data() + 0x30000, (uint64_t(1) << 63) | 0x40200); });
  auto im = p.open();
  ASSERT_TRUE(im) << im.error().message;
  auto m = (*im)->map(0, 4096);
  ASSERT_FALSE(m);
  EXPECT_EQ(m.error().code, EIO);
  EXPECT_NE(m.error().message.find(kPath), std::string::npos);
  EXPECT_NE(m.error().message.find("L1 entry 0"), std::string::npos);
}

TEST(Qcow2Header, RefcountBlockOverHeaderIsNeverWritten) {
  // The refcount table's only block "lives" in the header cluster.
  auto b = base_image();
  store_be64(b.data() + 0x10000, 0x30000);  // block = the L1 table's cluster
  MemEnv env;
  env.set_contents(kPath, b);
  auto im = open_image(env, kPath, Access::ReadWrite);
  ASSERT_TRUE(im) << im.error().message;
  auto r = try_write_guest(**im, 1 << 20, pattern(65536, 5));
  if (r) r = (*im)->commit();
  EXPECT_FALSE(r);
  im->reset();
  auto after = env.contents(kPath);
  EXPECT_TRUE(std::equal(b.begin(), b.begin() + 0x40000, after.begin()))
      << "header, refcount table, block and L1 must be untouched";
}

TEST(Qcow2Header, TablesPastTheEndOfTheFileAreReadAsZerosButNeverWritten) {
  for (unsigned field : {40u, 48u}) {  // L1 table, refcount table
    auto b = base_image();
    store_be64(b.data() + field, 0x7fff0000);
    MemEnv env;
    env.set_contents(kPath, b);
    auto im = open_image(env, kPath, Access::ReadWrite);
    ASSERT_TRUE(im) << im.error().message;
    if (field == 40) {  // QEMU reads such an image: zeros
      auto m = (*im)->map(0, 4096);
      ASSERT_TRUE(m) << m.error().message;
      EXPECT_EQ(m->kind, MapKind::Unallocated);
    }
    auto t = (*im)->prepare_write(0, 4096);
    ASSERT_FALSE(t);
    EXPECT_NE(t.error().message.find("end of the image file"), std::string::npos)
        << t.error().message;
    EXPECT_FALSE((*im)->write_zeroes(0, 65536, true));
    EXPECT_FALSE((*im)->discard(0, 65536));
    im->reset();
    EXPECT_EQ(env.contents(kPath), b) << "field " << field;
  }
}

TEST(Qcow2Header, RefcountEntriesOfEveryWidthRoundTrip) {
  for (unsigned order = 0; order <= 6; ++order) {
    std::vector<uint8_t> block(4096, 0);
    const uint64_t bits = uint64_t(1) << order;
    const uint64_t max = bits == 64 ? ~uint64_t(0) : (uint64_t(1) << bits) - 1;
    const uint64_t entries = 4096 * 8 / bits;
    for (uint64_t i = 0; i < entries; ++i)
      formats::qcow2::set_refcount_entry(block.data(), order, i, (i * 7 + 3) & max);
    for (uint64_t i = 0; i < entries; ++i)
      ASSERT_EQ(formats::qcow2::get_refcount_entry(block.data(), order, i), (i * 7 + 3) & max)
          << "order " << order << " index " << i;
    // Bit 0 is the least significant bit of the first byte (spec).
    std::fill(block.begin(), block.end(), 0);
    formats::qcow2::set_refcount_entry(block.data(), order, 0, 1);
    if (order <= 3)
      EXPECT_EQ(block[0], 1);
    else
      EXPECT_EQ(block[bits / 8 - 1], 1);  // big-endian
  }
}

}  // namespace
}  // namespace dmu::qcow2_test
