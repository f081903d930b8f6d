// vmdk engine, read side, against qemu-img as the oracle: every subformat's
// bytes, map and info (format-specific included), zeroed grains,
// stream-optimized images (QEMU's and a VMware-style one with a footer) and
// parent links with QEMU's CID check.
#include <gtest/gtest.h>
#include <zlib.h>

#include "common/endian.h"
#include "fileio/file.h"
#include "formats/format_specific_json.h"
#include "formats/image.h"
#include "formats/vmdk/vmdk_image.h"
#include "tests/support/test_support.h"
#include "tests/unit/engine_harness.h"

namespace dmu::formats::vmdk {
namespace {

using formats::Access;
using formats::Image;
using formats::MapKind;
using test::run_ok;
using test::shell_quote;

std::unique_ptr<Image> open_vmdk(const std::string& path, Access access = Access::ReadOnly) {
  auto img = formats::find_driver("vmdk")->open(posix_env(), path, access);
  EXPECT_TRUE(img) << img.error().message;
  return img ? std::move(*img) : nullptr;
}

void qemu_io(const std::string& path, std::vector<std::string> cmds) {
  std::string c = "qemu-io -f vmdk";
  for (const auto& cmd : cmds) c += " -c " + shell_quote(cmd);
  run_ok(c + " " + shell_quote(path));
}

// Every byte, the map and the info of `path` agree with qemu-img.
void expect_same_as_qemu(const std::string& path, const test::TempDir& dir) {
  SCOPED_TRACE(path);
  auto image = open_vmdk(path);
  ASSERT_TRUE(image);
  auto bytes = test::read_all({image.get()});
  ASSERT_TRUE(bytes) << bytes.error().message;
  EXPECT_EQ(*bytes, test::qemu_export(path, "vmdk", dir));
  test::expect_map_agrees(*image, "vmdk");
  auto q = nlohmann::json::parse(run_ok("qemu-img info --output=json " + shell_quote(path)));
  const auto& info = image->info();
  EXPECT_EQ(info.format, "vmdk");
  EXPECT_EQ(info.virtual_size, q["virtual-size"].get<uint64_t>());
  EXPECT_EQ(info.cluster_size, q.value("cluster-size", uint64_t(0)));
  EXPECT_EQ(dmu::formats::format_specific_json(info.format_specific), q["format-specific"]);
  EXPECT_EQ(info.backing_file.value_or(""), q.value("backing-filename", ""));
}

TEST(VmdkRead, MonolithicSparseMatchesQemu) {
  test::TempDir dir;
  std::string img = dir.file("a.vmdk");
  run_ok("qemu-img create -f vmdk " + img + " 40M");
  qemu_io(img, {"write -P 0x11 0 4k", "write -P 0x22 100000 300000", "write -P 0x33 32M 1M",
                "write -P 0x44 40894464 512"});
  expect_same_as_qemu(img, dir);
  auto image = open_vmdk(img);
  ASSERT_TRUE(image);
  EXPECT_EQ(image->info().granularity, 65536u);
  // One extent for grains QEMU allocated back to back, as its map says.
  for (const auto& q : test::qemu_map(img, "vmdk")) {
    if (q.start > 64 * 1024 || q.start + q.length <= 64 * 1024) continue;
    auto m = image->map(64 * 1024, (40 << 20) - 64 * 1024);
    ASSERT_TRUE(m);
    EXPECT_EQ(m->kind, MapKind::Data);
    EXPECT_EQ(m->length, q.start + q.length - 64 * 1024);
    EXPECT_GT(m->length, 65536u);
  }
}

TEST(VmdkRead, FlatSubformatsMatchQemu) {
  test::TempDir dir;
  std::string img = dir.file("flat.vmdk");
  run_ok("qemu-img create -f vmdk -o subformat=monolithicFlat " + img + " 3M");
  qemu_io(img, {"write -P 0x55 1000 70000", "write -P 0x66 3145216 512"});
  expect_same_as_qemu(img, dir);
  auto image = open_vmdk(img);
  ASSERT_TRUE(image);
  ASSERT_EQ(image->data_files().size(), 1u);
  EXPECT_EQ(image->data_files()[0]->path(), dir.file("flat-flat.vmdk"));
  auto m = image->map(0, 3 << 20);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->kind, MapKind::Data);
  EXPECT_EQ(m->length, 3u << 20);
}

// A twoGbMaxExtent* descriptor over small extents, which QEMU reads like any
// other, so every byte can be compared.
std::string small_split(const test::TempDir& dir, bool flat) {
  std::string lines;
  const char* sizes[] = {"1M", "2M", "512K"};
  for (int i = 0; i < 3; ++i) {
    std::string name = std::string("s-") + (flat ? "f" : "s") + std::to_string(i + 1) + ".vmdk";
    if (flat)
      run_ok(std::string("qemu-img create -f raw ") + dir.file(name) + " " + sizes[i]);
    else
      run_ok(std::string("qemu-img create -f vmdk ") + dir.file(name) + " " + sizes[i]);
    uint64_t sectors = i == 0 ? 2048 : i == 1 ? 4096 : 1024;
    lines += "RW " + std::to_string(sectors) + (flat ? " FLAT \"" : " SPARSE \"") + name +
             (flat ? "\" 0\n" : "\"\n");
  }
  std::string desc =
      std::string("# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n") +
      "createType=\"" + (flat ? "twoGbMaxExtentFlat" : "twoGbMaxExtentSparse") +
      // QEMU's extent parser skips a blank line straight into the next
      // line and reads that extent twice: keep a comment between.
      "\"\n\n# Extent description\n" + lines + "\nddb.adapterType = \"ide\"\n";
  std::string path = dir.file(flat ? "split-flat.vmdk" : "split-sparse.vmdk");
  test::write_file(path, std::vector<uint8_t>(desc.begin(), desc.end()));
  return path;
}

TEST(VmdkRead, SplitSubformatsMatchQemuAcrossExtentBoundaries) {
  test::TempDir dir;
  for (bool flat : {false, true}) {
    std::string img = small_split(dir, flat);
    qemu_io(img, {"write -P 0x71 1044480 8k", "write -P 0x72 2M 64k", "write -P 0x73 3145216 1k"});
    expect_same_as_qemu(img, dir);
    auto image = open_vmdk(img);
    ASSERT_TRUE(image);
    EXPECT_EQ(image->data_files().size(), 3u);
    auto m = image->map((1 << 20) - 4096, 8192);
    ASSERT_TRUE(m);
    EXPECT_EQ(m->length, 4096u) << "a mapping never crosses an extent";
    m = image->map(1 << 20, 4096);
    ASSERT_TRUE(m);
    EXPECT_EQ(m->file, 1u);
  }
}

TEST(VmdkRead, QemuTwoGbMaxExtentImagesAgreeAroundEveryBoundary) {
  test::TempDir dir;
  struct Write {
    uint64_t offset, length;
    uint8_t value;
  };
  const Write writes[] = {
      {2147475456, 16384, 0x81}, {4294966784, 1024, 0x82}, {5368643584, 65536, 0x83}};
  for (std::string sub : {"twoGbMaxExtentSparse", "twoGbMaxExtentFlat"}) {
    std::string img = dir.file(sub + ".vmdk");
    run_ok("qemu-img create -f vmdk -o subformat=" + sub + " " + img + " 5G");
    std::vector<std::string> cmds;
    for (const Write& w : writes)
      cmds.push_back("write -P " + std::to_string(w.value) + " " + std::to_string(w.offset) + " " +
                     std::to_string(w.length));
    qemu_io(img, cmds);
    auto image = open_vmdk(img);
    ASSERT_TRUE(image);
    auto q = nlohmann::json::parse(run_ok("qemu-img info --output=json " + img));
    EXPECT_EQ(dmu::formats::format_specific_json(image->info().format_specific),
              q["format-specific"]);
    EXPECT_EQ(image->info().virtual_size, q["virtual-size"].get<uint64_t>());
    EXPECT_EQ(image->data_files().size(), 3u);
    // 64 KiB around each write: the written bytes and zeros either side.
    for (const Write& w : writes) {
      uint64_t from = std::min(w.offset - 8192, image->info().virtual_size - 65536 - 8192);
      std::vector<uint8_t> ours(65536 + 8192), expect(ours.size(), 0);
      ASSERT_TRUE(test::read_chain({image.get()}, 0, from, ours));
      for (const Write& x : writes)
        for (uint64_t i = 0; i < x.length; ++i)
          if (x.offset + i >= from && x.offset + i < from + expect.size())
            expect[x.offset + i - from] = x.value;
      EXPECT_EQ(ours, expect) << sub << " around " << w.offset;
    }
  }
}

TEST(VmdkRead, ZeroedGrainsMapAsZero) {
  test::TempDir dir;
  std::string img = dir.file("z.vmdk");
  run_ok("qemu-img create -f vmdk -o zeroed_grain=on " + img + " 4M");
  qemu_io(img, {"write -P 0x91 0 1M", "write -z 256k 128k", "write -z 2M 64k"});
  expect_same_as_qemu(img, dir);
  auto image = open_vmdk(img);
  ASSERT_TRUE(image);
  auto m = image->map(256 * 1024, 128 * 1024);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->kind, MapKind::Zero);
  EXPECT_EQ(m->length, 128u * 1024);
}

