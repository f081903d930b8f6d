// qcow (version 1) engine, read side, against qemu-img as the oracle: every
// byte, map, info, create, compressed clusters and backing chains.
#include <gtest/gtest.h>

#include "fileio/file.h"
#include "formats/format_specific_json.h"
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

std::unique_ptr<Image> open_qcow(const std::string& path, Access access = Access::ReadOnly) {
  auto img = formats::find_driver("qcow")->open(posix_env(), path, access);
  EXPECT_TRUE(img) << img.error().message;
  return img ? std::move(*img) : nullptr;
}

void qemu_io(const std::string& path, const std::string& fmt, std::vector<std::string> cmds) {
  std::string c = "qemu-io -f " + fmt;
  for (const auto& cmd : cmds) c += " -c " + shell_quote(cmd);
  run_ok(c + " " + shell_quote(path));
}

TEST(QcowRead, EveryByteMatchesQemuImgConvert) {
  test::TempDir dir;
  std::string img = dir.file("a.qcow");
  run_ok("qemu-img create -f qcow " + img + " 5M");
  qemu_io(img, "qcow",
          {"write -P 0x11 0 4k", "write -P 0x22 12345 70000", "write -P 0x33 4M 1M",
           "write -P 0x44 2M 512"});
  auto image = open_qcow(img);
  ASSERT_TRUE(image);
  auto bytes = test::read_all({image.get()});
  ASSERT_TRUE(bytes) << bytes.error().message;
  EXPECT_EQ(*bytes, test::qemu_export(img, "qcow", dir));
}

TEST(QcowMap, AgreesWithQemuImgMapOnDataAndHoles) {
  test::TempDir dir;
  std::string img = dir.file("a.qcow");
  run_ok("qemu-img create -f qcow " + img + " 9M");
  qemu_io(img, "qcow", {"write -P 1 8k 12k", "write -P 2 3M 4097", "write -P 3 8M 1M"});
  auto image = open_qcow(img);
  ASSERT_TRUE(image);
  test::expect_map_agrees(*image, "qcow");
}

TEST(QcowMap, ContiguousClustersComeBackAsOneExtent) {
  test::TempDir dir;
  std::string img = dir.file("a.qcow");
  run_ok("qemu-img create -f qcow " + img + " 4M");
  qemu_io(img, "qcow", {"write -P 7 64k 256k"});
  auto image = open_qcow(img);
  ASSERT_TRUE(image);
  auto m = image->map(64 * 1024, 4 * 1024 * 1024 - 64 * 1024);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->kind, MapKind::Data);
  EXPECT_EQ(m->length, 256u * 1024);
  EXPECT_FALSE(m->writable);  // opened read-only
  auto hole = image->map(0, 4 * 1024 * 1024);
  ASSERT_TRUE(hole);
  EXPECT_EQ(hole->kind, MapKind::Unallocated);
  EXPECT_EQ(hole->length, 64u * 1024);
}

TEST(QcowRead, CompressedClustersMatchQemu) {
  test::TempDir dir;
  std::string raw = dir.file("src.raw"), img = dir.file("c.qcow");
  std::vector<uint8_t> src(3 * 1024 * 1024 + 512, 0);
  auto noise = test::random_bytes(200000, 7);
  std::copy(noise.begin(), noise.end(), src.begin() + 100000);              // incompressible
  for (size_t i = 1 << 20; i < (2u << 20); ++i) src[i] = uint8_t(i / 700);  // compressible
  test::write_file(raw, src);
  // QEMU 7.2's convert -c to qcow exits 1 after writing a good image (its
  // end-of-stream marker write is refused by the qcow driver); compare instead.
  test::run("qemu-img convert -c -f raw -O qcow " + raw + " " + img);
  run_ok("qemu-img compare -f raw -F qcow " + raw + " " + img);
  qemu_io(img, "qcow", {"write -c -P 0x5a 2M 4k"});
  auto image = open_qcow(img);
  ASSERT_TRUE(image);
  auto bytes = test::read_all({image.get()});
  ASSERT_TRUE(bytes) << bytes.error().message;
  EXPECT_EQ(*bytes, test::qemu_export(img, "qcow", dir));
  auto m = image->map(1 << 20, 4096);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->kind, MapKind::Compressed);
  test::expect_map_agrees(*image, "qcow");
}

