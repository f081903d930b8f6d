// Image::adopt_write in every engine: a process prepares writes, writes the
// data and dies before committing; the next one reopens the image, adopts
// the same ranges, reports some of them done and some failed, and commits.
// qemu-img check must find the image clean (leaks only where a write
// failed), and qemu-io must read the adopted data where the write succeeded
// and the old contents where it failed.  Adoptions that contradict the image
// (metadata, another adoption's host range, misalignment) are refused with
// EINVAL and change nothing.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "formats/image.h"
#include "tests/unit/qcow2_test_helpers.h"

namespace dmu::formats::qcow2 {
namespace {

using formats::Access;
using formats::Image;
using formats::WriteTarget;
using qcow2_test::in_dir_of;
using qcow2_test::json_u64;
using qcow2_test::qemu_check;
using qcow2_test::qemu_json;
using qcow2_test::qemu_raw;

constexpr uint64_t K = 1024;
constexpr uint64_t kSize = 4 << 20;

std::unique_ptr<Image> open(const std::string& fmt, const std::string& path) {
  auto img = formats::find_driver(fmt)->open(posix_env(), path, Access::ReadWrite);
  EXPECT_TRUE(img) << img.error().message;
  return img ? std::move(*img) : nullptr;
}

// A killed process runs no destructors (which would commit): its image
// object is leaked, as its memory would be.
void die(std::unique_ptr<Image> image) {
  (void)image.release();
}

void qemu_io(const std::string& fmt, const std::string& path, const std::string& cmd) {
  auto out = test::run_ok(in_dir_of(
      path, "qemu-io -f " + fmt + " -c " + test::shell_quote(cmd) + " " + test::shell_quote(path)));
  EXPECT_EQ(out.find("fail"), std::string::npos) << cmd << ": " << out;
}

// One guest write of the dead process.
struct Write {
  uint64_t offset, length;
  uint8_t value;
  bool ok;  // what the restarted process reports for it
};

// The dead process's side: prepares each write, fills the whole of a fresh
// target (old contents from `expected`, the new value where the write
// lands; an in-place target gets only the write, as the protocol says) and
// stops there.  Returns the targets, in order.
std::vector<WriteTarget> prepare_and_fill(Image& im, const std::vector<Write>& writes,
                                          const std::vector<uint8_t>& expected) {
  std::vector<WriteTarget> targets;
  for (const Write& w : writes) {
    auto t = im.prepare_write(w.offset, w.length);
    EXPECT_TRUE(t) << t.error().message;
    if (!t) return targets;
    EXPECT_LE(t->offset, w.offset);
    EXPECT_GE(t->offset + t->length, w.offset + w.length);
    if (!t->fresh) {
      std::vector<uint8_t> bytes(w.length, w.value);
      EXPECT_TRUE(
          im.data_files().at(t->file)->write(t->host_offset + (w.offset - t->offset), bytes));
      targets.push_back(*t);
      continue;
    }
    std::vector<uint8_t> bytes(expected.begin() + long(t->offset),
                               expected.begin() + long(t->offset + t->length));
    std::memset(bytes.data() + (w.offset - t->offset), w.value, w.length);
    EXPECT_TRUE(im.data_files().at(t->file)->write(t->host_offset, bytes));
    targets.push_back(*t);
  }
  return targets;
}

// The restarted process's side: adopts every target, then reports each.
void adopt_and_finish(Image& im, const std::vector<Write>& writes,
                      const std::vector<WriteTarget>& targets) {
  std::vector<uint64_t> tokens;
  for (const WriteTarget& t : targets) {
    auto token = im.adopt_write(t.offset, t.length, t.file, t.host_offset);
    ASSERT_TRUE(token) << token.error().message;
    tokens.push_back(*token);
  }
  for (size_t i = 0; i < tokens.size(); ++i) {
    auto d = im.write_done(tokens[i], writes[i].ok);
    ASSERT_TRUE(d) << d.error().message;
  }
  auto c = im.commit();
  ASSERT_TRUE(c) << c.error().message;
}

void apply_writes(std::vector<uint8_t>& expected, const std::vector<Write>& writes) {
  for (const Write& w : writes)
    if (w.ok) std::memset(expected.data() + w.offset, w.value, w.length);
}

struct Scenario {
  std::string fmt;
  std::string create_options;  // -o for qemu-img create
  bool backing = true;
  bool qemu_checks = true;  // qemu-img check knows the format
  std::vector<Write> writes;
};

class Restart {
 public:
  explicit Restart(const Scenario& s) : s_(s) {}

