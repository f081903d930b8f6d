// The map service at the protocol level: requests in, responses out, on
// chains of the in-memory fake engine (tests/unit/fake_image.h), so every
// answer shape (runs, zero, compressed, fresh clusters over a backing image,
// subclusters finer than the block) is checked independently of the real
// engines.
#include <gtest/gtest.h>

#include "formats/chain.h"
#include "mapper/map_service.h"
#include "tests/support/fault_env.h"
#include "tests/support/test_support.h"
#include "tests/unit/fake_image.h"

namespace dmu::mapper {
namespace {

using test::CrashKeeps;
using test::FaultEnv;

using test::FakeImage;

constexpr uint64_t K = 1024;

struct Rig {
  MemEnv env;
  FakeImage* top = nullptr;
  FakeImage* base = nullptr;
  std::unique_ptr<formats::Chain> chain;
  std::unique_ptr<MapService> service;

  // top over an optional base; sizes in bytes.
  void build(uint64_t size, uint64_t top_cluster, uint64_t base_cluster = 0,
             formats::Access access = formats::Access::ReadWrite, uint64_t top_granularity = 0,
             MapServiceOptions options = {}) {
    std::vector<std::unique_ptr<formats::Image>> images;
    auto t = std::make_unique<FakeImage>(env, "top", size, top_cluster, top_granularity);
    top = t.get();
    images.push_back(std::move(t));
    if (base_cluster) {
      auto b = std::make_unique<FakeImage>(env, "base", size, base_cluster, 0, false);
      base = b.get();
      images.push_back(std::move(b));
    }
    chain = *formats::Chain::assemble(std::move(images), access);
    uint64_t block = options.block_size ? options.block_size : choose_block_size(*chain);
    auto scratch = ScratchStore::create(env, "scratch", 16 << 20, block, false);
    auto s = MapService::create(*chain, std::move(*scratch), options);
    ASSERT_TRUE(s) << s.error().message;
    service = std::move(*s);
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
  std::vector<dmu_response> map(uint64_t id, uint64_t block, uint64_t nr, uint32_t flags = 0) {
    return send(DMU_REQ_MAP, flags, id, block, nr);
  }
  std::vector<uint8_t> device_bytes(unsigned dev, uint64_t sector, size_t n) {
    std::vector<uint8_t> b(n);
    EXPECT_TRUE(service->devices()[dev]->read(sector * 512, b));
    return b;
  }
};

std::vector<dmu_response> of_type(const std::vector<dmu_response>& v, uint32_t type) {
  std::vector<dmu_response> r;
  for (const auto& m : v)
    if (m.type == type) r.push_back(m);
  return r;
}

TEST(ChooseBlockSize, IsTheFinestGranularityOfTheChain) {
  Rig s;
  s.build(1 << 20, 64 * K, 8 * K);
  EXPECT_EQ(s.service->block_size(), 8 * K);
}

TEST(ChooseBlockSize, IsAtLeastFourKibibytesForSubclusters) {
  Rig s;
  s.build(1 << 20, 64 * K, 0, formats::Access::ReadWrite, 2 * K);
  EXPECT_EQ(s.service->block_size(), 4 * K);
}

TEST(ChooseBlockSize, IsAtMostTwoMebibytes) {
  Rig s;
  s.build(16 << 20, 4 << 20);
  EXPECT_EQ(s.service->block_size(), 2u << 20);
}

TEST(MapRead, AnswersOneExtentForContiguousDataAndReadsAhead) {
  Rig s;
  s.build(1 << 20, 64 * K);
  s.top->put_data(0, test::random_bytes(256 * K, 1));
  auto out = s.map(7, 0, 1);
  ASSERT_EQ(out.size(), 2u);  // data [0, 256K) then zero (unallocated) to the end
  EXPECT_EQ(out[0].type, uint32_t(DMU_RSP_EXTENT));
  EXPECT_EQ(out[0].kind, uint32_t(DMU_EXT_REMAP));
  EXPECT_EQ(out[0].id, 7u);
  EXPECT_EQ(out[0].block, 0u);
  EXPECT_EQ(out[0].nr_blocks, 4u);
  EXPECT_EQ(out[0].sector, 64 * K / 512);
  EXPECT_EQ(out[0].ext_flags, uint32_t(DMU_EXT_WRITABLE));
  EXPECT_EQ(out[1].kind, uint32_t(DMU_EXT_ZERO));
  EXPECT_EQ(out[1].block + out[1].nr_blocks, s.service->target_blocks());
  EXPECT_EQ(out[1].flags, uint32_t(DMU_RSP_FINAL));
  EXPECT_EQ(out[0].flags, 0u);
}

TEST(MapRead, ReadAheadStopsAtTheCap) {
  Rig s;
  MapServiceOptions o;
  o.read_ahead = 128 * K;
  s.build(1 << 20, 64 * K, 0, formats::Access::ReadWrite, 0, o);
  auto out = s.map(1, 0, 1);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].type, uint32_t(DMU_RSP_EXTENT));
  EXPECT_EQ(out[0].nr_blocks, 2u);
}

TEST(MapRead, DataInAReadOnlyChainIsNotWritable) {
  Rig s;
  s.build(1 << 20, 64 * K, 0, formats::Access::ReadOnly);
  s.top->put_data(0, test::random_bytes(64 * K, 1));
  auto out = s.map(1, 0, 1);
  // A mapping of the data (an error answer has no flags either).
  ASSERT_GE(out.size(), 1u);
  EXPECT_EQ(out[0].type, uint32_t(DMU_RSP_EXTENT));
  EXPECT_EQ(out[0].kind, uint32_t(DMU_EXT_REMAP));
  EXPECT_EQ(out[0].block, 0u);
  EXPECT_GE(out[0].nr_blocks, 1u);
  EXPECT_EQ(out[0].ext_flags, 0u);
}

TEST(MapRead, FallsThroughToTheBackingImage) {
  Rig s;
  s.build(1 << 20, 64 * K, 64 * K);
  s.base->put_data(64 * K, test::random_bytes(64 * K, 2));
  auto out = s.map(1, 1, 1);
  ASSERT_GE(out.size(), 1u);
  EXPECT_EQ(out[0].type, uint32_t(DMU_RSP_EXTENT));
  EXPECT_EQ(out[0].kind, uint32_t(DMU_EXT_REMAP));
  EXPECT_EQ(out[0].dev, 1u);        // base's file
  EXPECT_EQ(out[0].ext_flags, 0u);  // backing data is never writable
}

TEST(MapRead, CompressedClusterIsDecompressedIntoTheScratchStore) {
  Rig s;
  s.build(1 << 20, 64 * K);
  auto plain = test::random_bytes(64 * K, 3);
  s.top->put_compressed(128 * K, plain);
  auto out = s.map(1, 2, 1);
  ASSERT_GE(out.size(), 1u);
  EXPECT_EQ(out[0].type, uint32_t(DMU_RSP_EXTENT));
  EXPECT_EQ(out[0].kind, uint32_t(DMU_EXT_REMAP));
  EXPECT_EQ(out[0].dev, s.service->scratch_device());
  EXPECT_EQ(out[0].ext_flags, 0u);
  EXPECT_EQ(s.device_bytes(out[0].dev, out[0].sector, 64 * K), plain);
}

TEST(MapRead, BlockWithDifferentlyMappedPartsIsServedFromScratch) {
  Rig s;
  s.build(1 << 20, 64 * K, 64 * K, formats::Access::ReadWrite, 2 * K);  // block 4K
  auto low = test::random_bytes(2 * K, 4), high = test::random_bytes(2 * K, 5);
  s.top->put_data(0, low);  // subcluster 0 in the top
  s.base->put_data(0, test::random_bytes(4 * K, 6));
  s.base->put_data(2 * K, high);  // subcluster 1 from the base
  auto out = s.map(1, 0, 1);
  ASSERT_GE(out.size(), 1u);
  EXPECT_EQ(out[0].dev, s.service->scratch_device());
  auto got = s.device_bytes(out[0].dev, out[0].sector, 4 * K);
  EXPECT_TRUE(std::equal(low.begin(), low.end(), got.begin()));
  EXPECT_TRUE(std::equal(high.begin(), high.end(), got.begin() + 2 * K));
}

// Pushes every block of the disk from block 0 on; returns the batches.
std::vector<std::vector<dmu_response>> push_all(MapService& service) {
  std::vector<std::vector<dmu_response>> batches;
  uint64_t block = 0, n = 0;
  while (block < service.target_blocks()) {
    std::vector<dmu_response> out;
    const uint64_t next = service.push(block, DMU_PUSH_ID | ++n, out);
    EXPECT_GT(next, block);
    if (next <= block) break;
    block = next;
    if (!out.empty()) batches.push_back(std::move(out));
  }
  return batches;
}

TEST(MapPush, MapsTheDiskLikeReadAnswersButLeavesCompressedClustersToAMiss) {
  Rig s;
  s.build(1 << 20, 64 * K, 64 * K);
  s.top->put_data(0, test::random_bytes(128 * K, 1));
  s.top->put_compressed(256 * K, test::random_bytes(64 * K, 2));
  s.base->put_data(512 * K, test::random_bytes(64 * K, 3));
  auto batches = push_all(*s.service);
  ASSERT_EQ(batches.size(), 1u);
  const auto& b = batches[0];
  for (size_t i = 0; i < b.size(); ++i) {
    EXPECT_EQ(b[i].type, uint32_t(DMU_RSP_EXTENT));
    EXPECT_EQ(b[i].id, DMU_PUSH_ID | 1);
    EXPECT_EQ(b[i].flags, i + 1 == b.size() ? uint32_t(DMU_RSP_FINAL) : 0u);
    EXPECT_NE(b[i].dev, s.service->scratch_device()) << "nothing is decompressed for a push";
  }
  // [0,2) top data (writable), [2,4) zero, block 4 compressed: skipped,
  // [5,8) zero, [8,9) the base's data (read-only), [9,16) zero.
  ASSERT_EQ(b.size(), 5u);
  EXPECT_EQ(b[0].block, 0u);
  EXPECT_EQ(b[0].nr_blocks, 2u);
  EXPECT_EQ(b[0].kind, uint32_t(DMU_EXT_REMAP));
  EXPECT_EQ(b[0].ext_flags, uint32_t(DMU_EXT_WRITABLE));
  EXPECT_EQ(b[1].kind, uint32_t(DMU_EXT_ZERO));
  EXPECT_EQ(b[1].block + b[1].nr_blocks, 4u);
  EXPECT_EQ(b[2].block, 5u);
  EXPECT_EQ(b[2].nr_blocks, 3u);
  EXPECT_EQ(b[3].block, 8u);
  EXPECT_EQ(b[3].dev, 1u);
  EXPECT_EQ(b[3].ext_flags, 0u);
  EXPECT_EQ(b[4].block + b[4].nr_blocks, s.service->target_blocks());
  // The same mapping a read of block 0 is answered with, under the request's id.
  auto answer = s.map(9, 0, 1);
  EXPECT_EQ(answer[0].nr_blocks, b[0].nr_blocks);
  EXPECT_EQ(answer[0].sector, b[0].sector);
}

TEST(MapPush, EachPushHoldsAtMostTheProtocolsMessagesPerAnswer) {
  Rig s;
  s.build(32 << 20, 64 * K);  // 512 clusters, every other one allocated
  for (uint64_t c = 0; c < 512; c += 2) s.top->put_data(c * 64 * K, test::random_bytes(64 * K, 4));
  auto batches = push_all(*s.service);
  ASSERT_GE(batches.size(), 2u);
  uint64_t covered = 0;
  for (const auto& b : batches) {
    EXPECT_LE(b.size(), size_t(kMaxAnswerMessages));
    EXPECT_EQ(b.back().flags, uint32_t(DMU_RSP_FINAL));
    for (const auto& m : b) covered += m.nr_blocks;
  }
  EXPECT_EQ(covered, s.service->target_blocks());
}

// Which of blocks [0, n) the extents of `out` cover.
std::vector<bool> covered_blocks(const std::vector<std::vector<dmu_response>>& batches,
                                 uint64_t n) {
  std::vector<bool> c(n);
  for (const auto& b : batches)
    for (const auto& m : b)
      for (uint64_t i = m.block; i < m.block + m.nr_blocks && i < n; ++i) c[i] = true;
  return c;
}

TEST(MapPush, SkipsBlocksOfWritesWhoseDoneIsNotHandledAndReadAheadStopsThere) {
  Rig s;
  s.build(1 << 20, 64 * K);  // 16 blocks
  auto w = s.map(9, 5, 1, DMU_MAP_WRITE);
  ASSERT_FALSE(w.empty());
  ASSERT_TRUE(w.front().ext_flags & DMU_EXT_NEW);
  // The kernel may have filled and written block 5 already: what the engine
  // says of it may be older than the kernel's extent.
  auto c = covered_blocks(push_all(*s.service), 16);
  EXPECT_FALSE(c[5]);
  for (uint64_t b : {0u, 4u, 6u, 15u}) EXPECT_TRUE(c[b]) << "block " << b;
  auto ahead = s.map(10, 2, 1);
  ASSERT_FALSE(ahead.empty());
  EXPECT_EQ(ahead.back().block + ahead.back().nr_blocks, 5u) << "read-ahead stops before block 5";
  // Asked for, block 5 waits for the DONE (map_service_wait_test.cc).
  EXPECT_TRUE(s.map(11, 5, 1).empty());
  // Once its DONE is handled, a push covers it again.
  EXPECT_FALSE(s.send(DMU_REQ_DONE, 0, 9, 5, 1, 0).empty()) << "the waiting read's answer";
  EXPECT_TRUE(covered_blocks(push_all(*s.service), 16)[5]);
}

TEST(MapPush, OneCallBoundsItsEngineLookupsOverSkippedBlocks) {
  Rig s;
  s.build(256 << 20, 64 * K);  // 4096 clusters, all compressed: all skipped
  auto plain = test::random_bytes(64 * K, 7);
  for (uint64_t c = 0; c < 4096; ++c) s.top->put_compressed(c * 64 * K, plain);
  std::vector<dmu_response> out;
  const uint64_t next = s.service->push(0, DMU_PUSH_ID | 1, out);
  EXPECT_TRUE(out.empty());
  EXPECT_GT(next, 0u);
  EXPECT_LT(next, s.service->target_blocks());
}

TEST(MapRead, MalformedRequestsFailWithEinval) {
  Rig s;
  s.build(1 << 20, 64 * K);
  for (auto out : {s.map(1, 16, 1), s.map(2, 0, 0), s.map(3, 15, 2),
                   s.map(4, 0, 1, DMU_MAP_WRITE | DMU_MAP_DISCARD), s.map(5, 0, 1, 1u << 7)}) {
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].type, uint32_t(DMU_RSP_COMPLETE));
    EXPECT_EQ(out[0].status, -EINVAL);
    EXPECT_EQ(out[0].flags, uint32_t(DMU_RSP_FINAL));
  }
}

