// The map service on qcow2 images whose clusters are smaller than the 4 KiB
// block (cluster_size 512, 1k, 2k, legal and written by QEMU): the dm target
// remaps a block as a whole, so the engine keeps every block it writes
// contiguous, moving a block whose clusters QEMU scattered (or that are not
// all allocated) to a fresh run.  Writes must land as qemu-io's would, the
// image stay clean for qemu-img check, and a restarted daemon must adopt a
// moved block.  Extended-L2 subclusters (2 KiB in 64 KiB clusters) are the
// other unit below the block.
#include <gtest/gtest.h>

#include "formats/chain.h"
#include "mapper/inprocess_transport.h"
#include "mapper/map_service.h"
#include "tests/unit/qcow2_test_helpers.h"

namespace dmu::mapper {
namespace {

using qcow2_test::in_dir_of;
using qcow2_test::json_u64;
using qcow2_test::qemu_check;

constexpr uint64_t kBlock = 4096;  // the protocol's smallest block

struct Daemon {
  std::unique_ptr<formats::Chain> chain;
  std::unique_ptr<MapService> service;

  void start(const std::string& top, const std::string& scratch) {
    formats::ChainOptions o;
    o.format = "qcow2";
    o.access = formats::Access::ReadWrite;
    auto c = formats::Chain::open(posix_env(), top, o);
    ASSERT_TRUE(c) << c.error().message;
    chain = std::move(*c);
    ASSERT_EQ(choose_block_size(*chain), kBlock);
    auto store = ScratchStore::create(posix_env(), scratch, 1 << 20, kBlock, false);
    ASSERT_TRUE(store) << store.error().message;
    auto s = MapService::create(*chain, std::move(*store), {});
    ASSERT_TRUE(s) << s.error().message;
    service = std::move(*s);
  }
  void die() {  // a killed daemon runs no destructors (the image's would commit)
    (void)service.release();
    (void)chain.release();
  }
};

class MapServiceSmallClusters : public testing::TestWithParam<const char*> {
 protected:
  void expect_reads(const std::string& cmd) {
    auto out = test::run_ok(in_dir_of(
        top_, "qemu-io -f qcow2 -c " + test::shell_quote(cmd) + " " + test::shell_quote(top_)));
    EXPECT_EQ(out.find("fail"), std::string::npos) << cmd << ": " << out;
  }
  void expect_clean() {
    auto j = qemu_check(top_);
    EXPECT_EQ(json_u64(j, "corruptions"), 0u) << j.dump();
    EXPECT_EQ(json_u64(j, "check-errors"), 0u) << j.dump();
  }
  // QEMU writes 512-byte pieces out of order: block 0's clusters end up
  // apart in the file, and block 1 only partly allocated.
  void make_scattered_image(const char* cluster_size) {
    test::run_ok("qemu-img create -q -f qcow2 -o cluster_size=" + std::string(cluster_size) + " " +
                 test::shell_quote(top_) + " 1M");
    test::run_ok(
        "qemu-io -f qcow2 -c 'write -P 1 3584 512' -c 'write -P 9 6144 512' "
        "-c 'write -P 2 0 512' -c 'write -P 3 1024 1024' " +
        test::shell_quote(top_) + " >/dev/null");
  }

