// MapService::adopt on a real qcow2 chain: a daemon answers write MAPs and
// dies before any DONE reaches it; the kernel's allocation records (some
// flagged DONE or FAILED, others waiting for the DONE the kernel
// redelivers) are adopted by the next service, whose COMMIT publishes the
// successful writes.  qemu-img check must find the image clean and the
// guest must read the adopted data (through the in-process transport and
// through qemu-io) where the writes succeeded, the backing file elsewhere.
#include <gtest/gtest.h>

#include <cstring>

#include "formats/chain.h"
#include "mapper/inprocess_transport.h"
#include "mapper/map_service.h"
#include "tests/unit/qcow2_test_helpers.h"

namespace dmu::mapper {
namespace {

using qcow2_test::in_dir_of;
using qcow2_test::json_u64;
using qcow2_test::qemu_check;

constexpr uint64_t K = 1024;
constexpr uint64_t kCluster = 64 * K;  // = the block size the service chooses

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
    auto store = ScratchStore::create(posix_env(), scratch, 16 << 20, kCluster, false);
    ASSERT_TRUE(store) << store.error().message;
    auto s = MapService::create(*chain, std::move(*store), {});
    ASSERT_TRUE(s) << s.error().message;
    service = std::move(*s);
    ASSERT_EQ(service->block_size(), kCluster);
  }
  // A killed daemon runs no destructors (the image's would commit).
  void die() {
    (void)service.release();
    (void)chain.release();
  }
  std::vector<dmu_response> send(uint32_t type, uint32_t flags, uint64_t id, uint64_t block,
                                 uint64_t nr, int32_t status = 0) {
    dmu_request r{};
    r.type = type;
    r.flags = flags;
    r.id = id;
    r.block = block;
    r.nr_blocks = nr;
    r.status = status;
    std::vector<dmu_response> out;
    service->handle(r, out);
    return out;
  }
  // The kernel's side of a write MAP of one whole block: the NEW extent is
  // filled with `value` (the guest writes all of it) and recorded.
  void write_block(uint64_t id, uint64_t block, uint8_t value, uint32_t record_flags,
                   std::vector<dmu_allocation>& records) {
    auto out = send(DMU_REQ_MAP, DMU_MAP_WRITE, id, block, 1);
    size_t news = 0;
    for (const dmu_response& m : out) {
      if (m.type != DMU_RSP_EXTENT || !(m.ext_flags & DMU_EXT_NEW)) continue;
      std::vector<uint8_t> bytes(m.nr_blocks * kCluster, value);
      ASSERT_TRUE(service->devices()[m.dev]->write(m.sector * 512, bytes));
      records.push_back(dmu_allocation{id, m.block, m.nr_blocks, m.sector, m.dev, record_flags});
      ++news;
    }
    ASSERT_EQ(news, 1u) << "expected one NEW extent for block " << block;
  }
};

class MapServiceAdopt : public testing::Test {
 protected:
  void SetUp() override {
    test::run_ok("qemu-img create -q -f raw " + test::shell_quote(base_) + " 4M");
    test::run_ok("qemu-io -f raw -c 'write -P 0x5b 0 4M' " + test::shell_quote(base_) +
                 " >/dev/null");
    test::run_ok("qemu-img create -q -f qcow2 -o cluster_size=65536,backing_file=" + base_ +
                 ",backing_fmt=raw " + test::shell_quote(top_) + " 4M");
  }
  // Each block reads as one byte value through the service; then the service
  // stops and qemu-img check must find no corruption (its report returned).
  nlohmann::json reads_then_check(Daemon& d,
                                  std::initializer_list<std::pair<uint64_t, uint8_t>> blocks) {
    {
      InprocessTransport io(*d.service);
      for (auto [block, value] : blocks) {
        std::vector<uint8_t> got(kCluster);
        EXPECT_TRUE(io.read(block * kCluster, got));
        EXPECT_EQ(got, std::vector<uint8_t>(kCluster, value)) << "block " << block;
      }
    }
    d.service.reset();
    d.chain.reset();
    auto j = qemu_check(top_);
    EXPECT_EQ(json_u64(j, "corruptions"), 0u) << j.dump();
    EXPECT_EQ(json_u64(j, "check-errors"), 0u) << j.dump();
    return j;
  }
  void expect_reads(const std::string& cmd) {
    auto out = test::run_ok(in_dir_of(
        top_, "qemu-io -f qcow2 -c " + test::shell_quote(cmd) + " " + test::shell_quote(top_)));
    EXPECT_EQ(out.find("fail"), std::string::npos) << cmd << ": " << out;
  }