TEST(MapWrite, FreshClusterIsNewWithCopiesFromTheBacking) {
  Rig s;
  s.build(1 << 20, 64 * K, 4 * K);                         // block 4K, top allocates 64K clusters
  s.base->put_data(64 * K, test::random_bytes(8 * K, 7));  // two 4K base clusters
  auto out = s.map(9, 16 + 5, 1, DMU_MAP_WRITE);           // a block inside [64K, 128K)
  auto extents = of_type(out, DMU_RSP_EXTENT);
  auto copies = of_type(out, DMU_RSP_COPY);
  ASSERT_EQ(extents.size(), 1u);
  EXPECT_EQ(extents[0].block, 16u);  // the whole fresh cluster, not just the asked block
  EXPECT_EQ(extents[0].nr_blocks, 16u);
  EXPECT_EQ(extents[0].ext_flags, uint32_t(DMU_EXT_WRITABLE | DMU_EXT_NEW));
  ASSERT_EQ(copies.size(), 1u);  // the two base clusters are adjacent on the base's file
  EXPECT_EQ(copies[0].block, 64 * K / 512);
  EXPECT_EQ(copies[0].nr_blocks, 8 * K / 512);
  EXPECT_EQ(copies[0].dev, 1u);
  EXPECT_EQ(out.back().flags, uint32_t(DMU_RSP_FINAL));
  EXPECT_EQ(s.service->pending_writes(), 1u);
}

