// vmdk engine, write side: writes through the protocol of formats/image.h in
// every writable subformat read back identically in QEMU with qemu-img check
// clean; zeroed grains, parents, new grain tables, the CID update, and create
// matching qemu-img create byte for byte.
#include <gtest/gtest.h>

#include <random>
#include <regex>

#include "common/endian.h"
#include "fileio/file.h"
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

std::unique_ptr<Image> open_vmdk(const std::string& path, Access access = Access::ReadWrite) {
  auto img = formats::find_driver("vmdk")->open(posix_env(), path, access);
  EXPECT_TRUE(img) << img.error().message;
  return img ? std::move(*img) : nullptr;
}

void create_vmdk(const std::string& path, uint64_t size,
                 std::map<std::string, std::string> opts = {},
                 std::optional<std::string> backing = std::nullopt) {
  formats::CreateOptions o;
  o.virtual_size = size;
  o.options = std::move(opts);
  o.backing_file = std::move(backing);
  auto r = formats::find_driver("vmdk")->create(posix_env(), path, o);
  ASSERT_TRUE(r) << r.error().message;
}

struct Write {
  uint64_t offset;
  std::vector<uint8_t> data;
};

// A sparse raw file with the expected guest bytes, for qemu-img compare.
void write_expected(const std::string& path, uint64_t size, const std::vector<Write>& writes) {
  auto f = posix_env().open(path, OpenMode::CreateTruncate);
  ASSERT_TRUE(f);
  ASSERT_TRUE((*f)->truncate(size));
  for (const Write& w : writes) ASSERT_TRUE((*f)->write(w.offset, w.data));
}

TEST(VmdkWrite, EveryWritableSubformatReadsBackInQemuWithCheckClean) {
  test::TempDir dir;
  struct Case {
    std::string subformat;
    uint64_t size;
  };
  const uint64_t gib = uint64_t(1) << 30;
  for (const Case& c :
       {Case{"monolithicSparse", 6 << 20}, Case{"monolithicFlat", 6 << 20},
        Case{"twoGbMaxExtentSparse", 3 * gib}, Case{"twoGbMaxExtentFlat", 3 * gib}}) {
    SCOPED_TRACE(c.subformat);
    std::string img = dir.file(c.subformat + ".vmdk");
    create_vmdk(img, c.size, {{"subformat", c.subformat}});
    std::vector<Write> writes;
    std::mt19937 rng(5);
    for (int i = 0; i < 30; ++i) {
      uint64_t len = 1 + rng() % 150000;
      uint64_t off = i % 3 == 0 && c.size > 2 * gib ? 2 * gib - 70000 + rng() % 140000
                                                    : rng() % (c.size - len);
      writes.push_back({off, test::random_bytes(len, i)});
    }
    {
      auto image = open_vmdk(img);
      ASSERT_TRUE(image);
      for (size_t i = 0; i < writes.size(); ++i) {
        ASSERT_TRUE(test::write_chain({image.get()}, writes[i].offset, writes[i].data));
        if (i % 8 == 0) {
          ASSERT_TRUE(image->commit());
        }
      }
      ASSERT_TRUE(image->commit());
      auto check = image->check(formats::Repair::None);
      ASSERT_TRUE(check) << check.error().message;
      EXPECT_EQ(check->corruptions, 0u);
    }
    run_ok("qemu-img check -f vmdk " + img);
    write_expected(dir.file("expect.raw"), c.size, writes);
    run_ok("qemu-img compare -f vmdk -F raw " + img + " " + dir.file("expect.raw"));
  }
}

TEST(VmdkWrite, PartialGrainsOverAParentKeepTheParentsBytes) {
  test::TempDir dir;
  std::string base = dir.file("base.vmdk"), child = dir.file("child.vmdk");
  run_ok("qemu-img create -f vmdk " + base + " 2M");
  run_ok("qemu-io -f vmdk -c 'write -P 0x5b 0 2M' " + base);
  create_vmdk(child, 2 << 20, {}, "base.vmdk");
  auto b = open_vmdk(base, Access::ReadOnly);
  auto c = open_vmdk(child);
  ASSERT_TRUE(b && c);
  ASSERT_TRUE(formats::vmdk::check_parent_cid(*c, *b));
  ASSERT_TRUE(test::write_chain({c.get(), b.get()}, 700, std::vector<uint8_t>(1000, 0x11)));
  ASSERT_TRUE(test::write_chain({c.get(), b.get()}, 100000, std::vector<uint8_t>(70000, 0x22)));
  ASSERT_TRUE(c->commit());
  c.reset();
  std::vector<uint8_t> expect(2 << 20, 0x5b);
  std::fill(expect.begin() + 700, expect.begin() + 1700, 0x11);
  std::fill(expect.begin() + 100000, expect.begin() + 170000, 0x22);
  EXPECT_EQ(test::qemu_export(child, "vmdk", dir), expect);
  run_ok("qemu-img check -f vmdk " + child);
}