  // base.raw (patterned) under top.<fmt>, top holding committed data in its
  // first two clusters-worth of guest space (for in-place and COW writes).
  void create() {
    std::string opts = s_.create_options;
    if (s_.backing) {
      test::run_ok("qemu-img create -q -f " + base_fmt_ + " " + test::shell_quote(base_) + " " +
                   std::to_string(kSize));
      qemu_io(base_fmt_, base_, "write -P 0x5b 0 " + std::to_string(kSize));
      opts += std::string(opts.empty() ? "" : ",") + "backing_file=" + base_ +
              ",backing_fmt=" + base_fmt_;
    }
    test::run_ok("qemu-img create -q -f " + s_.fmt + (opts.empty() ? "" : " -o " + opts) + " " +
                 test::shell_quote(top_) + " " + std::to_string(kSize));
    qemu_io(s_.fmt, top_, "write -P 0x11 0 128k");
    expected_.assign(kSize, s_.backing ? 0x5b : 0);
    std::memset(expected_.data(), 0x11, 128 * K);
  }

  // Compressed clusters under the writes (qemu-io write -c).
  void write_compressed(uint64_t offset, uint64_t length, uint8_t value) {
    qemu_io(s_.fmt, top_,
            "write -c -P " + std::to_string(value) + " " + std::to_string(offset) + " " +
                std::to_string(length));
    std::memset(expected_.data() + offset, value, length);
  }

  void crash_and_restart() {
    auto old = open(s_.fmt, top_);
    ASSERT_TRUE(old);
    auto targets = prepare_and_fill(*old, s_.writes, expected_);
    ASSERT_EQ(targets.size(), s_.writes.size());
    die(std::move(old));
    auto fresh = open(s_.fmt, top_);
    ASSERT_TRUE(fresh);
    adopt_and_finish(*fresh, s_.writes, targets);
    if (!s_.qemu_checks && s_.fmt != "raw") {  // raw has nothing to check
      auto r = fresh->check(formats::Repair::None);
      ASSERT_TRUE(r) << r.error().message;
      EXPECT_EQ(r->corruptions, 0u) << testing::PrintToString(r->messages);
    }
    fresh.reset();
    apply_writes(expected_, s_.writes);
  }

  void verify() {
    bool any_failed = false;
    for (const Write& w : s_.writes) any_failed |= !w.ok;
    if (s_.qemu_checks) {
      auto j = qemu_check(top_);
      EXPECT_EQ(json_u64(j, "corruptions"), 0u) << j.dump();
      EXPECT_EQ(json_u64(j, "check-errors"), 0u) << j.dump();
      if (!any_failed) {
        EXPECT_EQ(json_u64(j, "leaks"), 0u) << j.dump();
      }
    }
    for (const Write& w : s_.writes) {
      const uint8_t v = w.ok ? w.value : expected_[w.offset];
      qemu_io(s_.fmt, top_,
              "read -P " + std::to_string(v) + " " + std::to_string(w.offset) + " " +
                  std::to_string(w.length));
    }
    auto all = qemu_raw(top_, dir_.file("export.raw"));
    EXPECT_TRUE(all == expected_) << "the guest disk differs from the expected contents";
  }