TEST(MapWrite, CommitBeforeDoneDoesNotPublishTheAllocation) {
  Rig s;
  s.build(1 << 20, 64 * K);
  s.map(9, 0, 1, DMU_MAP_WRITE);
  auto c = s.send(DMU_REQ_COMMIT, 0, 10, 0, 0);
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0].type, uint32_t(DMU_RSP_COMMITTED));
  EXPECT_EQ(c[0].status, 0);
  EXPECT_TRUE(s.top->committed_granules.empty());
  EXPECT_TRUE(s.send(DMU_REQ_DONE, 0, 9, 0, 0).empty());
  EXPECT_EQ(s.service->pending_writes(), 0u);
  EXPECT_EQ(s.top->done_tokens.size(), 1u);
  s.send(DMU_REQ_COMMIT, 0, 11, 0, 0);
  EXPECT_EQ(s.top->committed_granules.count(0), 1u);
}

TEST(MapWrite, FailedDoneAbandonsTheAllocationAndInvalidatesIt) {
  Rig s;
  s.build(1 << 20, 64 * K);
  s.map(9, 3, 1, DMU_MAP_WRITE);
  auto out = s.send(DMU_REQ_DONE, 0, 9, 0, 0, -EIO);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].type, uint32_t(DMU_RSP_INVALIDATE));
  EXPECT_EQ(out[0].block, 3u);
  EXPECT_EQ(s.top->failed_tokens.size(), 1u);
  EXPECT_EQ(s.top->granule(3 * 64 * K).kind, FakeImage::Kind::Unallocated);
}