  test::TempDir dir_;
  std::string top_ = dir_.file("top.qcow2");
};

TEST_P(MapServiceSmallClusters, WritesLandAsQemuIosAndTheImageStaysClean) {
  make_scattered_image(GetParam());
  {
    Daemon d;
    d.start(top_, dir_.file("scratch"));
    InprocessTransport io(*d.service);
    std::vector<uint8_t> a(512, 0x77), b(200, 0x88), c(9000, 0x99);
    auto w = io.write(512, a);  // inside block 0, between QEMU's clusters
    ASSERT_TRUE(w) << w.error().message;
    w = io.write(4096 + 100, b);  // block 1, mostly unallocated
    ASSERT_TRUE(w) << w.error().message;
    w = io.write(20000, c);  // several fresh blocks
    ASSERT_TRUE(w) << w.error().message;
    w = io.write(512, a);  // block 0 again: in place now
    ASSERT_TRUE(w) << w.error().message;
    ASSERT_TRUE(io.flush());
  }
  expect_clean();
  expect_reads("read -P 2 0 512");
  expect_reads("read -P 0x77 512 512");
  expect_reads("read -P 3 1024 1024");
  expect_reads("read -P 0 2048 1536");
  expect_reads("read -P 1 3584 512");
  expect_reads("read -P 0 4096 100");
  expect_reads("read -P 0x88 4196 200");
  expect_reads("read -P 0 4396 1748");
  expect_reads("read -P 9 6144 512");
  expect_reads("read -P 0 6656 13344");
  expect_reads("read -P 0x99 20000 9000");
  expect_reads("read -P 0 29000 1019576");
}

INSTANTIATE_TEST_SUITE_P(ClusterSizes, MapServiceSmallClusters, testing::Values("512", "1k", "2k"),
                         [](const auto& p) { return std::string("Cluster") + p.param; });

// A daemon that moved a block and died before its COMMIT: the next one
// adopts the new place of the block's clusters (the committed L2 entries
// still name the old ones) and publishes it.
TEST(MapServiceSmallClustersAdopt, AMovedBlockIsAdoptedAfterARestart) {
  test::TempDir dir;
  const std::string top = dir.file("top.qcow2");
  test::run_ok("qemu-img create -q -f qcow2 -o cluster_size=512 " + test::shell_quote(top) + " 1M");
  test::run_ok("qemu-io -f qcow2 -c 'write -P 1 3584 512' -c 'write -P 2 0 512' " +
               test::shell_quote(top) + " >/dev/null");
  std::vector<dmu_allocation> records;
  {
    Daemon old;
    old.start(top, dir.file("scratch1"));
    dmu_request r{};
    r.type = DMU_REQ_MAP;
    r.flags = DMU_MAP_WRITE;
    r.id = 41;
    r.block = 0;
    r.nr_blocks = 1;
    std::vector<dmu_response> out;
    old.service->handle(r, out);
    size_t news = 0;
    for (const dmu_response& m : out) {
      ASSERT_NE(m.type, uint32_t(DMU_RSP_COMPLETE)) << old.service->last_error();
      if (m.type != DMU_RSP_EXTENT || !(m.ext_flags & DMU_EXT_NEW)) continue;
      // The guest writes the whole block (no COPY needed).
      std::vector<uint8_t> bytes(m.nr_blocks * kBlock, 0x5c);
      ASSERT_TRUE(old.service->devices()[m.dev]->write(m.sector * 512, bytes));
      records.push_back(dmu_allocation{41, m.block, m.nr_blocks, m.sector, m.dev, 0});
      ++news;
    }
    ASSERT_EQ(news, 1u);
    old.die();
  }
  Daemon fresh;
  fresh.start(top, dir.file("scratch2"));
  auto adopted = fresh.service->adopt(records);
  ASSERT_TRUE(adopted) << adopted.error().message;
  dmu_request done{};
  done.type = DMU_REQ_DONE;
  done.flags = DMU_MAP_WRITE;
  done.id = 41;
  done.nr_blocks = 1;
  std::vector<dmu_response> out;
  fresh.service->handle(done, out);
  dmu_request commit{};
  commit.type = DMU_REQ_COMMIT;
  commit.id = 42;
  out.clear();
  fresh.service->handle(commit, out);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].status, 0) << fresh.service->last_error();
  fresh.service.reset();
  fresh.chain.reset();

  auto j = qemu_check(top);
  EXPECT_EQ(json_u64(j, "corruptions"), 0u) << j.dump();
  auto got = test::run_ok(
      in_dir_of(top, "qemu-io -f qcow2 -c 'read -P 0x5c 0 4096' -c 'read -P 0 4096 4096' " +
                         test::shell_quote(top)));
  EXPECT_EQ(got.find("fail"), std::string::npos) << got;
}