  test::TempDir dir_;
  std::string base_ = dir_.file("base.raw");
  std::string top_ = dir_.file("top.qcow2");
};

TEST_F(MapServiceAdopt, RecordsAreAdoptedResolvedByDonesAndPublishedByCommit) {
  std::vector<dmu_allocation> records;
  {
    Daemon old;
    old.start(top_, dir_.file("scratch1"));
    old.write_block(101, 16, 0xa1, DMU_ALLOC_DONE, records);                     // DONE queued
    old.write_block(102, 17, 0xa2, 0, records);                                  // DONE redelivered
    old.write_block(103, 18, 0xa3, DMU_ALLOC_DONE | DMU_ALLOC_FAILED, records);  // failed
    old.write_block(104, 19, 0xa4, 0, records);  // its redelivered DONE fails
    old.die();
  }
  Daemon fresh;
  fresh.start(top_, dir_.file("scratch2"));
  auto adopted = fresh.service->adopt(records);
  ASSERT_TRUE(adopted) << adopted.error().message;
  EXPECT_EQ(fresh.service->adopt_counts().adopted, 3u);
  EXPECT_EQ(fresh.service->adopt_counts().resolved, 1u);
  EXPECT_EQ(fresh.service->adopt_counts().failed, 1u);
  EXPECT_EQ(fresh.service->pending_writes(), 2u);  // ids 102 and 104 wait for their DONEs

  EXPECT_TRUE(fresh.send(DMU_REQ_DONE, DMU_MAP_WRITE, 102, 17, 1, 0).empty());
  auto failed = fresh.send(DMU_REQ_DONE, DMU_MAP_WRITE, 104, 19, 1, -EIO);
  ASSERT_EQ(failed.size(), 1u);
  EXPECT_EQ(failed[0].type, uint32_t(DMU_RSP_INVALIDATE));
  EXPECT_EQ(failed[0].block, 19u);
  // A redelivered DONE of a record resolved already changes nothing.
  EXPECT_TRUE(fresh.send(DMU_REQ_DONE, DMU_MAP_WRITE, 101, 16, 1, 0).empty());
  EXPECT_EQ(fresh.service->pending_writes(), 0u);
  auto committed = fresh.send(DMU_REQ_COMMIT, 0, 200, 0, 0);
  ASSERT_EQ(committed.size(), 1u);
  EXPECT_EQ(committed[0].type, uint32_t(DMU_RSP_COMMITTED));
  EXPECT_EQ(committed[0].status, 0) << fresh.service->last_error();

  reads_then_check(fresh, {{16, 0xa1}, {17, 0xa2}, {18, 0x5b}, {19, 0x5b}, {20, 0x5b}});
  expect_reads("read -P 0xa1 1M 64k");
  expect_reads("read -P 0xa2 1088k 64k");
  expect_reads("read -P 0x5b 1152k 128k");
}

TEST_F(MapServiceAdopt, ARecordTheImageRefusesFailsTheAdoptionNamingIt) {
  Daemon fresh;
  fresh.start(top_, dir_.file("scratch"));
  // A NEW extent over the image's header.
  const dmu_allocation bad{7, 16, 1, 0, 0, 0};
  auto adopted = fresh.service->adopt(std::span(&bad, 1));
  ASSERT_FALSE(adopted);
  EXPECT_EQ(adopted.error().code, EINVAL);
  EXPECT_NE(adopted.error().message.find("allocation record (id 7"), std::string::npos)
      << adopted.error().message;
  EXPECT_EQ(fresh.service->adopt_counts().adopted, 0u);
}