TEST(MapWrite, AllocatedDataIsWrittenInPlaceWithoutNew) {
  Rig s;
  s.build(1 << 20, 64 * K);
  s.top->put_data(0, test::random_bytes(128 * K, 8));
  auto out = s.map(9, 0, 2, DMU_MAP_WRITE);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].ext_flags, uint32_t(DMU_EXT_WRITABLE));
  EXPECT_EQ(out[0].nr_blocks, 2u);
}

TEST(MapWrite, CompressedOldContentsAreCopiedFromScratch) {
  Rig s;
  s.build(1 << 20, 64 * K);
  auto plain = test::random_bytes(64 * K, 9);
  s.top->put_compressed(0, plain);
  auto out = s.map(9, 0, 1, DMU_MAP_WRITE);
  auto copies = of_type(out, DMU_RSP_COPY);
  ASSERT_EQ(copies.size(), 1u);
  EXPECT_EQ(copies[0].dev, s.service->scratch_device());
  EXPECT_EQ(copies[0].nr_blocks, 64 * K / 512);
  EXPECT_EQ(s.device_bytes(copies[0].dev, copies[0].sector, 64 * K), plain);
}

TEST(MapWrite, ZeroOldContentsNeedNoCopy) {
  Rig s;
  s.build(1 << 20, 64 * K, 64 * K);
  s.top->put_zero(0, 64 * K);
  s.base->put_data(0, test::random_bytes(64 * K, 10));  // hidden by the zero cluster
  auto out = s.map(9, 0, 1, DMU_MAP_WRITE);
  EXPECT_TRUE(of_type(out, DMU_RSP_COPY).empty());
  EXPECT_EQ(of_type(out, DMU_RSP_EXTENT).size(), 1u);
}

TEST(MapWrite, SubclusterBlockKeepsItsAllocatedHalfBySelfCopy) {
  Rig s;
  s.build(1 << 20, 64 * K, 64 * K, formats::Access::ReadWrite, 2 * K);  // block 4K
  s.top->put_data(0, test::random_bytes(2 * K, 11));                    // subcluster 0 allocated
  s.base->put_data(0, test::random_bytes(64 * K, 12));
  auto out = s.map(9, 0, 1, DMU_MAP_WRITE);
  auto extents = of_type(out, DMU_RSP_EXTENT);
  auto copies = of_type(out, DMU_RSP_COPY);
  ASSERT_EQ(extents.size(), 1u);
  EXPECT_EQ(extents[0].ext_flags, uint32_t(DMU_EXT_WRITABLE | DMU_EXT_NEW));
  ASSERT_EQ(copies.size(), 2u);
  EXPECT_EQ(copies[0].dev, 0u);  // subcluster 0 from itself
  EXPECT_EQ(copies[0].sector, extents[0].sector);
  EXPECT_EQ(copies[1].dev, 1u);  // subcluster 1 from the base
  EXPECT_EQ(copies[1].block, 2 * K / 512);
}