TEST(VmdkRead, StreamOptimizedFromQemuConvertMatches) {
  test::TempDir dir;
  std::string src = dir.file("src.raw"), img = dir.file("s.vmdk");
  std::vector<uint8_t> raw(3 << 20, 0);
  auto noise = test::random_bytes(100000, 3);
  std::copy(noise.begin(), noise.end(), raw.begin() + 5000);
  for (size_t i = 2 << 20; i < raw.size() - 1000; ++i) raw[i] = uint8_t(i >> 9);
  test::write_file(src, raw);
  run_ok("qemu-img convert -f raw -O vmdk -o subformat=streamOptimized " + src + " " + img);
  expect_same_as_qemu(img, dir);
  auto image = open_vmdk(img);
  ASSERT_TRUE(image);
  auto m = image->map(0, 65536);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->kind, MapKind::Compressed);
  EXPECT_EQ(std::get<dmu::formats::VmdkSpecific>(image->info().format_specific).create_type,
            "streamOptimized");
  auto rw = formats::find_driver("vmdk")->open(posix_env(), img, Access::ReadWrite);
  ASSERT_FALSE(rw);
  EXPECT_EQ(rw.error().code, EROFS);
}

// A stream-optimized image as VMware writes it: header with the directory
// "at the end", grain markers, grain table and directory markers, footer.
std::vector<uint8_t> vmware_stream(const std::vector<uint8_t>& disk, std::vector<bool> present) {
  const uint64_t grain = 65536, capacity = disk.size() / 512;
  std::string desc =
      "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
      "createType=\"streamOptimized\"\nRW " +
      std::to_string(capacity) + " SPARSE \"s.vmdk\"\n";
  std::vector<uint8_t> f(512 + 1024, 0);
  std::copy(desc.begin(), desc.end(), f.begin() + 512);
  auto header = [&](uint64_t gd) {
    std::vector<uint8_t> h(512, 0);
    store_le32(&h[0], 0x564d444b);
    store_le32(&h[4], 3);
    store_le32(&h[8], 1 | (1 << 16) | (1 << 17));
    store_le64(&h[12], capacity);
    store_le64(&h[20], grain / 512);
    store_le64(&h[28], 1);
    store_le64(&h[36], 2);
    store_le32(&h[44], 512);
    store_le64(&h[56], gd);
    store_le64(&h[64], 3);
    h[73] = '\n';
    h[74] = ' ';
    h[75] = '\r';
    h[76] = '\n';
    store_le16(&h[77], 1);
    return h;
  };
  auto head = header(~uint64_t(0));
  std::copy(head.begin(), head.end(), f.begin());
  std::vector<uint8_t> gt(2048, 0);
  for (size_t g = 0; g < present.size(); ++g) {
    if (!present[g]) continue;
    uLongf len = compressBound(grain);
    std::vector<uint8_t> z(len);
    compress(z.data(), &len, disk.data() + g * grain, grain);
    store_le32(&gt[g * 4], uint32_t(f.size() / 512));
    std::vector<uint8_t> m(12 + len);
    store_le64(&m[0], g * grain / 512);
    store_le32(&m[8], uint32_t(len));
    std::copy(z.begin(), z.begin() + len, m.begin() + 12);
    m.resize((m.size() + 511) / 512 * 512);
    f.insert(f.end(), m.begin(), m.end());
  }
  auto marker = [&](uint64_t val, uint32_t type) {
    std::vector<uint8_t> m(512, 0);
    store_le64(&m[0], val);
    store_le32(&m[12], type);
    f.insert(f.end(), m.begin(), m.end());
  };
  marker(4, 1);  // grain table
  uint64_t gt_sector = f.size() / 512;
  f.insert(f.end(), gt.begin(), gt.end());
  marker(1, 2);  // grain directory
  uint64_t gd_sector = f.size() / 512;
  std::vector<uint8_t> gd(512, 0);
  store_le32(&gd[0], uint32_t(gt_sector));
  f.insert(f.end(), gd.begin(), gd.end());
  marker(1, 3);  // footer
  auto foot = header(gd_sector);
  f.insert(f.end(), foot.begin(), foot.end());
  marker(0, 0);  // end of stream
  return f;
}