 private:
  Scenario s_;
  test::TempDir dir_;
  // vmdk takes only vmdk parents.
  std::string base_fmt_ = s_.fmt == "vmdk" ? "vmdk" : "raw";
  std::string base_ = dir_.file("base." + base_fmt_);
  std::string top_ = dir_.file("top." + s_.fmt);
  std::vector<uint8_t> expected_;
};

void run(const Scenario& s) {
  Restart r(s);
  r.create();
  r.crash_and_restart();
  r.verify();
}

// New clusters, a partial cluster over the backing file, writes into the
// committed clusters (in place, or copied where the engine reallocates),
// some reported done and some failed.
std::vector<Write> mixed_writes(uint64_t unit) {
  return {
      {1 << 20, unit, 0xa1, true},                   // a new cluster
      {(1 << 20) + 4 * unit, unit, 0xa2, false},     // a new cluster, failed
      {(2 << 20) + unit / 2, unit / 4, 0xa3, true},  // part of a cluster over the backing
      {(3 << 20) + unit / 2, unit / 4, 0xa4, false},
      {0, 4 * K, 0xa5, true},  // committed data, in place
  };
}

TEST(AdoptWrite, Qcow2CrashRestart) {
  run({"qcow2", "cluster_size=65536", true, true, mixed_writes(64 * K)});
}

TEST(AdoptWrite, Qcow2SmallRefcountsAndClusters) {
  run({"qcow2", "cluster_size=4096,refcount_bits=1", true, true, mixed_writes(4 * K)});
}

TEST(AdoptWrite, Qcow2ExtendedL2Subclusters) {
  // 64 KiB clusters of 32 2 KiB subclusters: partial writes allocate whole
  // clusters but fill only their subclusters.
  run({"qcow2", "cluster_size=65536,extended_l2=on", true, true, mixed_writes(64 * K)});
}

TEST(AdoptWrite, Qcow2CompressedClusterIsReplacedWhole) {
  Scenario s{"qcow2",
             "cluster_size=65536",
             false,
             true,
             {{(1 << 20) + 4 * K, 4 * K, 0xc1, true}, {(1 << 20) + 128 * K, 4 * K, 0xc2, false}}};
  Restart r(s);
  r.create();
  r.write_compressed(1 << 20, 192 * K, 0x33);
  r.crash_and_restart();
  r.verify();
}

TEST(AdoptWrite, Qcow2AllocationMadeDurableByACommitOfOtherWrites) {
  // The dead process committed other writes after preparing ours: our
  // cluster's refcount is on disk, but nothing refers to it.
  test::TempDir dir;
  const std::string top = dir.file("t.qcow2");
  test::run_ok("qemu-img create -q -f qcow2 " + test::shell_quote(top) + " 4M");
  auto old = open("qcow2", top);
  std::vector<uint8_t> zeros(kSize, 0);
  std::vector<Write> first = {{1 << 20, 64 * K, 0xd1, true}};
  auto t1 = prepare_and_fill(*old, first, zeros);
  std::vector<Write> other = {{2 << 20, 64 * K, 0xd2, true}};
  auto t2 = prepare_and_fill(*old, other, zeros);
  ASSERT_TRUE(old->write_done(t2[0].token, true));
  ASSERT_TRUE(old->commit());
  die(std::move(old));
  auto fresh = open("qcow2", top);
  adopt_and_finish(*fresh, first, t1);
  fresh.reset();
  auto j = qemu_check(top);
  EXPECT_EQ(json_u64(j, "corruptions"), 0u) << j.dump();
  EXPECT_EQ(json_u64(j, "leaks"), 0u) << j.dump();
  qemu_io("qcow2", top, "read -P 0xd1 1M 64k");
  qemu_io("qcow2", top, "read -P 0xd2 2M 64k");
}

TEST(AdoptWrite, Qcow2TablesTheAdoptionsNeedNeverLandOnALaterAdoption) {
  // 4 KiB clusters: an L2 table covers 2 MiB.  The dead process wrote at
  // 8 KiB (an existing table; its data took the first free cluster) and at
  // 3 MiB (a new table).  Adopted in the other order, a table allocated for
  // the 3 MiB adoption at once would take that first free cluster.
  test::TempDir dir;
  const std::string top = dir.file("t.qcow2");
  test::run_ok("qemu-img create -q -f qcow2 -o cluster_size=4096 " + test::shell_quote(top) +
               " 4M");
  qemu_io("qcow2", top, "write -P 0x11 0 4k");
  std::vector<uint8_t> expected(kSize, 0);
  std::memset(expected.data(), 0x11, 4 * K);
  std::vector<Write> writes = {{8 * K, 4 * K, 0xb1, true}, {3 << 20, 4 * K, 0xb2, true}};
  auto old = open("qcow2", top);
  auto targets = prepare_and_fill(*old, writes, expected);
  die(std::move(old));
  std::reverse(writes.begin(), writes.end());
  std::reverse(targets.begin(), targets.end());
  auto fresh = open("qcow2", top);
  adopt_and_finish(*fresh, writes, targets);
  fresh.reset();
  auto j = qemu_check(top);
  EXPECT_EQ(json_u64(j, "corruptions"), 0u) << j.dump();
  EXPECT_EQ(json_u64(j, "leaks"), 0u) << j.dump();
  qemu_io("qcow2", top, "read -P 0xb1 8k 4k");
  qemu_io("qcow2", top, "read -P 0xb2 3M 4k");
  qemu_io("qcow2", top, "read -P 0x11 0 4k");
}

TEST(AdoptWrite, Qcow2SubclustersFilledInAClusterOfOurs) {
  // The cluster at 1 MiB has its first two 2 KiB subclusters allocated; the
  // dead process filled another one in place (a fresh target, no new host).
  test::TempDir dir;
  const std::string top = dir.file("t.qcow2");
  test::run_ok("qemu-img create -q -f qcow2 -o cluster_size=65536,extended_l2=on " +
               test::shell_quote(top) + " 4M");
  qemu_io("qcow2", top, "write -P 0x11 1M 4k");
  std::vector<uint8_t> expected(kSize, 0);
  std::memset(expected.data() + (1 << 20), 0x11, 4 * K);
  std::vector<Write> writes = {{(1 << 20) + 32 * K, 2 * K, 0xb3, true},
                               {(1 << 20) + 40 * K, 2 * K, 0xb4, false}};
  auto old = open("qcow2", top);
  auto targets = prepare_and_fill(*old, writes, expected);
  ASSERT_EQ(targets.size(), 2u);
  EXPECT_TRUE(targets[0].fresh);
  die(std::move(old));
  auto fresh = open("qcow2", top);
  adopt_and_finish(*fresh, writes, targets);
  fresh.reset();
  auto j = qemu_check(top);
  EXPECT_EQ(json_u64(j, "corruptions"), 0u) << j.dump();
  EXPECT_EQ(json_u64(j, "leaks"), 0u) << j.dump();
  qemu_io("qcow2", top, "read -P 0x11 1M 4k");
  qemu_io("qcow2", top, "read -P 0xb3 1056k 2k");
  qemu_io("qcow2", top, "read -P 0 1064k 2k");
}

// A process that committed (SIGTERM) before the kernel saw a COMMITTED
// leaves records of allocations the metadata already holds: each is adopted
// as the in-place write it now is.
TEST(AdoptWrite, RecordsTheLastCommitPublishedAreAdoptedInPlace) {
  for (const char* fmt : {"qcow2", "qcow", "vmdk"}) {
    SCOPED_TRACE(fmt);
    test::TempDir dir;
    const std::string top = dir.file(std::string("t.") + fmt);
    test::run_ok(std::string("qemu-img create -q -f ") + fmt + " " + test::shell_quote(top) +
                 " 4M");
    std::vector<uint8_t> zeros(kSize, 0);
    std::vector<Write> writes = {{1 << 20, 64 * K, 0xb5, true}};
    auto old = open(fmt, top);
    auto targets = prepare_and_fill(*old, writes, zeros);
    ASSERT_EQ(targets.size(), 1u);
    ASSERT_TRUE(old->write_done(targets[0].token, true));
    ASSERT_TRUE(old->commit());
    die(std::move(old));
    auto fresh = open(fmt, top);
    adopt_and_finish(*fresh, writes, targets);
    fresh.reset();
    if (std::string(fmt) != "qcow") {
      auto j = qemu_check(top);
      EXPECT_EQ(json_u64(j, "corruptions"), 0u) << j.dump();
      EXPECT_EQ(json_u64(j, "leaks"), 0u) << j.dump();
    }
    qemu_io(fmt, top, "read -P 0xb5 1M 64k");
  }
}

TEST(AdoptWrite, QcowV1CrashRestart) {
  // qemu-img has no check for qcow v1: the engine's own check instead.
  run({"qcow", "", true, false, mixed_writes(4 * K)});
}

TEST(AdoptWrite, VmdkSparseCrashRestart) {
  run({"vmdk", "", true, true, mixed_writes(64 * K)});
}

TEST(AdoptWrite, VmdkFlatCrashRestart) {
  run({"vmdk",
       "subformat=monolithicFlat",
       false,
       true,
       {{1 << 20, 64 * K, 0xe1, true}, {0, 4 * K, 0xe2, true}}});
}

TEST(AdoptWrite, RawCrashRestart) {
  // Every raw write is in place: a failed one may have landed, so all succeed.
  run({"raw", "", false, false, {{1 << 20, 64 * K, 0xf1, true}, {0, 4 * K, 0xf2, true}}});
}

// --- refusals ---

class Refusals : public testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    fmt_ = GetParam();
    path_ = dir_.file("r." + fmt_);
    test::run_ok("qemu-img create -q -f " + fmt_ + " " + test::shell_quote(path_) + " 4M");
    qemu_io(fmt_, path_, "write -P 0x11 0 128k");
    before_ = test::read_file(path_);
    image_ = open(fmt_, path_);
    ASSERT_TRUE(image_);
    unit_ = image_->info().cluster_size;
  }
  void expect_refused(uint64_t offset, uint64_t length, uint64_t host, int code = EINVAL) {
    auto r = image_->adopt_write(offset, length, 0, host);
    ASSERT_FALSE(r) << "adopted [" << offset << ", +" << length << ") at " << host;
    EXPECT_EQ(r.error().code, code) << r.error().message;
    EXPECT_NE(r.error().message.find(path_), std::string::npos) << r.error().message;
  }
  void expect_unchanged() {
    image_.reset();
    EXPECT_TRUE(test::read_file(path_) == before_) << "a refused adoption changed the file";
  }
  // A host offset nothing uses: past the end of the file.
  uint64_t free_host() const { return (before_.size() / unit_ + 16) * unit_; }