// Found by vm.attach-oracle on a qcow2 with extended_l2=on: a write across a
// cluster boundary, whose fresh subclusters on both sides read old contents
// that lie side by side in the backing file, while the two clusters sit apart
// in the image.  One COPY across both extents is refused by the kernel
// ("COPY outside every NEW extent of its answer"), failing the guest's write.
TEST(MapWrite, CopiesDoNotJoinAcrossExtentsApartOnTheImage) {
  Rig s;
  s.build(1 << 20, 64 * K, 64 * K, formats::Access::ReadWrite, 2 * K);  // block 4K
  s.base->put_data(0, test::random_bytes(128 * K, 13));                 // contiguous on the base
  s.top->put_data(0, test::random_bytes(2 * K, 14));                    // cluster 0 gets its place
  s.top->put_data(128 * K, test::random_bytes(2 * K, 15));              // cluster 2 the next one
  auto out = s.map(9, 64 * K / (4 * K) - 1, 2, DMU_MAP_WRITE);  // [60K, 68K): clusters 0 and 1
  auto extents = of_type(out, DMU_RSP_EXTENT);
  auto copies = of_type(out, DMU_RSP_COPY);
  ASSERT_EQ(extents.size(), 2u) << "cluster 1 is placed after cluster 2, not after cluster 0";
  ASSERT_FALSE(copies.empty());
  uint64_t copied = 0;
  for (const auto& c : copies) {
    bool inside = false;
    for (const auto& e : extents)
      inside = inside || ((e.ext_flags & DMU_EXT_NEW) && c.block >= e.block * 8 &&
                          c.block + c.nr_blocks <= (e.block + e.nr_blocks) * 8);
    EXPECT_TRUE(inside) << "COPY of sectors " << c.block << "+" << c.nr_blocks
                        << " is not inside one NEW extent";
    EXPECT_EQ(c.dev, 1u);
    copied += c.nr_blocks;
  }
  EXPECT_EQ(copied, 8 * K / 512) << "both blocks are fresh: all their old contents are copied";
}

// Every other 4 KiB of the base holds data: no two COPY sources merge.
void fragment_base(FakeImage& base, uint64_t from, uint64_t to) {
  for (uint64_t off = from; off < to; off += 8 * K)
    base.put_data(off, test::random_bytes(4 * K, 1));
}

TEST(MapWrite, LongAnswersAreCutToTheProtocolsMessageLimit) {
  Rig s;
  s.build(4 << 20, 64 * K, 4 * K);
  fragment_base(*s.base, 0, 4 << 20);
  auto out = s.map(9, 0, 512, DMU_MAP_WRITE);  // 2 MiB: 32 fresh clusters, 8 COPYs each
  ASSERT_LE(out.size(), size_t(kMaxAnswerMessages));
  ASSERT_EQ(out.front().type, uint32_t(DMU_RSP_EXTENT));
  EXPECT_EQ(out.front().block, 0u);
  uint64_t covered = 0;
  for (const auto& e : of_type(out, DMU_RSP_EXTENT)) covered += e.nr_blocks;
  EXPECT_EQ(covered % 16, 0u) << "fresh clusters are answered whole";
  EXPECT_LT(covered, 512u);
  EXPECT_EQ(s.top->failed_tokens.size(), 32 - covered / 16) << "the rest was given back";
}

TEST(MapWrite, AClusterNeedingTooManyMessagesFailsWithEio) {
  Rig s;
  s.build(4 << 20, 2 << 20, 4 * K);  // 2 MiB clusters over 4 KiB ones: 256 COPYs + 1 extent
  fragment_base(*s.base, 0, 2 << 20);
  auto out = s.map(9, 0, 1, DMU_MAP_WRITE);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].type, uint32_t(DMU_RSP_COMPLETE));
  EXPECT_EQ(out[0].status, -EIO);
  EXPECT_EQ(s.service->pending_writes(), 0u);
  EXPECT_EQ(s.top->failed_tokens.size(), 1u);
}

TEST(MapWrite, DataDeviceIsGrownAndReportedBeforeTheAnswer) {
  Rig s;
  std::vector<std::pair<unsigned, uint64_t>> grown;
  MapServiceOptions o;
  o.device_grown = [&](unsigned dev, uint64_t size) -> Result<void> {
    grown.emplace_back(dev, size);
    return {};
  };
  s.build(1 << 20, 64 * K, 0, formats::Access::ReadWrite, 0, o);
  auto out = s.map(9, 0, 1, DMU_MAP_WRITE);
  ASSERT_EQ(out.front().type, uint32_t(DMU_RSP_EXTENT));
  const uint64_t end = out.front().sector * 512 + 64 * K;
  ASSERT_EQ(grown.size(), 1u);
  EXPECT_EQ(grown[0].first, 0u);
  EXPECT_EQ(grown[0].second, end);
  EXPECT_EQ(*s.service->devices()[0]->size(), end);
}