TEST(VmdkRead, VmwareStyleStreamWithFooterMatchesQemu) {
  test::TempDir dir;
  std::vector<uint8_t> disk(8 * 65536, 0);
  auto noise = test::random_bytes(65536 + 1000, 11);
  std::copy(noise.begin(), noise.end(), disk.begin() + 65536);
  for (size_t i = 5 * 65536; i < 6 * 65536; ++i) disk[i] = uint8_t(i * 7);
  std::string img = dir.file("vmware.vmdk");
  test::write_file(img, vmware_stream(disk, {false, true, true, false, false, true, false, false}));
  expect_same_as_qemu(img, dir);
  auto image = open_vmdk(img);
  ASSERT_TRUE(image);
  auto bytes = test::read_all({image.get()});
  ASSERT_TRUE(bytes);
  EXPECT_EQ(*bytes, disk);
}

TEST(VmdkRead, ParentChainMatchesQemuAndChecksCids) {
  test::TempDir dir;
  std::string base = dir.file("base.vmdk"), child = dir.file("child.vmdk");
  run_ok("qemu-img create -f vmdk " + base + " 4M");
  qemu_io(base, {"write -P 0xa1 0 4M"});
  run_ok("qemu-img create -f vmdk -b base.vmdk -F vmdk " + child);
  qemu_io(child, {"write -P 0xb2 100k 200k"});
  auto b = open_vmdk(base);
  auto c = open_vmdk(child);
  ASSERT_TRUE(b && c);
  EXPECT_EQ(c->info().backing_file, "base.vmdk");
  EXPECT_EQ(c->info().backing_file_format, "vmdk");
  auto bytes = test::read_all({c.get(), b.get()});
  ASSERT_TRUE(bytes);
  EXPECT_EQ(*bytes, test::qemu_export(child, "vmdk", dir));
  EXPECT_TRUE(formats::vmdk::check_parent_cid(*c, *b));
  b.reset();
  // Writing to the parent gives it a new CID; QEMU then refuses to read
  // through the child, and so do we.
  qemu_io(base, {"write -P 0xa2 0 512"});
  EXPECT_NE(test::run("qemu-io -f vmdk -c 'read 0 512' " + child).exit_code, 0);
  b = open_vmdk(base);
  ASSERT_TRUE(b);
  auto r = formats::vmdk::check_parent_cid(*c, *b);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("parentCID"), std::string::npos);
  auto raw = formats::find_driver("raw")->open(posix_env(), base, Access::ReadOnly);
  ASSERT_TRUE(raw);
  EXPECT_FALSE(formats::vmdk::check_parent_cid(*c, **raw));
}

TEST(VmdkProbe, RecognisesSparseFilesAndDescriptors) {
  test::TempDir dir;
  run_ok("qemu-img create -f vmdk " + dir.file("a.vmdk") + " 1M");
  run_ok("qemu-img create -f vmdk -o subformat=monolithicFlat " + dir.file("f.vmdk") + " 1M");
  auto probe = formats::find_driver("vmdk")->probe;
  EXPECT_EQ(probe(test::read_file(dir.file("a.vmdk")), ""), 100);
  EXPECT_EQ(probe(test::read_file(dir.file("f.vmdk")), ""), 100);
  EXPECT_EQ(probe(test::read_file(dir.file("f-flat.vmdk")), ""), 0);
  std::string crlf = "# Disk DescriptorFile\r\n  \r\nversion=1\r\n";
  EXPECT_EQ(probe(std::vector<uint8_t>(crlf.begin(), crlf.end()), ""), 100);
  std::string other = "hello\nversion=1\n";
  EXPECT_EQ(probe(std::vector<uint8_t>(other.begin(), other.end()), ""), 0);
}

}  // namespace
}  // namespace dmu::formats::vmdk