  std::string fmt_, path_;
  test::TempDir dir_;
  std::vector<uint8_t> before_;
  std::unique_ptr<Image> image_;
  uint64_t unit_ = 0;
};

TEST_P(Refusals, HostRangeOverlappingMetadata) {
  expect_refused(1 << 20, unit_, 0);  // the header
  expect_unchanged();
}

TEST_P(Refusals, HostRangeOfAnotherGuestRange) {
  auto m = image_->map(0, unit_);
  ASSERT_TRUE(m && m->kind == formats::MapKind::Data);
  expect_refused(1 << 20, unit_, m->host_offset);
  expect_unchanged();
}

TEST_P(Refusals, TwoAdoptionsAtOneHostRange) {
  ASSERT_TRUE(image_->adopt_write(1 << 20, unit_, 0, free_host()));
  expect_refused(2 << 20, unit_, free_host());
}

TEST_P(Refusals, MisalignedRanges) {
  expect_refused((1 << 20) + 512, unit_, free_host());  // guest offset inside a unit
  expect_refused(1 << 20, unit_ - 512, free_host());    // guest end inside a unit
  if (fmt_ != "vmdk") expect_refused(1 << 20, unit_, free_host() + 512);  // host inside a cluster
  expect_unchanged();
}

TEST_P(Refusals, AfterAnotherChangeTheImageIsBusy) {
  auto t = image_->prepare_write(1 << 20, 512);
  ASSERT_TRUE(t);
  expect_refused(2 << 20, unit_, free_host() + 64 * unit_, EBUSY);
  ASSERT_TRUE(image_->write_done(t->token, false));
}