TEST(VmdkWriteZeroes, UsesZeroedGrainsWhenTheHeaderAllows) {
  test::TempDir dir;
  std::string img = dir.file("z.vmdk");
  create_vmdk(img, 4 << 20, {{"zeroed_grain", "on"}});
  auto image = open_vmdk(img);
  ASSERT_TRUE(image);
  ASSERT_TRUE(test::write_chain({image.get()}, 0, std::vector<uint8_t>(1 << 20, 0x31)));
  ASSERT_TRUE(image->commit());
  ASSERT_TRUE(test::zero_chain({image.get()}, 100000, 300000, false));
  ASSERT_TRUE(image->write_zeroes(3 << 20, 1 << 20, true));  // unallocated grains too
  ASSERT_TRUE(image->commit());
  auto m = image->map(131072, 65536);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->kind, MapKind::Zero);
  image.reset();
  std::vector<uint8_t> expect(4 << 20, 0);
  std::fill(expect.begin(), expect.begin() + (1 << 20), 0x31);
  std::fill(expect.begin() + 100000, expect.begin() + 400000, 0);
  EXPECT_EQ(test::qemu_export(img, "vmdk", dir), expect);
  bool zero_seen = false;
  for (const auto& q : test::qemu_map(img, "vmdk"))
    if (q.start <= 131072 && q.start + q.length > 131072) zero_seen = q.zero && !q.data;
  EXPECT_TRUE(zero_seen) << "qemu-img map does not see the zeroed grain";
  run_ok("qemu-img check -f vmdk " + img);
}

TEST(VmdkWriteZeroes, OverAParentWithoutZeroedGrainsIsNotSupported) {
  test::TempDir dir;
  std::string base = dir.file("base.vmdk"), child = dir.file("child.vmdk");
  create_vmdk(base, 1 << 20);
  create_vmdk(child, 1 << 20, {}, "base.vmdk");
  auto c = open_vmdk(child);
  ASSERT_TRUE(c);
  auto r = c->write_zeroes(0, 65536, true);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ENOTSUP);
  // Without a parent, deallocating is enough.
  auto b = open_vmdk(base);
  ASSERT_TRUE(b);
  ASSERT_TRUE(test::write_chain({b.get()}, 0, std::vector<uint8_t>(65536, 1)));
  ASSERT_TRUE(b->write_zeroes(0, 65536, true));
  auto m = b->map(0, 65536);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->kind, MapKind::Unallocated);
  auto partial = b->write_zeroes(512, 512, true);
  EXPECT_TRUE(partial) << "an unallocated grain already reads as zeros";
}

TEST(VmdkWrite, AllocatesGrainTablesWhereTheDirectoryHasNone) {
  test::TempDir dir;
  std::string img = dir.file("gt.vmdk");
  create_vmdk(img, 80 << 20);  // three grain tables of 32 MiB
  // Forget the second table in both directories, as VMware leaves them.
  auto bytes = test::read_file(img);
  uint64_t gd = load_le64(&bytes[56]) * 512, rgd = load_le64(&bytes[48]) * 512;
  store_le32(&bytes[gd + 4], 0);
  store_le32(&bytes[rgd + 4], 0);
  test::write_file(img, bytes);
  std::vector<Write> writes = {{(32 << 20) + 1000, std::vector<uint8_t>(200000, 0x42)},
                               {(40 << 20), std::vector<uint8_t>(4096, 0x43)}};
  {
    auto image = open_vmdk(img);
    ASSERT_TRUE(image);
    for (const Write& w : writes) ASSERT_TRUE(test::write_chain({image.get()}, w.offset, w.data));
    ASSERT_TRUE(image->commit());
  }
  bytes = test::read_file(img);
  EXPECT_NE(load_le32(&bytes[gd + 4]), 0u);
  EXPECT_NE(load_le32(&bytes[rgd + 4]), 0u);
  EXPECT_NE(load_le32(&bytes[gd + 4]), load_le32(&bytes[rgd + 4]));
  run_ok("qemu-img check -f vmdk " + img);
  write_expected(dir.file("expect.raw"), 80 << 20, writes);
  run_ok("qemu-img compare -f vmdk -F raw " + img + " " + dir.file("expect.raw"));
}