TEST(MapWrite, EngineErrorsKeepTheirErrno) {
  Rig s;
  s.build(1 << 20, 64 * K);
  s.top->fail_next_prepare(ENOSPC);
  auto out = s.map(9, 0, 1, DMU_MAP_WRITE);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].type, uint32_t(DMU_RSP_COMPLETE));
  EXPECT_EQ(out[0].status, -ENOSPC);
  EXPECT_EQ(s.service->pending_writes(), 0u);
}

TEST(MapWrite, ReadOnlyChainRefusesWithErofs) {
  Rig s;
  s.build(1 << 20, 64 * K, 0, formats::Access::ReadOnly);
  auto out = s.map(9, 0, 1, DMU_MAP_WRITE);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].status, -EROFS);
  EXPECT_EQ(s.top->prepares(), 0u);
}

TEST(Discard, ReleasesInvalidatesAndCompletes) {
  Rig s;
  s.build(1 << 20, 64 * K);
  s.top->put_data(0, test::random_bytes(128 * K, 13));
  auto out = s.map(9, 0, 2, DMU_MAP_DISCARD);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].type, uint32_t(DMU_RSP_INVALIDATE));
  EXPECT_EQ(out[0].block, 0u);
  EXPECT_EQ(out[0].nr_blocks, 2u);
  EXPECT_EQ(out[1].type, uint32_t(DMU_RSP_COMPLETE));
  EXPECT_EQ(out[1].status, 0);
  EXPECT_EQ(s.top->granule(0).kind, FakeImage::Kind::Zero);
}

// Protocol 2: DONE repeats the MAP's flags and range and is sent for
// discards too.  A discard's DONE finds nothing pending and changes nothing,
// even with a failed status.
TEST(Discard, ItsDoneIsHarmless) {
  Rig s;
  s.build(1 << 20, 64 * K);
  s.top->put_data(0, test::random_bytes(128 * K, 13));
  s.map(8, 4, 1, DMU_MAP_WRITE);  // a write still waiting for its DONE
  s.map(9, 0, 2, DMU_MAP_DISCARD);
  EXPECT_TRUE(s.send(DMU_REQ_DONE, DMU_MAP_DISCARD, 9, 0, 2).empty());
  EXPECT_TRUE(s.send(DMU_REQ_DONE, DMU_MAP_DISCARD, 9, 0, 2, -EIO).empty());
  EXPECT_EQ(s.service->pending_writes(), 1u);
  EXPECT_TRUE(s.top->done_tokens.empty());
  EXPECT_TRUE(s.top->failed_tokens.empty());
  EXPECT_TRUE(s.send(DMU_REQ_DONE, DMU_MAP_WRITE, 8, 4, 1).empty());
  EXPECT_EQ(s.service->pending_writes(), 0u);
  EXPECT_EQ(s.top->done_tokens.size(), 1u);
}

// The guest's write landed but the engine cannot record it: the image still
// shows the old contents, so the kernel must drop its extent and nothing may
// serve the block again (read-ahead and pushes would show stale data).
TEST(Done, AWriteTheEngineCannotRecordIsLostLoudly) {
  Rig s;
  s.build(1 << 20, 64 * K);
  s.map(8, 3, 1, DMU_MAP_WRITE);  // allocates block 3's cluster
  EXPECT_TRUE(s.map(7, 3, 1).empty()) << "a read of block 3 waits for the DONE";
  s.top->fail_write_done(EIO);
  auto out = s.send(DMU_REQ_DONE, DMU_MAP_WRITE, 8, 3, 1);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].type, uint32_t(DMU_RSP_INVALIDATE));
  EXPECT_EQ(out[0].block, 3u);
  EXPECT_EQ(out[0].nr_blocks, 1u);
  EXPECT_EQ(out[1].type, uint32_t(DMU_RSP_COMPLETE)) << "the waiting read fails";
  EXPECT_EQ(out[1].id, 7u);
  EXPECT_EQ(out[1].status, -EIO);

  for (uint32_t flags : {0u, uint32_t(DMU_MAP_WRITE)}) {
    out = s.map(9, 3, 1, flags);
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].type, uint32_t(DMU_RSP_COMPLETE));
    EXPECT_EQ(out[0].status, -EIO);
  }
  out = s.map(10, 2, 3, DMU_MAP_WRITE);  // blocks 2-4: 3 is lost
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].status, -EIO);
  // A read from block 1 ends before block 3; block 4 is served.
  auto extents = of_type(s.map(11, 1, 1), DMU_RSP_EXTENT);
  ASSERT_FALSE(extents.empty());
  EXPECT_EQ(extents.back().block + extents.back().nr_blocks, 3u);
  extents = of_type(s.map(12, 4, 1), DMU_RSP_EXTENT);
  ASSERT_FALSE(extents.empty());
  EXPECT_EQ(extents.front().block, 4u);
  std::vector<dmu_response> pushed;
  s.service->push(0, DMU_PUSH_ID | 1, pushed);
  ASSERT_FALSE(pushed.empty());
  for (const auto& e : of_type(pushed, DMU_RSP_EXTENT))
    EXPECT_TRUE(e.block + e.nr_blocks <= 3 || e.block > 3) << "a push covers block 3";
  // No COMMIT succeeds any more: the kernel keeps its record of the write
  // for a new mapping process to adopt.
  out = s.send(DMU_REQ_COMMIT, 0, 13, 0, 0);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].type, uint32_t(DMU_RSP_COMMITTED));
  EXPECT_EQ(out[0].status, -EIO);
}