TEST_P(Refusals, HostPastTheEndOfTheFileIsAdoptedAndReleasedOnFailure) {
  auto token = image_->adopt_write(1 << 20, unit_, 0, free_host());
  ASSERT_TRUE(token) << token.error().message;
  ASSERT_TRUE(image_->write_done(*token, false));
  ASSERT_TRUE(image_->commit());
  image_.reset();
  auto j = qemu_check(path_);
  EXPECT_EQ(json_u64(j, "corruptions"), 0u) << j.dump();
  qemu_io(fmt_, path_, "read -P 0 1M 64k");
}

INSTANTIATE_TEST_SUITE_P(Engines, Refusals, testing::Values("qcow2", "vmdk"));

TEST(AdoptWriteQcow, RefusesMetadataAndTwoAdoptionsAtOneHostRange) {
  test::TempDir dir;
  const std::string path = dir.file("q.qcow");
  test::run_ok("qemu-img create -q -f qcow " + test::shell_quote(path) + " 4M");
  qemu_io("qcow", path, "write -P 0x11 0 16k");
  const auto before = test::read_file(path);
  auto im = open("qcow", path);
  auto m = im->map(0, 4 * K);
  ASSERT_TRUE(m);
  for (uint64_t host : {uint64_t(0), m->host_offset}) {
    auto r = im->adopt_write(1 << 20, 4 * K, 0, host);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, EINVAL) << r.error().message;
  }
  const uint64_t free_host = (before.size() / (4 * K) + 4) * 4 * K;
  ASSERT_TRUE(im->adopt_write(1 << 20, 4 * K, 0, free_host));
  auto r = im->adopt_write(2 << 20, 4 * K, 0, free_host);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EINVAL) << r.error().message;
  r = im->adopt_write(2 << 20, 4 * K, 0, free_host + 512);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EINVAL) << r.error().message;
}

TEST(AdoptWriteRaw, RefusesAnythingButTheIdentityMapping) {
  test::TempDir dir;
  const std::string path = dir.file("r.raw");
  test::run_ok("qemu-img create -q -f raw " + test::shell_quote(path) + " 4M");
  auto im = open("raw", path);
  EXPECT_FALSE(im->adopt_write(4096, 4096, 0, 8192));
  EXPECT_FALSE(im->adopt_write(4096, 100, 0, 4096));
  EXPECT_FALSE(im->adopt_write(4096, 4096, 1, 4096));
  EXPECT_TRUE(im->adopt_write(4096, 4096, 0, 4096));
}

}  // namespace
}  // namespace dmu::formats::qcow2