// The review's case: a cluster committed, then discarded and written again
// (at a new host cluster, the old one being released only at commit) before
// the daemon died; another written, discarded and written again with no
// commit between; a third only discarded.  The kernel lists the records in
// the order the answers were applied, and the next daemon must replay the
// discards in that order or the rewrite contradicts the committed metadata.
TEST_F(MapServiceAdopt, DiscardThenRewriteBeforeTheCrashIsAdoptedInOrder) {
  std::vector<dmu_allocation> records;
  {
    Daemon old;
    old.start(top_, dir_.file("scratch1"));
    old.write_block(101, 16, 0xa1, DMU_ALLOC_DONE, records);
    EXPECT_TRUE(old.send(DMU_REQ_DONE, DMU_MAP_WRITE, 101, 16, 1).empty());
    auto c = old.send(DMU_REQ_COMMIT, 0, 150, 0, 0);
    ASSERT_EQ(c.size(), 1u);
    ASSERT_EQ(c[0].status, 0) << old.service->last_error();
    records.clear();  // published: the kernel forgets them

    old.write_block(102, 17, 0xa2, DMU_ALLOC_DONE, records);
    EXPECT_TRUE(old.send(DMU_REQ_DONE, DMU_MAP_WRITE, 102, 17, 1).empty());
    auto d = old.send(DMU_REQ_MAP, DMU_MAP_DISCARD, 103, 16, 3);
    ASSERT_FALSE(d.empty());
    ASSERT_EQ(d.back().status, 0) << old.service->last_error();
    records.push_back(dmu_allocation{103, 16, 3, 0, 0, DMU_ALLOC_DISCARD | DMU_ALLOC_DONE});
    old.write_block(104, 16, 0xc1, DMU_ALLOC_DONE, records);
    EXPECT_TRUE(old.send(DMU_REQ_DONE, DMU_MAP_WRITE, 104, 16, 1).empty());
    old.write_block(105, 17, 0xc2, 0, records);  // its DONE is redelivered
    old.die();
  }
  Daemon fresh;
  fresh.start(top_, dir_.file("scratch2"));
  auto adopted = fresh.service->adopt(records);
  ASSERT_TRUE(adopted) << adopted.error().message;
  EXPECT_EQ(fresh.service->adopt_counts().discards, 1u);
  EXPECT_EQ(fresh.service->adopt_counts().adopted, 3u);
  EXPECT_TRUE(fresh.send(DMU_REQ_DONE, DMU_MAP_WRITE, 105, 17, 1, 0).empty());
  auto committed = fresh.send(DMU_REQ_COMMIT, 0, 200, 0, 0);
  ASSERT_EQ(committed.size(), 1u);
  EXPECT_EQ(committed[0].status, 0) << fresh.service->last_error();

  // Block 18 was only discarded: zeros over the backing file, as the dead
  // daemon's discard made it read.
  auto j = reads_then_check(fresh, {{16, 0xc1}, {17, 0xc2}, {18, 0}, {19, 0x5b}});
  EXPECT_EQ(json_u64(j, "leaks"), 0u) << j.dump();
  expect_reads("read -P 0xc1 1M 64k");
  expect_reads("read -P 0xc2 1088k 64k");
  expect_reads("read -P 0 1152k 64k");
  expect_reads("read -P 0x5b 1216k 64k");
}

// The dead daemon's commit made a discard and the rewrite after it durable,
// but it died before the kernel read COMMITTED: the records are listed
// again and describe what the image already says.
TEST_F(MapServiceAdopt, ADiscardAndRewriteCommittedButNotAcknowledgedAdoptInPlace) {
  std::vector<dmu_allocation> records;
  {
    Daemon old;
    old.start(top_, dir_.file("scratch1"));
    old.write_block(101, 16, 0xa1, DMU_ALLOC_DONE, records);
    EXPECT_TRUE(old.send(DMU_REQ_DONE, DMU_MAP_WRITE, 101, 16, 1).empty());
    ASSERT_EQ(old.send(DMU_REQ_COMMIT, 0, 150, 0, 0).at(0).status, 0);
    records.clear();
    ASSERT_EQ(old.send(DMU_REQ_MAP, DMU_MAP_DISCARD, 102, 16, 1).back().status, 0);
    records.push_back(dmu_allocation{102, 16, 1, 0, 0, DMU_ALLOC_DISCARD | DMU_ALLOC_DONE});
    old.write_block(103, 16, 0xc1, DMU_ALLOC_DONE, records);
    EXPECT_TRUE(old.send(DMU_REQ_DONE, DMU_MAP_WRITE, 103, 16, 1).empty());
    ASSERT_EQ(old.send(DMU_REQ_COMMIT, 0, 151, 0, 0).at(0).status, 0);  // COMMITTED lost
    old.die();
  }
  Daemon fresh;
  fresh.start(top_, dir_.file("scratch2"));
  auto adopted = fresh.service->adopt(records);
  ASSERT_TRUE(adopted) << adopted.error().message;
  ASSERT_EQ(fresh.send(DMU_REQ_COMMIT, 0, 200, 0, 0).at(0).status, 0)
      << fresh.service->last_error();
  auto j = reads_then_check(fresh, {{16, 0xc1}, {17, 0x5b}});
  EXPECT_EQ(json_u64(j, "leaks"), 0u) << j.dump();
  expect_reads("read -P 0xc1 1M 64k");
}