TEST(VmdkWrite, FirstCommitOfASessionGivesANewCid) {
  test::TempDir dir;
  std::string img = dir.file("cid.vmdk");
  create_vmdk(img, 1 << 20);
  auto cid = [&] {
    return nlohmann::json::parse(
               run_ok("qemu-img info --output=json " + img))["format-specific"]["data"]["cid"]
        .get<uint64_t>();
  };
  uint64_t before = cid();
  auto image = open_vmdk(img);
  ASSERT_TRUE(image);
  ASSERT_TRUE(image->commit());
  EXPECT_EQ(cid(), before) << "no write, no new CID";
  ASSERT_TRUE(test::write_chain({image.get()}, 0, std::vector<uint8_t>(512, 1)));
  ASSERT_TRUE(image->commit());
  uint64_t after = cid();
  EXPECT_NE(after, before);
  EXPECT_EQ(std::get<dmu::formats::VmdkSpecific>(image->info().format_specific).cid, after);
  ASSERT_TRUE(test::write_chain({image.get()}, 512, std::vector<uint8_t>(512, 2)));
  ASSERT_TRUE(image->commit());
  EXPECT_EQ(cid(), after) << "once a session, as QEMU";
}

// A new image's bytes with the random CID blanked out (in a sparse file the
// descriptor text is compared up to its padding, which absorbs the CID's length).
std::vector<uint8_t> normalized(const std::string& path) {
  auto b = test::read_file(path);
  std::string s(b.begin(), b.end());
  auto blank = [](std::string t) {
    return std::regex_replace(t, std::regex("(^|\n)CID=[0-9a-f]+\n"), "$1CID=x\n");
  };
  if (s.compare(0, 4, "KDMV") == 0 && s.size() > 21 * 512) {
    std::string desc = s.substr(512, 20 * 512);
    desc = desc.substr(0, desc.find('\0'));
    s = s.substr(0, 512) + blank(desc) + "|" + s.substr(21 * 512);
  } else {
    s = blank(s);
  }
  return std::vector<uint8_t>(s.begin(), s.end());
}

TEST(VmdkCreate, SameFilesAsQemuImgCreate) {
  test::TempDir dir;
  // Same names in two directories, so extent lines and parent hints agree.
  std::string ours = dir.file("ours"), theirs = dir.file("theirs");
  run_ok("mkdir " + ours + " " + theirs);
  run_ok("qemu-img create -f vmdk " + ours + "/base.vmdk 5M");
  run_ok("cp " + ours + "/base.vmdk " + theirs + "/base.vmdk");
  struct Case {
    std::string opts;
    uint64_t size;
    std::vector<std::string> extents;  // extent files next to the descriptor
    std::string backing;
  };
  for (const Case& c :
       {Case{"", 5 << 20, {}, ""}, Case{"", 1000, {}, ""},
        Case{"zeroed_grain=on", 100 << 20, {}, ""},
        Case{"adapter_type=lsilogic,hwversion=6", 7 << 20, {}, ""},
        Case{"compat6=on,toolsversion=99", 7 << 20, {}, ""},
        Case{"subformat=monolithicFlat", 3 << 20, {"-flat"}, ""},
        Case{"subformat=twoGbMaxExtentSparse",
             (uint64_t(5) << 30) + 4096,
             {"-s001", "-s002", "-s003"},
             ""},
        Case{"subformat=twoGbMaxExtentFlat,adapter_type=buslogic", 3 << 20, {"-f001"}, ""},
        Case{"subformat=streamOptimized", 5 << 20, {}, ""},
        Case{"subformat=streamOptimized,zeroed_grain=on", 3000, {}, ""},
        Case{"subformat=streamOptimized", 5 << 20, {}, "base.vmdk"},
        Case{"", 5 << 20, {}, "base.vmdk"},
        Case{"subformat=twoGbMaxExtentSparse", 3 << 20, {"-s001"}, "base.vmdk"}}) {
    SCOPED_TRACE(c.opts + " " + c.backing);
    std::map<std::string, std::string> opts;
    std::stringstream ss(c.opts);
    for (std::string kv; std::getline(ss, kv, ',');)
      opts[kv.substr(0, kv.find('='))] = kv.substr(kv.find('=') + 1);
    create_vmdk(ours + "/x.vmdk", c.size, opts,
                c.backing.empty() ? std::nullopt : std::optional(c.backing));
    run_ok("qemu-img create -f vmdk " + (c.opts.empty() ? "" : "-o " + c.opts) +
           (c.backing.empty() ? "" : " -b " + c.backing + " -F vmdk") + " " + theirs + "/x.vmdk " +
           std::to_string(c.size));
    EXPECT_EQ(normalized(ours + "/x.vmdk"), normalized(theirs + "/x.vmdk"));
    for (const std::string& e : c.extents) {
      bool flat = c.opts.find("Flat") != std::string::npos;
      std::string a = ours + "/x" + e + ".vmdk", b = theirs + "/x" + e + ".vmdk";
      if (flat) {
        EXPECT_EQ(*(*posix_env().open(a, OpenMode::ReadOnly))->size(),
                  *(*posix_env().open(b, OpenMode::ReadOnly))->size());
      } else {
        EXPECT_EQ(test::read_file(a), test::read_file(b)) << e;
      }
    }
    run_ok("qemu-img check -f vmdk " + ours + "/x.vmdk");
  }
}

