// One decision per block at a time: a MAP whose first block lies in a write
// answer whose DONE has not been handled waits in the service and is
// answered, in arrival order, once that DONE is (mapper/map_service.h).
// On the fake engine for the answer shapes, and on the real qcow, vmdk and
// qcow2 engines for the case that failed before: a second write into a
// cluster being allocated (qcow and vmdk refuse a second preparation of it
// with EBUSY, which the guest saw as an I/O error).
#include <gtest/gtest.h>

#include <random>

#include "tests/support/fault_env.h"
#include "formats/chain.h"
#include "mapper/block_ranges.h"
#include "mapper/map_service.h"
#include "mapper/protocol.h"
#include "tests/support/test_support.h"
#include "tests/unit/fake_image.h"
#include "tests/unit/qcow2_test_helpers.h"

namespace dmu::mapper {
namespace {

constexpr uint64_t K = 1024;

TEST(BlockRanges, OverlapsCoveredUntilAndNextStart) {
  BlockRanges r;
  EXPECT_FALSE(r.overlaps(0, 100));
  r.add(10, 5);  // [10, 15)
  r.add(15, 2);  // [15, 17), adjacent
  r.add(12, 1);  // inside the first
  EXPECT_FALSE(r.overlaps(0, 10));
  EXPECT_TRUE(r.overlaps(0, 11));
  EXPECT_TRUE(r.overlaps(14, 1));
  EXPECT_FALSE(r.overlaps(17, 5));
  EXPECT_EQ(r.covered_until(9), 9u);
  EXPECT_EQ(r.covered_until(10), 17u) << "adjacent ranges continue each other";
  EXPECT_EQ(r.covered_until(16), 17u);
  EXPECT_EQ(r.next_start_after(9), 10u);
  EXPECT_EQ(r.next_start_after(12), 15u);
  EXPECT_EQ(r.next_start_after(15), UINT64_MAX);
  r.remove(10, 5);
  EXPECT_FALSE(r.overlaps(10, 2));
  EXPECT_TRUE(r.overlaps(12, 1));
  r.remove(12, 1);
  r.remove(15, 2);
  EXPECT_TRUE(r.empty());
}

// Against a brute-force model: random adds and removes (duplicates,
// touching and nested ranges), every query checked at every step.
TEST(BlockRanges, AgreesWithABruteForceModel) {
  std::mt19937_64 rng(7);
  BlockRanges r;
  std::vector<std::pair<uint64_t, uint64_t>> model;  // (first, count), with duplicates
  auto covered = [&](uint64_t b) {
    for (auto [f, n] : model)
      if (f <= b && b < f + n) return true;
    return false;
  };
  for (int step = 0; step < 3000; ++step) {
    if (model.empty() || rng() % 3) {
      uint64_t f = rng() % 200, n = 1 + rng() % 12;
      r.add(f, n);
      model.emplace_back(f, n);
    } else {
      size_t i = rng() % model.size();
      r.remove(model[i].first, model[i].second);
      model.erase(model.begin() + long(i));
    }
    const uint64_t q = rng() % 220, qn = 1 + rng() % 20;
    bool any = false;
    for (uint64_t b = q; b < q + qn; ++b) any = any || covered(b);
    ASSERT_EQ(r.overlaps(q, qn), any) << "step " << step;
    uint64_t until = q;
    while (covered(until)) ++until;
    ASSERT_EQ(r.covered_until(q), until) << "step " << step;
    uint64_t next = UINT64_MAX;
    for (auto [f, n] : model)
      if (f > q) next = std::min(next, f);
    ASSERT_EQ(r.next_start_after(q), next) << "step " << step;
    ASSERT_EQ(r.size(), model.size());
  }
}

struct FakeRig {
  MemEnv env;
  test::FakeImage* top = nullptr;
  std::unique_ptr<formats::Chain> chain;
  std::unique_ptr<MapService> service;