// A discard the engine ignores (here on a qcow2 v2 image over a backing
// file; qcow, vmdk and discards of part of a cluster are others) may be
// answered beside a write in flight: that list is adopted.
TEST_F(MapServiceAdopt, ADiscardTheEngineIgnoredBesideAWriteInFlightIsAdopted) {
  test::run_ok("qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=65536,backing_file=" +
               base_ + ",backing_fmt=raw " + test::shell_quote(top_) + " 4M");
  std::vector<dmu_allocation> records;
  {
    Daemon old;
    old.start(top_, dir_.file("scratch1"));
    old.write_block(101, 16, 0xa1, 0, records);  // in flight
    // This service holds the discard back until the write's DONE; a daemon
    // of an older version answered it at once, leaving this record.
    EXPECT_TRUE(old.send(DMU_REQ_MAP, DMU_MAP_DISCARD, 102, 16, 1).empty());
    EXPECT_EQ(old.service->waiting_requests(), 1u);
    records.push_back(dmu_allocation{102, 16, 1, 0, 0, DMU_ALLOC_DISCARD});
    old.die();
  }
  Daemon fresh;
  fresh.start(top_, dir_.file("scratch2"));
  auto adopted = fresh.service->adopt(records);
  ASSERT_TRUE(adopted) << adopted.error().message;
  EXPECT_TRUE(fresh.send(DMU_REQ_DONE, DMU_MAP_WRITE, 101, 16, 1, 0).empty());
  ASSERT_EQ(fresh.send(DMU_REQ_COMMIT, 0, 200, 0, 0).at(0).status, 0)
      << fresh.service->last_error();
  reads_then_check(fresh, {{16, 0xa1}, {17, 0x5b}});
}

// A failed answer's new cluster is freed at once by the live daemon, and a
// later answer may take it: the failed record must not claim it again.
TEST_F(MapServiceAdopt, AFailedRecordsClusterReusedByALaterRecordIsAdopted) {
  std::vector<dmu_allocation> records;
  {
    Daemon old;
    old.start(top_, dir_.file("scratch1"));
    old.write_block(101, 16, 0xa1, DMU_ALLOC_DONE | DMU_ALLOC_FAILED, records);
    auto inval = old.send(DMU_REQ_DONE, DMU_MAP_WRITE, 101, 16, 1, -EIO);
    ASSERT_EQ(inval.size(), 1u);
    old.write_block(102, 17, 0xa2, DMU_ALLOC_DONE, records);
    EXPECT_TRUE(old.send(DMU_REQ_DONE, DMU_MAP_WRITE, 102, 17, 1).empty());
    ASSERT_EQ(records[0].sector, records[1].sector) << "the second answer did not reuse the cluster";
    old.die();
  }
  Daemon fresh;
  fresh.start(top_, dir_.file("scratch2"));
  auto adopted = fresh.service->adopt(records);
  ASSERT_TRUE(adopted) << adopted.error().message;
  EXPECT_EQ(fresh.service->adopt_counts().failed, 1u);
  ASSERT_EQ(fresh.send(DMU_REQ_COMMIT, 0, 200, 0, 0).at(0).status, 0)
      << fresh.service->last_error();
  reads_then_check(fresh, {{16, 0x5b}, {17, 0xa2}});
}

// A discard over a write whose DONE never came: the old daemon could not
// have answered it (the engines refuse to discard a write in flight), so the
// list contradicts itself and the fill may still be writing there.
TEST_F(MapServiceAdopt, ADiscardOverAWriteStillInFlightIsRefused) {
  std::vector<dmu_allocation> records;
  {
    Daemon old;
    old.start(top_, dir_.file("scratch1"));
    old.write_block(101, 16, 0xa1, 0, records);
    old.die();
  }
  records.push_back(dmu_allocation{102, 16, 1, 0, 0, DMU_ALLOC_DISCARD});
  Daemon fresh;
  fresh.start(top_, dir_.file("scratch2"));
  auto adopted = fresh.service->adopt(records);
  ASSERT_FALSE(adopted);
  EXPECT_EQ(adopted.error().code, EINVAL);
  EXPECT_NE(adopted.error().message.find("id 101"), std::string::npos) << adopted.error().message;
}

}  // namespace
}  // namespace dmu::mapper