// An engine may record a write and still report a failure (qcow2 when the
// early commit after it fails): the block is lost all the same, though the
// image now shows it allocated, and a write answer for its neighbour must
// not hand the kernel a writable extent over it.  (This fake's in-place
// answers never run past the asked blocks; the guard for engines whose do,
// after fit() in map_service_write.cc, has no test of its own.)
TEST(Done, AWriteRecordedButReportedFailedIsLostToo) {
  Rig s;
  s.build(1 << 20, 64 * K);
  s.top->put_data(0, test::random_bytes(64 * K, 3));  // block 0, in place
  s.map(8, 1, 1, DMU_MAP_WRITE);                      // block 1, fresh
  s.top->fail_write_done(EIO, /*applied=*/true);
  ASSERT_EQ(of_type(s.send(DMU_REQ_DONE, DMU_MAP_WRITE, 8, 1, 1), DMU_RSP_INVALIDATE).size(), 1u);
  ASSERT_EQ(s.top->map(64 * K, 512)->kind, formats::MapKind::Data) << "the write was recorded";
  for (uint32_t flags : {0u, uint32_t(DMU_MAP_WRITE)}) {
    auto out = s.map(9, 1, 1, flags);
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].status, -EIO);
  }
  for (uint32_t flags : {0u, uint32_t(DMU_MAP_WRITE)})
    for (const auto& e : of_type(s.map(10, 0, 1, flags), DMU_RSP_EXTENT))
      EXPECT_LE(e.block + e.nr_blocks, 1u) << "an answer for block 0 covers block 1";
}

// Adopting a DONE record the engine cannot take in fails the bind (served,
// the block would be lost); the kernel keeps the record for the next try.
TEST(Adopt, ADoneRecordTheEngineCannotTakeInFailsTheAdoption) {
  Rig s;
  s.build(1 << 20, 64 * K);
  s.top->fail_write_done(EIO);
  const dmu_allocation records[] = {{1, 3, 1, 3 * 128, 0, DMU_ALLOC_DONE}};
  auto adopted = s.service->adopt(records);
  ASSERT_FALSE(adopted);
  EXPECT_EQ(adopted.error().code, EIO);
  EXPECT_NE(adopted.error().message.find("allocation id 1"), std::string::npos)
      << adopted.error().message;
}

TEST(Done, ForAnUnknownIdIsIgnoredWhateverItsFields) {
  Rig s;
  s.build(1 << 20, 64 * K);
  s.map(9, 3, 1, DMU_MAP_WRITE);
  // Queued for a daemon that died, or redelivered after a restart.
  EXPECT_TRUE(s.send(DMU_REQ_DONE, DMU_MAP_WRITE, 1234, 3, 1).empty());
  EXPECT_TRUE(s.send(DMU_REQ_DONE, DMU_MAP_WRITE, 1235, 3, 1, -EIO).empty());
  EXPECT_TRUE(s.send(DMU_REQ_DONE, 0, DMU_PUSH_ID | 7, 0, 0).empty());
  EXPECT_EQ(s.service->pending_writes(), 1u);
  EXPECT_TRUE(s.top->done_tokens.empty());
  EXPECT_TRUE(s.top->failed_tokens.empty());
}

TEST(Commit, EngineFailureIsReportedInCommitted) {
  Rig s;
  s.build(1 << 20, 64 * K);
  s.top->fail_commit(ENOSPC);
  auto out = s.send(DMU_REQ_COMMIT, 0, 3, 0, 0);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].type, uint32_t(DMU_RSP_COMMITTED));
  EXPECT_EQ(out[0].status, -ENOSPC);
  EXPECT_EQ(out[0].id, 3u);
}

}  // namespace
}  // namespace dmu::mapper

// The same pending-list property with the real qcow2 engine on the crash
// simulator: an allocation answered to a MAP write is not made durable by a
// COMMIT that comes before its DONE, and is after it.
namespace dmu::mapper {
namespace {

class RealEnginePendingList : public ::testing::Test {
 protected:
  void SetUp() override {
    auto r = test::run("cd " + test::shell_quote(dir_.path()) +
                       " && qemu-img create -q -f qcow2 img.qcow2 1M");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    image_ = test::read_file(dir_.file("img.qcow2"));
  }
  // The image opened read-write on env and a map service over it (its
  // scratch store in scratch_env_); null after a failed open.
  struct Served {
    std::unique_ptr<formats::Chain> chain;
    std::unique_ptr<MapService> service;
  };
  Served serve(FaultEnv& env) {
    env.set_contents("img.qcow2", image_);
    formats::ChainOptions o;
    o.access = formats::Access::ReadWrite;
    auto chain = formats::Chain::open(env, "img.qcow2", o);
    EXPECT_TRUE(chain) << chain.error().message;
    if (!chain) return {};
    auto scratch =
        ScratchStore::create(scratch_env_, "s", 1 << 20, choose_block_size(**chain), false);
    auto service = *MapService::create(**chain, std::move(*scratch), {});
    return {std::move(*chain), std::move(service)};
  }