// A block whose parts map to different places is read from the scratch store
// (read-only).  The kernel replaces a cached extent with whatever an answer
// says, without waiting for writes in flight through it (kmod/dmu-cache.c),
// so the service must never bounce a block the kernel may hold writable:
// from its write answer until DONE the block is in flight (a read waits, a
// push skips it), and after DONE it maps as one writable run of the image.
class MapServiceUnitsBelowTheBlock : public testing::TestWithParam<const char*> {};

TEST_P(MapServiceUnitsBelowTheBlock, AWrittenBlockIsNeverServedFromScratchAgain) {
  test::TempDir dir;
  test::run_ok("cd " + test::shell_quote(dir.path()) + " && " + GetParam());
  Daemon d;
  ASSERT_NO_FATAL_FAILURE(d.start(dir.file("img.qcow2"), dir.file("scratch")));
  MapService& service = *d.service;
  auto send = [&](uint32_t type, uint32_t flags, uint64_t id) {
    dmu_request q{};
    q.type = type;
    q.flags = flags;
    q.id = id;
    q.block = 0;
    q.nr_blocks = 1;
    std::vector<dmu_response> out;
    service.handle(q, out);
    return out;
  };
  // The extent of block 0 in a batch (kind DMU_EXT_ZERO + 1 if none).
  auto block0 = [](const std::vector<dmu_response>& v) {
    for (const auto& m : v)
      if (m.type == DMU_RSP_EXTENT && m.block == 0) return m;
    dmu_response none{};
    none.kind = DMU_EXT_ZERO + 1;
    return none;
  };
  ASSERT_EQ(block0(send(DMU_REQ_MAP, 0, 1)).dev, service.scratch_device())
      << "block 0 should be read from the scratch store before the write";

  const dmu_response w = block0(send(DMU_REQ_MAP, DMU_MAP_WRITE, 2));
  ASSERT_EQ(w.ext_flags, uint32_t(DMU_EXT_WRITABLE | DMU_EXT_NEW)) << service.last_error();
  EXPECT_TRUE(send(DMU_REQ_MAP, 0, 3).empty()) << "a read of a block in flight waits";
  std::vector<dmu_response> pushed;
  service.push(0, DMU_PUSH_ID | 1, pushed);
  for (const auto& m : pushed) EXPECT_NE(m.block, 0u) << "a push skips a block in flight";

  const auto done = send(DMU_REQ_DONE, DMU_MAP_WRITE, 2);
  const dmu_response waited = block0(done);
  EXPECT_EQ(waited.id, 3u) << "DONE answers the read that waited";
  pushed.clear();
  service.push(0, DMU_PUSH_ID | 2, pushed);
  for (const dmu_response& e : {waited, block0(send(DMU_REQ_MAP, 0, 4)), block0(pushed)}) {
    EXPECT_EQ(e.kind, uint32_t(DMU_EXT_REMAP));
    EXPECT_EQ(e.dev, w.dev);
    EXPECT_EQ(e.sector, w.sector);
    EXPECT_EQ(e.ext_flags, uint32_t(DMU_EXT_WRITABLE));
  }
  d.service.reset();
  d.chain.reset();
}

INSTANTIATE_TEST_SUITE_P(
    MixedBlocks, MapServiceUnitsBelowTheBlock,
    testing::Values(
        // Block 0: subcluster 0 written, subcluster 1 unallocated.
        "qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=64k img.qcow2 1M && "
        "qemu-io -c 'write -q -P 0x11 0 2k' img.qcow2 >/dev/null",
        // Block 0: its first two clusters allocated in reverse order, the rest not.
        "qemu-img create -q -f qcow2 -o cluster_size=512 img.qcow2 1M && "
        "qemu-io -c 'write -q -P 0x22 512 512' -c 'write -q -P 0x11 0 512' img.qcow2 "
        ">/dev/null"));

}  // namespace
}  // namespace dmu::mapper
