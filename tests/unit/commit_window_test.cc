// The daemon's commit window (daemon/served_device.h): while an image commit
// waits in a sync, the request loop reads through the same engine.  Here the
// reads run at every sync point of every commit of a random workload, with
// caches small enough that they load and evict tables there: they must see
// every completed write, and the commits must still leave an image QEMU
// reads exactly so.  A read path that saw half-updated state at a sync
// point, or disturbed what the commit goes on to write, fails one or the
// other.
#include <gtest/gtest.h>

#include <thread>

#include "fileio/file.h"
#include "fileio/sync_hook.h"
#include "formats/qcow2/qcow2_image.h"
#include "tests/support/test_support.h"
#include "tests/unit/crash_harness.h"

namespace dmu::test {
namespace {

constexpr uint64_t kSize = 8 << 20;

struct Windows {
  int opened = 0;      // syncs the hook saw
  int mismatched = 0;  // reads in them that did not match the model
  std::string first_error;
};

// One guest write through the write protocol, as the daemon's kernel does
// it, a fresh target filled from the model (which already holds the write:
// syncs, where the windows read, come only from the explicit commits).
Result<void> write_guest(formats::Image& top, std::vector<uint8_t>& model, uint64_t offset,
                         const std::vector<uint8_t>& data) {
  std::copy(data.begin(), data.end(), model.begin() + offset);
  return write_chain({&top}, offset, data, [&model](uint64_t at, std::span<uint8_t> buf) {
    const uint64_t n = at < model.size() ? std::min<uint64_t>(buf.size(), model.size() - at) : 0;
    std::copy_n(model.begin() + at, n, buf.begin());
    std::fill(buf.begin() + n, buf.end(), 0);  // past the disk's end, in its last cluster
    return Result<void>{};
  });
}

// Zeros the granularity-aligned part of [offset, offset + length) with
// write_zeroes (releasing space), or with zero bytes where the format
// cannot say zeros there.
Result<void> zero_guest(formats::Image& top, std::vector<uint8_t>& model, uint64_t offset,
                        uint64_t length) {
  const uint64_t g = top.info().granularity;
  const uint64_t first = (offset + g - 1) / g * g, last = (offset + length) / g * g;
  if (last <= first) return {};
  auto r = top.write_zeroes(first, last - first, true);
  if (!r && r.error().code != ENOTSUP) return r;
  if (!r) return write_guest(top, model, first, std::vector<uint8_t>(last - first, 0));
  std::fill(model.begin() + first, model.begin() + last, 0);
  return {};
}

// Runs ops on chain, with reads of the whole disk inside every sync that
// the explicit commits make; model follows the writes.
void run_with_windows(const std::vector<CrashOp>& ops, const std::vector<formats::Image*>& chain,
                      std::vector<uint8_t>& model, Windows& w) {
  formats::Image& top = *chain.front();
  for (const CrashOp& op : ops) {
    Result<void> r;
    if (op.kind == CrashOp::Write)
      r = write_guest(top, model, op.offset, std::vector<uint8_t>(op.length, op.value));
    else if (op.kind == CrashOp::Zero)
      r = zero_guest(top, model, op.offset, op.length);
    ASSERT_TRUE(r) << r.error().message;
    if (op.kind != CrashOp::Commit) continue;
    SyncHook hook(
        [&] {
          ++w.opened;
          auto got = read_all(chain);
          if (got && *got == model) return;
          if (w.mismatched++ == 0) w.first_error = got ? "different bytes" : got.error().message;
        },
        [] {});
    r = top.commit();
    ASSERT_TRUE(r) << r.error().message;
  }
}

TEST(SyncHook, RunsAroundEachSyncOfItsOwnThreadOnly) {
  TempDir dir;
  auto f = posix_env().open(dir.file("f"), OpenMode::CreateTruncate);
  ASSERT_TRUE(f) << f.error().message;
  std::vector<std::string> seen;
  {
    SyncHook hook(
        [&] {
          seen.push_back("before");
          // A sync inside the hook runs plain, not into a second window.
          ASSERT_TRUE((*f)->sync());
        },
        [&] { seen.push_back("after"); });
    ASSERT_TRUE((*f)->sync());
    std::thread other([&] { ASSERT_TRUE((*f)->sync()); });
    other.join();
    ASSERT_TRUE((*f)->sync());
  }
  ASSERT_TRUE((*f)->sync());  // the hook is gone
  EXPECT_EQ(seen, (std::vector<std::string>{"before", "after", "before", "after"}));
}

struct Case {
  const char* name;
  const char* format;
  const char* create;  // qemu-img create options after -f FORMAT
  bool backing = false;
  friend void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }
};

class CommitWindow : public testing::TestWithParam<Case> {};

TEST_P(CommitWindow, ReadsAtEverySyncPointSeeEveryWriteAndChangeNothing) {
  const Case& c = GetParam();
  TempDir dir;
  const std::string img = dir.file("top"), base = dir.file("base.raw");
  std::vector<uint8_t> model(kSize, 0);
  std::string cmd = "qemu-img create -q -f " + std::string(c.format) + " " + c.create;
  if (c.backing) {
    model = random_bytes(kSize, 7);
    write_file(base, model);
    cmd += " -b " + shell_quote(base) + " -F raw";
  }
  run_ok(cmd + " " + shell_quote(img) + " " + std::to_string(kSize));

  std::unique_ptr<formats::Image> top, below;
  if (std::string(c.format) == "qcow2") {
    formats::qcow2::OpenOptions tiny;  // a few tables: reads in a window evict
    tiny.l2_cache_bytes = 4 * 4096;
    tiny.refcount_cache_bytes = 4 * 4096;
    auto im = formats::qcow2::open(posix_env(), img, formats::Access::ReadWrite, tiny);
    ASSERT_TRUE(im) << im.error().message;
    top = std::move(*im);
  } else {
    auto im = formats::find_driver(c.format)->open(posix_env(), img, formats::Access::ReadWrite);
    ASSERT_TRUE(im) << im.error().message;
    top = std::move(*im);
  }
  std::vector<formats::Image*> chain{top.get()};
  if (c.backing) {
    auto im = formats::find_driver("raw")->open(posix_env(), base, formats::Access::ReadOnly);
    ASSERT_TRUE(im) << im.error().message;
    below = std::move(*im);
    chain.push_back(below.get());
  }

  Windows w;
  for (uint32_t round = 0; round < 3; ++round)
    run_with_windows(random_workload(11 + round, kSize, 60, 96 << 10, true), chain, model, w);
  EXPECT_GT(w.opened, 3) << "the commits made no syncs the hook saw: nothing was tested";
  EXPECT_EQ(w.mismatched, 0) << "first: " << w.first_error;
  top.reset();
  below.reset();
  EXPECT_TRUE(qemu_export(img, c.format, dir) == model) << "QEMU reads something else";
}

INSTANTIATE_TEST_SUITE_P(
    Engines, CommitWindow,
    testing::Values(Case{"qcow2_4k", "qcow2", "-o cluster_size=4k"},
                    Case{"qcow2_backing", "qcow2", "-o cluster_size=64k", true},
                    Case{"qcow2_v2_512", "qcow2", "-o compat=0.10,cluster_size=512"},
                    Case{"qcow", "qcow", ""}, Case{"qcow_backing", "qcow", "", true},
                    Case{"vmdk", "vmdk", "-o subformat=monolithicSparse"},
                    Case{"vmdk_2gb", "vmdk", "-o subformat=twoGbMaxExtentSparse"},
                    Case{"raw", "raw", ""}),
    [](const testing::TestParamInfo<Case>& i) { return std::string(i.param.name); });

}  // namespace
}  // namespace dmu::test
