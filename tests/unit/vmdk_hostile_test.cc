// vmdk engine against hostile images: bad sparse header fields, descriptors
// naming unsupported, missing, escaping or self-referencing extents, bad
// directory and grain table entries, bad compressed grains; every refusal
// names the file and the field, line or offset.  check reports what
// qemu-img check reports, with its exit-code classes.
#include <gtest/gtest.h>

#include "common/endian.h"
#include "fileio/file.h"
#include "formats/image.h"
#include "tests/support/test_support.h"
#include "tests/unit/engine_harness.h"

namespace dmu::formats::vmdk {
namespace {

using formats::Access;
using formats::Image;
using test::run_ok;

std::vector<uint8_t> sample(const test::TempDir& dir, const std::string& opts = "") {
  std::string img = dir.file("sample.vmdk");
  run_ok("qemu-img create -f vmdk " + opts + " " + img + " 4M");
  run_ok("qemu-io -f vmdk -c 'write -P 1 0 128k' -c 'write -P 2 3M 64k' " + img);
  return test::read_file(img);
}

Result<std::unique_ptr<Image>> open_bytes(const test::TempDir& dir, const std::vector<uint8_t>& b,
                                          const std::string& name = "hostile.vmdk") {
  test::write_file(dir.file(name), b);
  return formats::find_driver("vmdk")->open(posix_env(), dir.file(name), Access::ReadOnly);
}

void expect_refused(Result<std::unique_ptr<Image>> img, const std::string& file,
                    const std::string& what) {
  ASSERT_FALSE(img) << "opened an image with " << what;
  EXPECT_NE(img.error().message.find(file), std::string::npos) << img.error().message;
  EXPECT_NE(img.error().message.find(what), std::string::npos) << img.error().message;
}

TEST(VmdkHostile, SparseHeaderFieldsOutOfRangeAreRefusedByName) {
  test::TempDir dir;
  const auto good = sample(dir);
  const std::string path = dir.file("hostile.vmdk");
  ASSERT_TRUE(open_bytes(dir, good));
  struct Case {
    size_t at;
    int width;
    uint64_t value;
    const char* what;
  };
  for (const Case& c :
       {Case{4, 4, 4, "sparse version 4"}, Case{4, 4, 0, "sparse version 0"},
        Case{77, 2, 2, "compressAlgorithm"}, Case{12, 8, 0, "capacity 0"},
        Case{12, 8, uint64_t(1) << 40, "exceeds 2 TiB"}, Case{20, 8, 0, "grainSize of 0"},
        Case{20, 8, 3, "grainSize of 3"}, Case{20, 8, uint64_t(1) << 20, "grainSize"},
        Case{44, 4, 0, "numGTEsPerGT 0"}, Case{44, 4, 513, "numGTEsPerGT 513"},
        Case{56, 8, 1 << 20, "grain directory at sector"},
        Case{56, 8, ~uint64_t(0) >> 8, "grain directory at sector"},
        Case{48, 8, 1 << 20, "redundant grain directory"}, Case{64, 8, 1 << 20, "file truncated"},
        Case{28, 8, 1 << 20, "descriptor at sector"}, Case{56, 8, ~uint64_t(0), "footer"},
        Case{0, 4, 0x44574f43, "COWD"}, Case{0, 4, 0x11111111, "bad magic"}}) {
    auto b = good;
    if (c.width == 2) store_le16(&b[c.at], uint16_t(c.value));
    if (c.width == 4) store_le32(&b[c.at], uint32_t(c.value));
    if (c.width == 8) store_le64(&b[c.at], c.value);
    // A file that does not start with a sparse magic is read as a descriptor.
    std::string what = c.value == 0x11111111 ? "descriptor" : c.what;
    expect_refused(open_bytes(dir, b), path, what);
  }
  auto b = good;  // an embedded descriptor without a CID
  std::string desc(b.begin() + 512, b.begin() + 1024);
  b[512 + desc.find("CID=")] = 'X';
  expect_refused(open_bytes(dir, b), path, "has no CID");
  b = good;
  b.resize(300);
  expect_refused(open_bytes(dir, b), path, "too short");
}

struct DescriptorCase {
  std::string extents;
  std::string what;
};

TEST(VmdkHostile, DescriptorFilesNamingBadExtentsAreRefused) {
  test::TempDir dir;
  run_ok("qemu-img create -f vmdk " + dir.file("s.vmdk") + " 1M");
  run_ok("qemu-img create -f raw " + dir.file("f.raw") + " 1M");
  const std::string path = dir.file("d.vmdk");
  for (const DescriptorCase& c :
       {DescriptorCase{"RW 2048 FOO \"f.raw\"", "descriptor line 6: unknown extent type 'FOO'"},
        DescriptorCase{"RDONLY 2048 FLAT \"f.raw\" 0", "line 6: access 'RDONLY' is not supported"},
        DescriptorCase{"RW 2048 ZERO", "extent type 'ZERO' is not supported"},
        DescriptorCase{"RW 2048 VMFSSPARSE \"s.vmdk\"",
                       "extent type 'VMFSSPARSE' is not supported"},
        DescriptorCase{"RW 2048 FLAT \"/etc/passwd\" 0", "must be a relative path"},
        DescriptorCase{"RW 2048 FLAT \"../f.raw\" 0", "must be a relative path"},
        DescriptorCase{"RW 2048 FLAT \"a/../../f.raw\" 0", "must be a relative path"},
        DescriptorCase{"RW 2048 FLAT \"missing.raw\" 0", "missing.raw"},
        DescriptorCase{"RW 4096 FLAT \"f.raw\" 0", "is shorter than"},
        DescriptorCase{"RW 2048 FLAT \"f.raw\" 1", "is shorter than"},
        DescriptorCase{"RW 1024 SPARSE \"s.vmdk\"", "has a capacity of 2048 sectors"},
        DescriptorCase{"RW 2048 FLAT \"d.vmdk\" 0", "is the descriptor"},
        DescriptorCase{"RW 2048 SPARSE \"s.vmdk\"\nRW 2048 SPARSE \"s.vmdk\"", "named twice"},
        DescriptorCase{"RW 2048 SPARSE \"f.raw\"", "bad magic"},
        DescriptorCase{"", "names no extents"}}) {
    std::string text =
        "# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\n"
        "createType=\"monolithicFlat\"\n" +
        c.extents + "\n";
    expect_refused(open_bytes(dir, std::vector<uint8_t>(text.begin(), text.end()), "d.vmdk"), path,
                   c.what);
  }
  std::string text = "version=1\nCID=1\nparentCID=ffffffff\ncreateType=\"vmfsSparse\"\n";
  expect_refused(open_bytes(dir, std::vector<uint8_t>(text.begin(), text.end()), "d.vmdk"), path,
                 "createType 'vmfsSparse' is not supported");
  text = "version=1\nCID=1\nparentCID=ffffffff\nRW 2048 FLAT \"f.raw\" 0\n";
  expect_refused(open_bytes(dir, std::vector<uint8_t>(text.begin(), text.end()), "d.vmdk"), path,
                 "no createType");
  expect_refused(open_bytes(dir, std::vector<uint8_t>(2 << 20, 'x'), "d.vmdk"), path,
                 "too large for a descriptor");
}

TEST(VmdkHostile, BadTableEntriesFailLookupsWithTheOffset) {
  test::TempDir dir;
  const auto good = sample(dir);
  const uint64_t gd = load_le64(&good[56]) * 512;
  const uint64_t gt = uint64_t(load_le32(&good[gd])) * 512;
  auto b = good;
  store_le32(&b[gd], 0x7fffff);
  auto img = open_bytes(dir, b);
  ASSERT_TRUE(img);
  auto m = (*img)->map(0, 65536);
  ASSERT_FALSE(m);
  EXPECT_NE(m.error().message.find("grain table at sector 8388607"), std::string::npos)
      << m.error().message;
  b = good;
  store_le32(&b[gt], 0x100000);
  img = open_bytes(dir, b);
  ASSERT_TRUE(img);
  m = (*img)->map(0, 65536);
  ASSERT_FALSE(m);
  EXPECT_NE(m.error().message.find("points past the end of the file"), std::string::npos);
}

TEST(VmdkHostile, BadCompressedGrainsFailReadsNotTheProcess) {
  test::TempDir dir;
  std::string src = dir.file("src.raw"), img = dir.file("s.vmdk");
  test::write_file(src, test::random_bytes(256 * 1024, 1));
  run_ok("qemu-img convert -f raw -O vmdk -o subformat=streamOptimized " + src + " " + img);
  const auto good = test::read_file(img);
  const uint64_t gd = load_le64(&good[56]) * 512;
  const uint64_t gt = uint64_t(load_le32(&good[gd])) * 512;
  const uint64_t grain = uint64_t(load_le32(&good[gt])) * 512;
  struct Case {
    uint64_t at;
    uint32_t value;
    const char* what;
  };
  for (const Case& c : {Case{grain + 8, 0, "claims 0"}, Case{grain + 8, 0x7fffffff, "claims"},
                        Case{grain + 20, 0x12345678, "does not decompress"},
                        Case{gt, 0xfffffff, "points past the end"}}) {
    auto b = good;
    store_le32(&b[c.at], c.value);
    auto image = open_bytes(dir, b);
    ASSERT_TRUE(image) << image.error().message;
    std::vector<uint8_t> out(65536);
    auto r = (*image)->map(0, 65536).and_then(
        [&](formats::Mapping) { return (*image)->read_compressed(0, out); });
    ASSERT_FALSE(r) << c.what;
    EXPECT_NE(r.error().message.find(c.what), std::string::npos) << r.error().message;
  }
}

TEST(VmdkCheck, CleanOnQemuImagesAndMatchesQemuExitClasses) {
  test::TempDir dir;
  for (const std::string opts : {"", "-o zeroed_grain=on", "-o subformat=twoGbMaxExtentSparse"}) {
    std::string img = dir.file("c.vmdk");
    run_ok("qemu-img create -f vmdk " + opts + " " + img + " 4M");
    run_ok("qemu-io -f vmdk -c 'write -P 1 0 128k' -c 'write -z 1M 64k' " + img);
    auto image = formats::find_driver("vmdk")->open(posix_env(), img, Access::ReadOnly);
    ASSERT_TRUE(image);
    auto r = (*image)->check(formats::Repair::None);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->corruptions + r->leaks + r->check_errors, 0u) << opts;
  }
  const auto good = sample(dir);
  const uint64_t gd = load_le64(&good[56]) * 512;
  const uint64_t gt = uint64_t(load_le32(&good[gd])) * 512;
  // A grain past the end: qemu-img check fails (exit 1) with one corruption.
  auto b = good;
  store_le32(&b[gt], 0x100000);
  test::write_file(dir.file("eof.vmdk"), b);
  EXPECT_EQ(test::run("qemu-img check " + dir.file("eof.vmdk")).exit_code, 1);
  auto img = open_bytes(dir, b);
  ASSERT_TRUE(img);
  auto r = (*img)->check(formats::Repair::None);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->corruptions, 1u);
  EXPECT_EQ(r->check_errors, 1u);
  // Beyond QEMU: grains used twice, tables outside the file (QEMU: clean).
  b = good;
  store_le32(&b[gt + 4], load_le32(&good[gt]));
  img = open_bytes(dir, b);
  ASSERT_TRUE(img);
  r = (*img)->check(formats::Repair::None);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->corruptions, 1u);
  EXPECT_EQ(r->check_errors, 0u);
  b = good;
  store_le32(&b[gd], 0x7fffff);
  img = open_bytes(dir, b);
  ASSERT_TRUE(img);
  r = (*img)->check(formats::Repair::None);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->corruptions, 1u);
  ASSERT_FALSE(r->messages.empty());
  EXPECT_NE(r->messages[0].find("grain directory entry 0"), std::string::npos) << r->messages[0];
  EXPECT_FALSE((*img)->check(formats::Repair::All)) << "vmdk cannot be repaired, as in QEMU";
}

}  // namespace
}  // namespace dmu::formats::vmdk
