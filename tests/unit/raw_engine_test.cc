// raw engine: the file is the disk.  Map agrees with qemu-img map (holes are
// zero), writes land in place, zeroing punches holes, create matches
// qemu-img create, and crash cuts never lose committed writes.
#include <gtest/gtest.h>

#include "fileio/file.h"
#include "fileio/mem_env.h"
#include "formats/chain.h"
#include "formats/image.h"
#include "mapper/map_service.h"
#include "tests/support/test_support.h"
#include "tests/unit/crash_harness.h"
#include "tests/unit/engine_harness.h"

namespace dmu::formats::raw {
namespace {

using formats::Access;
using formats::Image;
using formats::MapKind;
using test::run_ok;

std::unique_ptr<Image> open_raw(const std::string& path, Access access = Access::ReadWrite) {
  auto img = formats::find_driver("raw")->open(posix_env(), path, access);
  EXPECT_TRUE(img) << img.error().message;
  return img ? std::move(*img) : nullptr;
}

TEST(RawMap, AgreesWithQemuImgMapOnDataAndHoles) {
  test::TempDir dir;
  std::string img = dir.file("a.raw");
  run_ok("qemu-img create -f raw " + img + " 8M");
  run_ok("qemu-io -f raw -c 'write -P 1 64k 64k' -c 'write -P 0 1M 4k' -c 'write -P 3 7M 1M' " +
         img);
  auto image = open_raw(img, Access::ReadOnly);
  ASSERT_TRUE(image);
  test::expect_map_agrees(*image, "raw");
  auto hole = image->map(128 * 1024, 4096);
  ASSERT_TRUE(hole);
  EXPECT_EQ(hole->kind, MapKind::Zero);
  auto data = image->map(64 * 1024, 1 << 20);
  ASSERT_TRUE(data);
  EXPECT_EQ(data->kind, MapKind::Data);
  EXPECT_EQ(data->host_offset, 64u * 1024);
  EXPECT_EQ(data->length, 64u * 1024);
  EXPECT_FALSE(data->writable);
}

// Opened read-write, the whole disk is one run of writable data, holes
// included (the file reads as zeros there, and a write needs no metadata);
// read-only, holes stay zeros, as qemu-img map shows them.
TEST(RawMap, OpenedReadWriteTheWholeDiskIsWritableData) {
  test::TempDir dir;
  std::string img = dir.file("a.raw");
  run_ok("qemu-img create -f raw " + img + " 8M");
  run_ok("qemu-io -f raw -c 'write -P 1 64k 64k' " + img);
  auto ro = open_raw(img, Access::ReadOnly);
  ASSERT_TRUE(ro);
  auto ro_hole = ro->map(128 * 1024, 4096);
  ASSERT_TRUE(ro_hole);
  ASSERT_EQ(ro_hole->kind, MapKind::Zero);  // a hole, on this file system
  auto rw = open_raw(img, Access::ReadWrite);
  ASSERT_TRUE(rw);
  auto all = rw->map(0, 8 << 20);
  ASSERT_TRUE(all);
  EXPECT_EQ(all->kind, MapKind::Data);
  EXPECT_EQ(all->length, 8u << 20);
  EXPECT_EQ(all->host_offset, 0u);
  EXPECT_TRUE(all->writable);
  auto hole = rw->map(128 * 1024, 4096);
  ASSERT_TRUE(hole);
  EXPECT_EQ(hole->kind, MapKind::Data);
  EXPECT_EQ(hole->host_offset, 128u * 1024);
}

// The map service over a raw image opened read-write: a read miss in a hole
// is answered with the file, writable (read-only: zeros), and a write miss
// with a writable in-place extent reaching well past the asked block, so a
// sequential writer after a discard (which drops the kernel's extents)
// misses once per answer, not once per request.
TEST(RawMap, TheMapServiceHandsOutHolesAndLongRunsWritable) {
  test::TempDir dir;
  std::string img = dir.file("a.raw");
  run_ok("qemu-img create -f raw " + img + " 32M");
  run_ok("qemu-io -f raw -c 'write -P 1 0 64k' " + img);
  for (Access access : {Access::ReadWrite, Access::ReadOnly}) {
    formats::ChainOptions o;
    o.access = access;
    auto chain = formats::Chain::open(posix_env(), img, o);
    ASSERT_TRUE(chain) << chain.error().message;
    MemEnv scratch_env;
    const uint64_t block = mapper::choose_block_size(**chain);
    auto scratch = mapper::ScratchStore::create(scratch_env, "s", 1 << 20, block, false);
    ASSERT_TRUE(scratch);
    auto service = mapper::MapService::create(**chain, std::move(*scratch), {});
    ASSERT_TRUE(service);
    dmu_request r{};
    r.type = DMU_REQ_MAP;
    r.id = 1;
    r.block = (1 << 20) / block;  // a hole
    r.nr_blocks = 1;
    std::vector<dmu_response> out;
    (*service)->handle(r, out);
    ASSERT_FALSE(out.empty());
    EXPECT_EQ(out[0].type, uint32_t(DMU_RSP_EXTENT));
    EXPECT_EQ(out[0].block, r.block);
    if (access == Access::ReadOnly) {
      EXPECT_EQ(out[0].kind, uint32_t(DMU_EXT_ZERO));
      continue;
    }
    EXPECT_EQ(out[0].kind, uint32_t(DMU_EXT_REMAP));
    EXPECT_EQ(out[0].ext_flags, uint32_t(DMU_EXT_WRITABLE));
    EXPECT_EQ(out[0].sector, r.block * (block / 512));
    r.id = 2;
    r.flags = DMU_MAP_WRITE;
    r.block = (4 << 20) / block;
    out.clear();
    (*service)->handle(r, out);
    ASSERT_FALSE(out.empty());
    EXPECT_EQ(out[0].type, uint32_t(DMU_RSP_EXTENT));
    EXPECT_EQ(out[0].kind, uint32_t(DMU_EXT_REMAP));
    EXPECT_EQ(out[0].ext_flags, uint32_t(DMU_EXT_WRITABLE));  // in place: not NEW
    EXPECT_EQ(out[0].block, r.block);
    EXPECT_EQ(out[0].sector, r.block * (block / 512));
    EXPECT_GE(out[0].nr_blocks * block, 16u << 20);
  }
}

TEST(RawRead, EveryByteIsTheFile) {
  test::TempDir dir;
  std::string img = dir.file("a.raw");
  test::write_file(img, test::random_bytes(3 * 1024 * 1024 + 512, 5));
  auto image = open_raw(img, Access::ReadOnly);
  ASSERT_TRUE(image);
  EXPECT_EQ(image->info().virtual_size, 3u * 1024 * 1024 + 512);
  auto bytes = test::read_all({image.get()});
  ASSERT_TRUE(bytes);
  EXPECT_EQ(*bytes, test::qemu_export(img, "raw", dir));
}

TEST(RawWrite, InPlaceAndReadsBackInQemu) {
  test::TempDir dir;
  std::string img = dir.file("w.raw");
  run_ok("qemu-img create -f raw " + img + " 2M");
  auto image = open_raw(img);
  ASSERT_TRUE(image);
  auto t = image->prepare_write(1000, 3000);
  ASSERT_TRUE(t);
  EXPECT_FALSE(t->fresh);
  EXPECT_EQ(t->offset, 512u);
  EXPECT_EQ(t->host_offset, 512u);
  EXPECT_GE(t->offset + t->length, 4000u);
  ASSERT_TRUE(image->write_done(t->token, true));
  auto data = test::random_bytes(300000, 9);
  ASSERT_TRUE(test::write_chain({image.get()}, 777, data));
  ASSERT_TRUE(image->commit());
  std::vector<uint8_t> expect(2 << 20, 0);
  std::copy(data.begin(), data.end(), expect.begin() + 777);
  EXPECT_EQ(test::qemu_export(img, "raw", dir), expect);
  auto check = image->check(formats::Repair::None);
  ASSERT_FALSE(check) << "qemu-img check does not support raw either";
  EXPECT_EQ(check.error().code, ENOTSUP);
  EXPECT_EQ(test::run("qemu-img check -f raw " + img).exit_code, 63);
}

TEST(RawWriteZeroes, PunchesHolesThatMapAsZero) {
  test::TempDir dir;
  std::string img = dir.file("z.raw");
  test::write_file(img, std::vector<uint8_t>(1 << 20, 0x55));
  auto image = open_raw(img);
  ASSERT_TRUE(image);
  ASSERT_TRUE(image->write_zeroes(256 * 1024, 256 * 1024, true));
  ASSERT_TRUE(image->discard(768 * 1024, 64 * 1024));
  ASSERT_TRUE(image->commit());
  // Read-only, holes map as zeros (read-write, everything is writable data).
  auto ro = open_raw(img, Access::ReadOnly);
  ASSERT_TRUE(ro);
  auto m = ro->map(256 * 1024, 256 * 1024);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->kind, MapKind::Zero);
  auto expect = std::vector<uint8_t>(1 << 20, 0x55);
  std::fill(expect.begin() + 256 * 1024, expect.begin() + 512 * 1024, 0);
  std::fill(expect.begin() + 768 * 1024, expect.begin() + 832 * 1024, 0);
  EXPECT_EQ(test::qemu_export(img, "raw", dir), expect);
  test::expect_map_agrees(*ro, "raw");
}

TEST(RawCreate, LikeQemuImgCreate) {
  test::TempDir dir;
  std::string ours = dir.file("ours.raw"), theirs = dir.file("theirs.raw");
  formats::CreateOptions o;
  o.virtual_size = 10 << 20;
  ASSERT_TRUE(formats::find_driver("raw")->create(posix_env(), ours, o));
  run_ok("qemu-img create -f raw " + theirs + " 10M");
  EXPECT_EQ(test::read_file(ours), test::read_file(theirs));
  auto a = test::qemu_map(ours, "raw"), b = test::qemu_map(theirs, "raw");
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].start, b[i].start);
    EXPECT_EQ(a[i].data, b[i].data);
  }
  o.backing_file = "x";
  EXPECT_FALSE(formats::find_driver("raw")->create(posix_env(), ours, o));
}