TEST(QcowRead, BackingChainMatchesQemu) {
  test::TempDir dir;
  std::string base = dir.file("base.qcow"), top = dir.file("top.qcow");
  run_ok("qemu-img create -f qcow " + base + " 4M");
  qemu_io(base, "qcow", {"write -P 0xaa 0 4M"});
  run_ok("qemu-img create -f qcow -b base.qcow -F qcow " + top);
  qemu_io(top, "qcow", {"write -P 0xbb 1000 3000", "write -P 0xcc 3M 8k"});
  auto b = open_qcow(base);
  auto t = open_qcow(top);
  ASSERT_TRUE(b && t);
  EXPECT_EQ(t->info().backing_file, "base.qcow");
  EXPECT_EQ(t->info().cluster_size, 512u);
  auto bytes = test::read_all({t.get(), b.get()});
  ASSERT_TRUE(bytes) << bytes.error().message;
  EXPECT_EQ(*bytes, test::qemu_export(top, "qcow", dir));
}

TEST(QcowInfo, MatchesQemuImgInfo) {
  test::TempDir dir;
  std::string base = dir.file("base.qcow"), top = dir.file("top.qcow");
  run_ok("qemu-img create -f qcow " + base + " 3000000");
  run_ok("qemu-img create -f qcow -b base.qcow -F qcow " + top + " 7M");
  for (const std::string& path : {base, top}) {
    auto q = nlohmann::json::parse(run_ok("qemu-img info --output=json " + path));
    auto img = open_qcow(path);
    ASSERT_TRUE(img);
    const auto& info = img->info();
    EXPECT_EQ(info.format, q["format"]);
    EXPECT_EQ(info.virtual_size, q["virtual-size"].get<uint64_t>());
    EXPECT_EQ(info.cluster_size, q["cluster-size"].get<uint64_t>());
    EXPECT_EQ(info.granularity, info.cluster_size);
    EXPECT_EQ(info.backing_file.has_value(), q.contains("backing-filename"));
    if (info.backing_file) {
      EXPECT_EQ(*info.backing_file, q["backing-filename"]);
    }
    EXPECT_FALSE(info.backing_file_format);  // qcow has nowhere to store it
    EXPECT_EQ(dmu::formats::format_specific_json(info.format_specific).is_null(),
              !q.contains("format-specific"));
  }
}

TEST(QcowCreate, ByteIdenticalToQemuImgCreate) {
  test::TempDir dir;
  struct Case {
    uint64_t size;
    std::string backing;
  };
  for (const Case& c : {Case{5 << 20, ""}, Case{1000, ""}, Case{uint64_t(100) << 30, ""},
                        Case{7 << 20, "base.qcow"}, Case{(64 << 20) + 512, "../x/y z.img"}}) {
    std::string ours = dir.file("ours.qcow"), theirs = dir.file("theirs.qcow");
    formats::CreateOptions o;
    o.virtual_size = c.size;
    if (!c.backing.empty()) o.backing_file = c.backing;
    auto r = formats::find_driver("qcow")->create(posix_env(), ours, o);
    ASSERT_TRUE(r) << r.error().message;
    std::string b = c.backing.empty() ? "" : " -u -b " + shell_quote(c.backing) + " -F raw";
    run_ok("qemu-img create -f qcow" + b + " " + theirs + " " + std::to_string(c.size));
    EXPECT_EQ(test::read_file(ours), test::read_file(theirs)) << c.size << " " << c.backing;
  }
}

TEST(QcowCreate, RefusesEncryptionAndUnknownOptions) {
  test::TempDir dir;
  formats::CreateOptions o;
  o.virtual_size = 1 << 20;
  o.options["encryption"] = "on";
  auto r = formats::find_driver("qcow")->create(posix_env(), dir.file("e.qcow"), o);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ENOTSUP);
  o.options = {{"cluster_size", "65536"}};
  r = formats::find_driver("qcow")->create(posix_env(), dir.file("e.qcow"), o);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("cluster_size"), std::string::npos);
}

TEST(QcowProbe, RecognisesQcowAndOnlyQcow) {
  test::TempDir dir;
  run_ok("qemu-img create -f qcow " + dir.file("a.qcow") + " 1M");
  run_ok("qemu-img create -f qcow2 " + dir.file("a.qcow2") + " 1M");
  auto probe = formats::find_driver("qcow")->probe;
  EXPECT_EQ(probe(test::read_file(dir.file("a.qcow")), "a.qcow"), 100);
  EXPECT_EQ(probe(test::read_file(dir.file("a.qcow2")), "a.qcow2"), 0);
  auto d = formats::probe(posix_env(), dir.file("a.qcow"));
  ASSERT_TRUE(d);
  EXPECT_STREQ((*d)->name, "qcow");
}

}  // namespace
}  // namespace dmu::formats::qcow
