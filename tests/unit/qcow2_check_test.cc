// check() counts what `qemu-img check` counts on damaged images (leaks,
// refcounts too small, references past the end of the file, misaligned
// entries, overlapping metadata, dirty lazy-refcount images), and repairs
// them so that qemu-img check finds the image clean and the guest data is
// unchanged.
#include <gtest/gtest.h>

#include "common/endian.h"
#include "tests/unit/qcow2_test_helpers.h"

namespace dmu::qcow2_test {
namespace {

using formats::Access;
using formats::CheckReport;
using formats::Repair;
using test::run_ok;
using test::shell_quote;

std::string in(const test::TempDir& dir, const std::string& cmd) {
  return "cd " + shell_quote(dir.path()) + " && " + cmd;
}

void patch_u64(const std::string& path, uint64_t offset, uint64_t value) {
  auto b = test::read_file(path);
  store_be64(b.data() + offset, value);
  test::write_file(path, b);
}
void patch_u16(const std::string& path, uint64_t offset, uint16_t value) {
  auto b = test::read_file(path);
  store_be16(b.data() + offset, value);
  test::write_file(path, b);
}

// Our report must count exactly what qemu-img check counts.
void expect_same_counts(const CheckReport& r, const nlohmann::json& q) {
  std::string ours = ::testing::PrintToString(r.messages);
  EXPECT_EQ(r.corruptions, json_u64(q, "corruptions")) << q.dump() << "\n" << ours;
  EXPECT_EQ(r.leaks, json_u64(q, "leaks")) << q.dump() << "\n" << ours;
  EXPECT_EQ(r.check_errors, json_u64(q, "check-errors")) << q.dump() << "\n" << ours;
  EXPECT_EQ(r.allocated_clusters, json_u64(q, "allocated-clusters")) << q.dump();
  EXPECT_EQ(r.total_clusters, json_u64(q, "total-clusters")) << q.dump();
  EXPECT_EQ(r.fragmented_clusters, json_u64(q, "fragmented-clusters")) << q.dump();
  EXPECT_EQ(r.compressed_clusters, json_u64(q, "compressed-clusters")) << q.dump();
  ASSERT_TRUE(r.image_end_offset.has_value());
  EXPECT_EQ(*r.image_end_offset, json_u64(q, "image-end-offset")) << q.dump();
}

CheckReport check_ro(const std::string& img) {
  auto im = open_image(posix_env(), img, Access::ReadOnly);
  EXPECT_TRUE(im) << im.error().message;
  if (!im) return {};
  auto r = (*im)->check(Repair::None);
  EXPECT_TRUE(r) << r.error().message;
  return r ? *r : CheckReport{};
}

CheckReport repair(const std::string& img, Repair how) {
  auto im = open_image(posix_env(), img, Access::ReadWrite);
  EXPECT_TRUE(im) << im.error().message;
  if (!im) return {};
  auto r = (*im)->check(how);
  EXPECT_TRUE(r) << r.error().message;
  return r ? *r : CheckReport{};
}

void expect_clean(const std::string& img) {
  auto j = qemu_check(img);
  EXPECT_EQ(json_u64(j, "corruptions") + json_u64(j, "leaks") + json_u64(j, "check-errors"), 0u)
      << j.dump();
}

// A 4 MiB image with data, zeros, compressed clusters and fragmentation.
std::string make_image(const test::TempDir& dir, const char* options = "cluster_size=64k") {
  run_ok(
      in(dir, std::string("qemu-img create -q -f qcow2 -o ") + options +
                  " c.qcow2 4M && "
                  "qemu-io -f qcow2 -c 'write -P 1 2M 256k' -c 'write -P 2 0 128k' "
                  "-c 'write -z -u 1M 64k' -c 'write -c -P 3 3M 64k' -c 'write -c -P 4 3200k 64k' "
                  "c.qcow2"));
  return dir.file("c.qcow2");
}

TEST(Qcow2Check, CleanImagesReportWhatQemuImgReports) {
  for (const char* options : {"cluster_size=64k", "cluster_size=512", "compat=0.10",
                              "extended_l2=on", "refcount_bits=1", "refcount_bits=64"}) {
    SCOPED_TRACE(options);
    test::TempDir dir;
    auto img = make_image(dir, options);
    auto r = check_ro(img);
    expect_same_counts(r, qemu_check(img));
    EXPECT_EQ(r.corruptions + r.leaks, 0u);
  }
}

TEST(Qcow2Check, LeakedClustersAreCountedAndRepairedWithRepairLeaks) {
  test::TempDir dir;
  auto img = make_image(dir);
  auto before = qemu_raw(img, dir.file("b.raw"));
  // Refcount block at 0x20000 (16-bit entries): the header and refcount
  // table clusters claim more references than they have.
  patch_u16(img, 0x20000 + 2 * 0, 2);
  patch_u16(img, 0x20000 + 2 * 1, 3);
  auto r = check_ro(img);
  expect_same_counts(r, qemu_check(img));
  EXPECT_EQ(r.leaks, 2u);
  auto fixed = repair(img, Repair::Leaks);
  EXPECT_EQ(fixed.leaks_fixed, 2u);
  EXPECT_EQ(fixed.leaks, 0u);
  expect_clean(img);
  EXPECT_EQ(qemu_raw(img, dir.file("a.raw")), before);
}

TEST(Qcow2Check, RefcountTooSmallIsACorruptionFixedOnlyByRepairAll) {
  test::TempDir dir;
  auto img = make_image(dir);
  auto before = qemu_raw(img, dir.file("b.raw"));
  // The L1 table (cluster 3) loses its refcount, a data cluster (9) claims
  // three references for its one (a leak, and a wrong COPIED flag).
  patch_u16(img, 0x20000 + 2 * 3, 0);
  patch_u16(img, 0x20000 + 2 * 9, 3);
  auto r = check_ro(img);
  expect_same_counts(r, qemu_check(img));
  EXPECT_GE(r.corruptions, 1u);
  auto leaks_only = repair(img, Repair::Leaks);
  EXPECT_GE(leaks_only.corruptions, 1u);
  auto all = repair(img, Repair::All);
  EXPECT_EQ(all.corruptions, 0u);
  EXPECT_EQ(all.leaks, 0u);
  EXPECT_GE(all.corruptions_fixed, 1u);
  expect_clean(img);
  EXPECT_EQ(qemu_raw(img, dir.file("a.raw")), before);
}

TEST(Qcow2Check, ReferencesPastTheEndOfTheFileAreCorruptions) {
  test::TempDir dir;
  auto img = make_image(dir);
  auto l2 = load_be64(test::read_file(img).data() + 0x30000) & 0x00fffffffffffe00ull;
  patch_u64(img, l2, (uint64_t(1) << 63) | (64ull << 20));  // guest cluster 0 -> 64 MiB
  auto r = check_ro(img);
  expect_same_counts(r, qemu_check(img));
  EXPECT_GE(r.corruptions, 2u);
  EXPECT_EQ(r.leaks, 1u);
}

TEST(Qcow2Check, MisalignedEntriesAreCorruptions) {
  test::TempDir dir;
  auto img = make_image(dir);
  auto l2 = load_be64(test::read_file(img).data() + 0x30000) & 0x00fffffffffffe00ull;
  auto entry = load_be64(test::read_file(img).data() + l2);
  patch_u64(img, l2, entry + 0x200);  // data cluster 0 now starts 512 bytes in
  auto r = check_ro(img);
  expect_same_counts(r, qemu_check(img));
  EXPECT_GE(r.corruptions, 1u);
  // Reading the misaligned cluster is refused with a message naming the file.
  auto im = open_image(posix_env(), img, Access::ReadOnly);
  ASSERT_TRUE(im);
  auto m = (*im)->map(0, 4096);
  ASSERT_FALSE(m);
  EXPECT_NE(m.error().message.find(img), std::string::npos);
  EXPECT_NE(m.error().message.find("unaligned"), std::string::npos);
}

TEST(Qcow2Check, RefcountBlockOverlappingOtherMetadataIsRebuilt) {
  test::TempDir dir;
  auto img = make_image(dir);
  auto before = qemu_raw(img, dir.file("b.raw"));
  // A second refcount table entry pointing at the L1 table.
  patch_u64(img, 0x10000 + 8, 0x30000);
  auto r = check_ro(img);
  expect_same_counts(r, qemu_check(img));
  EXPECT_GE(r.corruptions, 1u);
  auto all = repair(img, Repair::All);
  EXPECT_EQ(all.corruptions, 0u);
  EXPECT_EQ(all.leaks, 0u);
  expect_clean(img);
  EXPECT_EQ(qemu_raw(img, dir.file("a.raw")), before);
  // The repaired image takes writes.
  auto im = open_image(posix_env(), img, Access::ReadWrite);
  ASSERT_TRUE(im) << im.error().message;
  write_guest(**im, 5000, pattern(70000, 9));
  im->reset();
  expect_clean(img);
}

TEST(Qcow2Check, DirtyLazyRefcountImageIsReportedThenRepairedOnReadWriteOpen) {
  test::TempDir dir;
  run_ok(in(dir, "qemu-img create -q -f qcow2 -o lazy_refcounts=on d.qcow2 4M"));
  // Killed while dirty: the refcounts were never written.
  test::run(in(dir, "qemu-io -f qcow2 -c 'write -P 5 0 1M' -c 'sigraise 9' d.qcow2"));
  const auto img = dir.file("d.qcow2");
  auto before = qemu_raw(img, dir.file("b.raw"));
  {
    auto ro = open_image(posix_env(), img, Access::ReadOnly);
    ASSERT_TRUE(ro) << ro.error().message;
    EXPECT_TRUE((*ro)->info().dirty);
    auto r = (*ro)->check(Repair::None);
    ASSERT_TRUE(r);
    expect_same_counts(*r, qemu_check(img));
    EXPECT_GT(r->corruptions, 0u);
  }
  {
    auto rw = open_image(posix_env(), img, Access::ReadWrite);
    ASSERT_TRUE(rw) << rw.error().message;
    EXPECT_FALSE((*rw)->info().dirty);
    write_guest(**rw, 3 << 20, pattern(4096, 6));
  }
  expect_clean(img);
  before.resize(3 << 20);
  auto after = qemu_raw(img, dir.file("a.raw"));
  EXPECT_EQ(std::vector<uint8_t>(after.begin(), after.begin() + (3 << 20)), before);
  EXPECT_EQ(after[3 << 20], 6);
  auto j = qemu_json(in(dir, "qemu-img info --output=json d.qcow2"));
  EXPECT_FALSE(j["dirty-flag"].get<bool>());
}

TEST(Qcow2Check, CorruptBitAllowsOnlyRepairUntilCheckClearsIt) {
  test::TempDir dir;
  auto img = make_image(dir);
  patch_u64(img, 72, 2);  // incompatible_features: corrupt
  {
    auto rw = open_image(posix_env(), img, Access::ReadWrite);
    ASSERT_TRUE(rw) << rw.error().message;
    auto t = (*rw)->prepare_write(0, 512);
    ASSERT_FALSE(t);
    EXPECT_EQ(t.error().code, EROFS);
    EXPECT_NE(t.error().message.find("corrupt"), std::string::npos);
    EXPECT_TRUE(std::get<dmu::formats::Qcow2Specific>((*rw)->info().format_specific).corrupt);
    auto r = (*rw)->check(Repair::All);
    ASSERT_TRUE(r);
    EXPECT_FALSE(std::get<dmu::formats::Qcow2Specific>((*rw)->info().format_specific).corrupt);
    write_guest(**rw, 0, pattern(512, 1));
  }
  auto j = qemu_json("qemu-img info --output=json " + shell_quote(img));
  EXPECT_EQ(j["format-specific"]["data"]["corrupt"], false);
  expect_clean(img);
}

TEST(Qcow2Check, SnapshotAndBitmapClustersAreCounted) {
  test::TempDir dir;
  auto img = make_image(dir);
  run_ok(in(dir,
            "qemu-img snapshot -c s1 c.qcow2 && qemu-io -f qcow2 -c 'write -P 7 0 1M' c.qcow2 "
            "&& qemu-img snapshot -c s2 c.qcow2 && qemu-img bitmap --add c.qcow2 b0"));
  auto r = check_ro(img);
  expect_same_counts(r, qemu_check(img));
  EXPECT_EQ(r.corruptions + r.leaks, 0u);
}

}  // namespace
}  // namespace dmu::qcow2_test