TEST(VmdkCreate, RefusesWhatQemuRefuses) {
  test::TempDir dir;
  auto create = [&](std::map<std::string, std::string> opts,
                    std::optional<std::string> backing = std::nullopt) {
    formats::CreateOptions o;
    o.virtual_size = 1 << 20;
    o.options = std::move(opts);
    o.backing_file = std::move(backing);
    return formats::find_driver("vmdk")->create(posix_env(), dir.file("x.vmdk"), o);
  };
  EXPECT_FALSE(create({{"subformat", "bogus"}}));
  EXPECT_FALSE(create({{"adapter_type", "scsi"}}));
  EXPECT_FALSE(create({{"compat6", "on"}, {"hwversion", "7"}}));
  EXPECT_FALSE(create({{"subformat", "monolithicFlat"}, {"zeroed_grain", "on"}}));
  EXPECT_FALSE(create({{"backing_fmt", "qcow2"}}));
  EXPECT_FALSE(create({}, "missing.vmdk"));
  run_ok("qemu-img create -f raw " + dir.file("raw.img") + " 1M");
  auto r = create({}, "raw.img");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("backing file"), std::string::npos);
}

// An empty streamOptimized image reads as zeros, here and in QEMU, and
// stays read-only for dmu (the engine does not append compressed grains).
TEST(VmdkCreate, EmptyStreamOptimizedReadsZerosAndOpensReadOnly) {
  test::TempDir dir;
  const std::string img = dir.file("s.vmdk");
  create_vmdk(img, 3 << 20, {{"subformat", "streamOptimized"}}, std::nullopt);
  run_ok("qemu-img check -f vmdk " + img);
  run_ok("qemu-io -f vmdk -c 'read -P 0 0 3M' " + img);
  auto ro = formats::find_driver("vmdk")->open(posix_env(), img, Access::ReadOnly);
  ASSERT_TRUE(ro) << ro.error().message;
  EXPECT_EQ(std::get<dmu::formats::VmdkSpecific>((*ro)->info().format_specific).create_type,
            "streamOptimized");
  EXPECT_EQ((*ro)->info().virtual_size, 3u << 20);
  auto m = (*ro)->map(0, 3 << 20);
  ASSERT_TRUE(m) << m.error().message;
  EXPECT_NE(m->kind, formats::MapKind::Data);
  EXPECT_EQ(m->length, 3u << 20);
  auto rw = formats::find_driver("vmdk")->open(posix_env(), img, Access::ReadWrite);
  ASSERT_FALSE(rw);
  EXPECT_EQ(rw.error().code, EROFS);
}

}  // namespace
}  // namespace dmu::formats::vmdk