TEST(RawInfo, MatchesQemuImgInfo) {
  test::TempDir dir;
  std::string img = dir.file("i.raw");
  run_ok("qemu-img create -f raw " + img + " 1000000");
  auto q = nlohmann::json::parse(run_ok("qemu-img info --output=json " + img));
  auto image = open_raw(img, Access::ReadOnly);
  ASSERT_TRUE(image);
  EXPECT_EQ(image->info().format, q["format"]);
  EXPECT_EQ(image->info().virtual_size, q["virtual-size"].get<uint64_t>());
  EXPECT_EQ(image->info().cluster_size, 0u);
  EXPECT_FALSE(q.contains("cluster-size"));
  EXPECT_EQ(image->info().granularity, 512u);
  EXPECT_TRUE(std::holds_alternative<std::monostate>(image->info().format_specific));
  EXPECT_FALSE(image->info().backing_file);
}

TEST(RawProbe, AcceptsAnythingWithTheLowestScore) {
  auto probe = formats::find_driver("raw")->probe;
  EXPECT_EQ(probe({}, "x"), 1);
  std::vector<uint8_t> qcow = {'Q', 'F', 'I', 0xfb};
  EXPECT_EQ(probe(qcow, "x"), 1);
}

TEST(RawWrite, ReadOnlyImageRefuses) {
  test::TempDir dir;
  std::string img = dir.file("r.raw");
  test::write_file(img, std::vector<uint8_t>(4096));
  auto image = open_raw(img, Access::ReadOnly);
  ASSERT_TRUE(image);
  auto t = image->prepare_write(0, 512);
  ASSERT_FALSE(t);
  EXPECT_EQ(t.error().code, EROFS);
  EXPECT_FALSE(image->map(4096, 1));  // past the end
}

TEST(RawCrash, EveryCutKeepsCommittedWrites) {
  test::CrashSetup setup;
  setup.chain = {{"disk.raw", "raw"}};
  setup.files["disk.raw"] = std::vector<uint8_t>(1 << 20, 0);
  test::run_crash_matrix(setup, test::random_workload(4, 1 << 20, 12, 8192, true));
}

}  // namespace
}  // namespace dmu::formats::raw