  // Opens the image on env, answers a MAP write of block 0 and optionally
  // its DONE, then COMMITs and crashes keeping everything that was written.
  // Returns how guest offset 0 maps afterwards.
  formats::MapKind allocate_commit_crash(bool send_done) {
    FaultEnv env;
    {
      auto [chain, service] = serve(env);
      if (!service) return formats::MapKind::Unallocated;
      dmu_request r{};
      r.type = DMU_REQ_MAP;
      r.flags = DMU_MAP_WRITE;
      r.id = 5;
      r.nr_blocks = 1;
      std::vector<dmu_response> out;
      service->handle(r, out);
      EXPECT_EQ(out.front().type, uint32_t(DMU_RSP_EXTENT));
      EXPECT_TRUE(out.front().ext_flags & DMU_EXT_NEW);
      if (send_done) {
        dmu_request done{};
        done.type = DMU_REQ_DONE;
        done.id = 5;
        service->handle(done, out);
      }
      dmu_request commit{};
      commit.type = DMU_REQ_COMMIT;
      commit.id = 6;
      out.clear();
      service->handle(commit, out);
      EXPECT_EQ(out.back().status, 0);
      env.power_cut_after(0);  // nothing after the commit reaches the disk
    }
    env.crash(CrashKeeps::Everything);
    auto chain = formats::Chain::open(env, "img.qcow2", formats::ChainOptions{});
    EXPECT_TRUE(chain) << chain.error().message;
    if (!chain) return formats::MapKind::Unallocated;
    auto m = (*chain)->top().map(0, 512);
    EXPECT_TRUE(m);
    return m ? m->kind : formats::MapKind::Unallocated;
  }

  test::TempDir dir_;
  std::vector<uint8_t> image_;
  MemEnv scratch_env_;
};

// qcow2 after a failed commit refuses to record completed writes: their
// DONE drops the kernel's extent and the block fails with EIO instead of
// showing its old contents.
TEST_F(RealEnginePendingList, DoneAfterAFailedCommitLosesTheBlockLoudly) {
  FaultEnv env;
  auto [chain, service] = serve(env);
  ASSERT_TRUE(service);
  auto send = [&](uint32_t type, uint32_t flags, uint64_t id, uint64_t block) {
    dmu_request r{};
    r.type = type;
    r.flags = flags;
    r.id = id;
    r.block = block;
    r.nr_blocks = type == DMU_REQ_COMMIT ? 0 : 1;
    std::vector<dmu_response> out;
    service->handle(r, out);
    return out;
  };
  for (auto [id, block] : {std::pair<uint64_t, uint64_t>{5, 0}, {7, 8}}) {
    const auto answer = send(DMU_REQ_MAP, DMU_MAP_WRITE, id, block);
    ASSERT_FALSE(answer.empty());
    ASSERT_TRUE(answer.front().ext_flags & DMU_EXT_NEW) << "block " << block;
  }
  send(DMU_REQ_DONE, DMU_MAP_WRITE, 7, 8);
  env.power_cut_after(0);  // the commit's first write fails
  ASSERT_LT(send(DMU_REQ_COMMIT, 0, 8, 0).back().status, 0);

  auto out = send(DMU_REQ_DONE, DMU_MAP_WRITE, 5, 0);
  ASSERT_EQ(out.size(), 1u) << service->last_error();
  EXPECT_EQ(out[0].type, uint32_t(DMU_RSP_INVALIDATE));
  EXPECT_EQ(out[0].block, 0u);
  out = send(DMU_REQ_MAP, 0, 9, 0);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].type, uint32_t(DMU_RSP_COMPLETE));
  EXPECT_EQ(out[0].status, -EIO);
}

TEST_F(RealEnginePendingList, CommitBeforeDoneLeavesTheClusterUnallocated) {
  EXPECT_EQ(allocate_commit_crash(false), formats::MapKind::Unallocated);
}

TEST_F(RealEnginePendingList, CommitAfterDoneMakesTheClusterDurable) {
  EXPECT_EQ(allocate_commit_crash(true), formats::MapKind::Data);
}

// The caller made the data durable before COMMIT (the kernel flushes its
// data devices; InprocessTransport::flush syncs what it wrote): the service
// adds no fdatasync of its own to the engine's commit, which syncs the
// image file itself first.  Before, a guest flush synced the file twice.
TEST_F(RealEnginePendingList, CommitAddsNoSyncToTheEnginesCommit) {
  FaultEnv env;
  auto [chain, service] = serve(env);
  ASSERT_TRUE(service);
  auto commit = [&](uint64_t id) {
    dmu_request c{};
    c.type = DMU_REQ_COMMIT;
    c.id = id;
    std::vector<dmu_response> out;
    const uint64_t before = env.mutations();
    service->handle(c, out);
    EXPECT_EQ(out.back().status, 0);
    return env.mutations() - before;
  };
  commit(1);  // the first may prepare the header for writing
  const uint64_t service_commit = commit(2);
  const uint64_t before = env.mutations();
  ASSERT_TRUE(chain->top().commit());
  const uint64_t engine_commit = env.mutations() - before;
  EXPECT_GE(engine_commit, 1u);  // qcow2 syncs its file before any metadata
  EXPECT_EQ(service_commit, engine_commit);
}

}  // namespace
}  // namespace dmu::mapper