  FakeRig() {
    std::vector<std::unique_ptr<formats::Image>> images;
    auto t = std::make_unique<test::FakeImage>(env, "top", 1 << 20, 64 * K, 0);  // 16 blocks
    top = t.get();
    images.push_back(std::move(t));
    chain = *formats::Chain::assemble(std::move(images), formats::Access::ReadWrite);
    auto scratch = ScratchStore::create(env, "scratch", 16 << 20, 64 * K, false);
    service = std::move(*MapService::create(*chain, std::move(*scratch), {}));
  }
  std::vector<dmu_response> ask(const dmu_request& r) {
    std::vector<dmu_response> out;
    service->handle(r, out);
    return out;
  }
  std::vector<dmu_response> map(uint64_t id, uint64_t block, uint64_t nr, uint32_t flags = 0) {
    return ask(proto::map_request(id, block, nr, flags));
  }
  std::vector<dmu_response> done(uint64_t id, int32_t status = 0) {
    return ask(proto::done_request(id, status));
  }
};

std::vector<uint64_t> ids_of(const std::vector<dmu_response>& v) {
  std::vector<uint64_t> ids;
  for (const auto& m : v)
    if (m.type != DMU_RSP_INVALIDATE && (ids.empty() || ids.back() != m.id)) ids.push_back(m.id);
  return ids;
}

TEST(MapWait, AReadOfABlockInFlightIsAnsweredAfterItsDoneWithTheNewMapping) {
  FakeRig s;
  auto w = s.map(9, 5, 1, DMU_MAP_WRITE);
  ASSERT_FALSE(w.empty());
  ASSERT_TRUE(w.front().ext_flags & DMU_EXT_NEW);
  EXPECT_TRUE(s.map(11, 5, 1).empty()) << "answered from the engine mid-write";
  EXPECT_EQ(s.service->waiting_requests(), 1u);
  auto out = s.done(9);
  ASSERT_FALSE(out.empty());
  EXPECT_EQ(out.front().id, 11u);
  EXPECT_EQ(out.front().type, uint32_t(DMU_RSP_EXTENT));
  EXPECT_EQ(out.front().block, 5u);
  EXPECT_EQ(out.front().sector, w.front().sector) << "the new cluster, not the old mapping";
  EXPECT_EQ(s.service->waiting_requests(), 0u);
}

TEST(MapWait, AWriteWhoseLaterBlocksAreInFlightIsAnsweredUpToThem) {
  FakeRig s;
  ASSERT_FALSE(s.map(9, 5, 1, DMU_MAP_WRITE).empty());
  auto out = s.map(10, 3, 4, DMU_MAP_WRITE);  // blocks 3..6
  ASSERT_FALSE(out.empty());
  for (const auto& m : out) {
    if (m.type == DMU_RSP_EXTENT) {
      EXPECT_LE(m.block + m.nr_blocks, 5u) << "mapped block 5 again";
    }
  }
  EXPECT_EQ(s.service->waiting_requests(), 0u);
  // A read stops there too: blocks 3..5 are in flight now.
  auto r = s.map(12, 0, 8);
  ASSERT_FALSE(r.empty());
  EXPECT_EQ(r.back().block + r.back().nr_blocks, 3u);
}

TEST(MapWait, RequestsForABlockAreAnsweredInArrivalOrderAndDiscardsWaitForAnyBlock) {
  FakeRig s;
  ASSERT_FALSE(s.map(9, 5, 1, DMU_MAP_WRITE).empty());
  EXPECT_TRUE(s.map(10, 5, 1, DMU_MAP_WRITE).empty());
  EXPECT_TRUE(s.map(11, 5, 1).empty());
  EXPECT_TRUE(s.map(12, 4, 3, DMU_MAP_DISCARD).empty()) << "discard of 4..6";
  // Block 4 is not in flight, but the discard asked for it first.
  EXPECT_TRUE(s.map(13, 4, 1, DMU_MAP_WRITE).empty());
  EXPECT_EQ(s.service->waiting_requests(), 4u);
  auto out = s.done(9);
  // 10 rewrites block 5 in place (nothing in flight after it), 11 reads it,
  // the discard and 13 follow.
  EXPECT_EQ(ids_of(out), (std::vector<uint64_t>{10, 11, 12, 13}));
  EXPECT_EQ(s.service->waiting_requests(), 0u);
}

TEST(MapWait, ARefusedWriteAnswerIsResolvedAsFailedAndItsWaitersAnswered) {
  FakeRig s;
  ASSERT_FALSE(s.map(9, 5, 1, DMU_MAP_WRITE).empty());
  EXPECT_TRUE(s.map(11, 5, 1).empty());
  std::vector<dmu_response> out;
  s.service->refused(9, out);
  ASSERT_GE(out.size(), 1u);
  EXPECT_EQ(out[0].id, 11u) << "no INVALIDATE: nothing of a refused answer was applied";
  EXPECT_EQ(out[0].type, uint32_t(DMU_RSP_EXTENT));
  EXPECT_EQ(s.top->failed_tokens.size(), 1u);
  EXPECT_EQ(s.service->pending_writes(), 0u);
  // The kernel's DONE -EIO for it, if one comes, finds nothing.
  EXPECT_TRUE(s.done(9, -EIO).empty());
}

// The real engines: two writes into one cluster (grain), the second asked
// before the first's DONE, as two guest writes in flight at once make the
// kernel do.
class RealEngineSecondWrite : public testing::TestWithParam<const char*> {};

TEST_P(RealEngineSecondWrite, IntoAClusterBeingAllocatedIsAnsweredInPlaceAfterTheDone) {
  const std::string fmt = GetParam();
  test::TempDir dir;
  const std::string img = dir.file("img." + fmt);
  test::run_ok("qemu-img create -q -f " + fmt + " " + test::shell_quote(img) + " 4M");
  formats::ChainOptions o;
  o.format = fmt;
  o.access = formats::Access::ReadWrite;
  auto chain = formats::Chain::open(posix_env(), img, o);
  ASSERT_TRUE(chain) << chain.error().message;
  const uint64_t block = choose_block_size(**chain);
  auto scratch = ScratchStore::create(posix_env(), dir.file("scratch"), 8 << 20, block, false);
  ASSERT_TRUE(scratch) << scratch.error().message;
  auto service = MapService::create(**chain, std::move(*scratch), {});
  ASSERT_TRUE(service) << service.error().message;
  MapService& svc = **service;
  auto ask = [&](const dmu_request& r) {
    std::vector<dmu_response> out;
    svc.handle(r, out);
    return out;
  };
  // Returns the extent of `out` that holds block 2 (type 0 if none).
  auto extent_of_block = [](const std::vector<dmu_response>& out, uint64_t id) {
    for (const auto& m : out)
      if (m.id == id && m.type == DMU_RSP_EXTENT && m.block <= 2 && 2 < m.block + m.nr_blocks)
        return m;
    return dmu_response{};
  };
  auto write_block = [&](const dmu_response& e, uint8_t value) {
    std::vector<uint8_t> bytes(block, value);
    const uint64_t at = e.sector * 512 + (2 - e.block) * block;
    ASSERT_TRUE(svc.devices()[e.dev]->write(at, bytes));
  };

  auto first = extent_of_block(ask(proto::map_request(1, 2, 1, DMU_MAP_WRITE)), 1);
  ASSERT_EQ(first.type, uint32_t(DMU_RSP_EXTENT));
  ASSERT_TRUE(first.ext_flags & DMU_EXT_NEW);
  auto second = ask(proto::map_request(2, 2, 1, DMU_MAP_WRITE));
  EXPECT_TRUE(second.empty()) << fmt << ": answered before the first write's DONE: "
                              << (second.empty() ? "" : svc.last_error());
  write_block(first, 0xa1);
  auto after = ask(proto::done_request(1, 0));
  auto in_place = extent_of_block(after, 2);
  ASSERT_EQ(in_place.type, uint32_t(DMU_RSP_EXTENT)) << fmt << ": " << svc.last_error();
  EXPECT_EQ(in_place.ext_flags, uint32_t(DMU_EXT_WRITABLE)) << "in place, no second fill";
  EXPECT_EQ(in_place.dev, first.dev);
  EXPECT_EQ(in_place.sector + (in_place.block - first.block) * (block / 512), first.sector)
      << "the cluster the first write allocated";
  write_block(in_place, 0xb2);
  EXPECT_TRUE(ask(proto::done_request(2, 0)).empty());
  auto committed = ask(proto::commit_request(3));
  ASSERT_FALSE(committed.empty());
  EXPECT_EQ(committed.back().status, 0) << svc.last_error();
  service->reset();
  chain->reset();
  test::run_ok("qemu-io -f " + fmt + " -c " +
               test::shell_quote("read -P 0xb2 " + std::to_string(2 * block) + " " +
                                 std::to_string(block)) +
               " " + test::shell_quote(img) + " | grep -q 'read '");
  if (fmt != "qcow") {  // qemu-img cannot check qcow
    auto check = test::run("qemu-img check -q -f " + fmt + " " + test::shell_quote(img));
    EXPECT_EQ(check.exit_code, 0) << check.output;
  }
}

INSTANTIATE_TEST_SUITE_P(Formats, RealEngineSecondWrite, testing::Values("qcow", "vmdk", "qcow2"));

}  // namespace
}  // namespace dmu::mapper
