// The test daemon's model mode (tests/kmod/model.h), message by message, on
// an in-memory device 0: allocation of the lowest free cluster, DONE before
// COMMIT (a commit never publishes an allocation whose DONE it did not see),
// discards that free their clusters only at their DONE, slots that alternate
// with generation + 1, and the fallback to the other slot when one is torn.
// The restart tests (test_daemon_restart_test.cc) run it in the daemon loop.
#include <gtest/gtest.h>

#include <cstring>

#include "tests/support/fault_env.h"
#include "fileio/mem_env.h"
#include "mapper/protocol.h"
#include "tests/kmod/model.h"
#include "tests/kmod/model_device.h"
#include "tests/kmod/model_slots.h"
#include "tests/support/test_support.h"

namespace dmu::testd {
namespace {

using test::CrashKeeps;
using test::FaultEnv;

using model::Entry;
using model::kDataStart;
using proto::map_request;

constexpr uint32_t kBs = 8;                      // 4 KiB blocks
constexpr uint64_t kB = kBs * 512;               //
constexpr uint64_t kSectors = 8192;              // 1024 blocks
constexpr uint64_t kClusters = 16;               // far fewer clusters than blocks
constexpr uint64_t kSector0 = kDataStart / 512;  // sector of cluster 0

std::unique_ptr<File> make_device(Env& env, uint64_t clusters = kClusters) {
  auto f = env.open("dev0", OpenMode::CreateTruncate);
  EXPECT_TRUE(f) << f.error().message;
  EXPECT_TRUE((*f)->truncate(kDataStart + clusters * kB));
  EXPECT_TRUE((*f)->sync());
  EXPECT_TRUE(env.sync_directory_of("dev0"));
  return std::move(*f);
}

std::unique_ptr<Model> open_model(File& dev) {
  auto m = Model::open(dev, kSectors, kBs);
  EXPECT_TRUE(m) << m.error().message;
  return m ? std::move(*m) : nullptr;
}

std::vector<dmu_response> answer(Model& m, const dmu_request& q) {
  auto a = m.answer_map(q);
  EXPECT_TRUE(a) << proto::describe(q) << " had to wait";
  return a ? *a : std::vector<dmu_response>{};
}

std::vector<std::string> described(const std::vector<dmu_response>& v) {
  std::vector<std::string> out;
  for (const auto& r : v) out.push_back(proto::describe(r));
  return out;
}

std::string sector(uint64_t cluster) {
  return std::to_string(kSector0 + cluster * kBs);
}

DoneKind done(Model& m, const dmu_request& map, int32_t status = 0) {
  std::vector<dmu_response> out;
  return m.done(proto::done_for(map, status), out);
}

Result<void> commit(Model& m) {
  return m.commit(m.snapshot());
}

std::map<uint64_t, uint64_t> on_disk(File& dev) {
  auto c = model::load_committed(dev);
  EXPECT_TRUE(c) << c.error().message;
  std::map<uint64_t, uint64_t> out;
  if (c && c->map)
    for (const Entry& e : c->map->entries) out[e.vblock] = e.cluster;
  return out;
}

TEST(ModelFormat, EncodedSlotDecodesAndAnyFlippedByteInvalidatesIt) {
  const std::vector<Entry> entries = {{3, 0}, {7, 5}, {900, 2}};
  auto bytes = model::encode_slot(4, kB, entries);
  EXPECT_EQ(bytes.size() % 4096, 0u);
  auto m = model::decode_slot(bytes);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->generation, 4u);
  EXPECT_EQ(m->block_bytes, kB);
  ASSERT_EQ(m->entries.size(), 3u);
  EXPECT_EQ(m->entries[1].vblock, 7u);
  EXPECT_EQ(m->entries[1].cluster, 5u);
  for (size_t at : {size_t{0}, size_t{9}, size_t{40}, size_t{4096}, size_t{4096 + 47}}) {
    auto broken = bytes;
    broken[at] ^= 1;
    EXPECT_FALSE(model::decode_slot(broken)) << "byte " << at;
  }
}

TEST(Model, EmptyDevice_HasNoMapAndEveryClusterFree) {
  MemEnv env;
  auto dev = make_device(env);
  auto m = open_model(*dev);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->stats().clusters, kClusters);
  EXPECT_EQ(m->free_clusters(), kClusters);
  EXPECT_TRUE(m->live().empty());
  EXPECT_EQ(m->newest_slot(), -1);
}

TEST(Model, TooSmallDevice_IsRefused) {
  MemEnv env;
  auto dev = make_device(env, 0);
  EXPECT_FALSE(Model::open(*dev, kSectors, kBs));
}

TEST(Model, Write_AllocatesTheLowestFreeClustersAsOneNewExtent) {
  MemEnv env;
  auto dev = make_device(env);
  auto m = open_model(*dev);
  EXPECT_EQ(described(answer(*m, map_request(1, 10, 3, DMU_MAP_WRITE))),
            std::vector<std::string>{"EXTENT id=1 block=10+3 REMAP dev=0 sector=" + sector(0) +
                                     " writable new final"});
  EXPECT_EQ(m->cluster_of(12), 2u);
  EXPECT_EQ(m->free_clusters(), kClusters - 3);
  EXPECT_EQ(m->pending_allocations(), 1u);
  EXPECT_TRUE(m->committable().empty());  // nothing before DONE
}

TEST(Model, Write_OverMappedAndUnmappedBlocksMixesRemapAndNew) {
  MemEnv env;
  auto dev = make_device(env);
  auto m = open_model(*dev);
  const auto first = map_request(1, 5, 1, DMU_MAP_WRITE);
  answer(*m, first);
  EXPECT_EQ(done(*m, first), DoneKind::Allocation);
  EXPECT_EQ(described(answer(*m, map_request(2, 4, 3, DMU_MAP_WRITE))),
            (std::vector<std::string>{
                "EXTENT id=2 block=4+1 REMAP dev=0 sector=" + sector(1) + " writable new",
                "EXTENT id=2 block=5+1 REMAP dev=0 sector=" + sector(0) + " writable",
                "EXTENT id=2 block=6+1 REMAP dev=0 sector=" + sector(2) + " writable new final"}));
}

TEST(Model, Read_RemapsMappedBlocksAndZeroesTheRest) {
  MemEnv env;
  auto dev = make_device(env);
  auto m = open_model(*dev);
  const auto w = map_request(1, 2, 2, DMU_MAP_WRITE);
  answer(*m, w);
  // Before the allocation's DONE, reads may not hand out a writable extent.
  EXPECT_EQ(
      described(answer(*m, map_request(2, 2, 1, 0))),
      std::vector<std::string>{"EXTENT id=2 block=2+1 REMAP dev=0 sector=" + sector(0) + " final"});
  done(*m, w);
  EXPECT_EQ(described(answer(*m, map_request(3, 0, 6, 0))),
            (std::vector<std::string>{
                "EXTENT id=3 block=0+2 ZERO",
                "EXTENT id=3 block=2+2 REMAP dev=0 sector=" + sector(0) + " writable",
                "EXTENT id=3 block=4+2 ZERO final"}));
}

TEST(Model, Write_WhenFullFailsWithEnospcOrAnswersThePrefix) {
  MemEnv env;
  auto dev = make_device(env, 3);
  auto m = open_model(*dev);
  auto a = answer(*m, map_request(1, 0, 5, DMU_MAP_WRITE));
  ASSERT_EQ(a.size(), 1u);
  EXPECT_EQ(a[0].nr_blocks, 3u);  // the kernel asks again for blocks 3 and 4
  EXPECT_EQ(described(answer(*m, map_request(2, 3, 2, DMU_MAP_WRITE))),
            std::vector<std::string>{"COMPLETE id=2 status=-28 final"});
  EXPECT_EQ(m->stats().enospc, 1u);
}

TEST(Model, Commit_PublishesOnlyAllocationsWhoseDoneCameBeforeIt) {
  MemEnv env;
  auto dev = make_device(env);
  auto m = open_model(*dev);
  const auto a = map_request(1, 0, 1, DMU_MAP_WRITE);
  const auto b = map_request(2, 1, 1, DMU_MAP_WRITE);
  answer(*m, a);
  answer(*m, b);
  done(*m, a);
  const Model::Snapshot at_commit = m->snapshot();  // COMMIT read here
  done(*m, b);                                      // DONE read after it
  ASSERT_TRUE(m->commit(at_commit));
  EXPECT_EQ(on_disk(*dev), (std::map<uint64_t, uint64_t>{{0, 0}}));
  ASSERT_TRUE(commit(*m));
  EXPECT_EQ(on_disk(*dev), (std::map<uint64_t, uint64_t>{{0, 0}, {1, 1}}));
}

TEST(Model, FailedDone_ReleasesTheClustersAndInvalidatesTheBlocks) {
  MemEnv env;
  auto dev = make_device(env);
  auto m = open_model(*dev);
  const auto w = map_request(1, 7, 2, DMU_MAP_WRITE);
  answer(*m, w);
  std::vector<dmu_response> out;
  EXPECT_EQ(m->done(proto::done_for(w, -EIO), out), DoneKind::FailedAllocation);
  EXPECT_EQ(described(out), std::vector<std::string>{"INVALIDATE id=0 block=7+2"});
  EXPECT_FALSE(m->cluster_of(7));
  EXPECT_EQ(m->free_clusters(), kClusters);
  EXPECT_TRUE(m->committable().empty());
  EXPECT_EQ(answer(*m, map_request(2, 20, 1, DMU_MAP_WRITE))[0].sector, kSector0);  // reused
}

TEST(Model, Discard_UnmapsAtOnceButFreesTheClustersOnlyAtItsDone) {
  MemEnv env;
  auto dev = make_device(env);
  auto m = open_model(*dev);
  const auto w = map_request(1, 0, 2, DMU_MAP_WRITE);
  answer(*m, w);
  done(*m, w);
  ASSERT_TRUE(commit(*m));
  const auto d = map_request(2, 0, 1, DMU_MAP_DISCARD);
  EXPECT_EQ(described(answer(*m, d)), std::vector<std::string>{"COMPLETE id=2 status=0 final"});
  EXPECT_EQ(answer(*m, map_request(3, 0, 1, 0))[0].kind, uint32_t{DMU_EXT_ZERO});
  EXPECT_FALSE(m->cluster_free(0));  // old I/O may still be in flight there
  EXPECT_EQ(m->draining_clusters(), 1u);
  // A new allocation elsewhere does not get cluster 0 yet.
  EXPECT_EQ(answer(*m, map_request(4, 50, 1, DMU_MAP_WRITE))[0].sector, kSector0 + 2 * kBs);
  // Until its DONE the discard is not committable either: a commit keeps
  // block 0 -> cluster 0, so a restarted daemon still knows the cluster.
  ASSERT_TRUE(commit(*m));
  EXPECT_EQ(on_disk(*dev), (std::map<uint64_t, uint64_t>{{0, 0}, {1, 1}}));
  EXPECT_EQ(done(*m, d), DoneKind::Discard);
  EXPECT_TRUE(m->cluster_free(0));
  EXPECT_EQ(answer(*m, map_request(5, 60, 1, DMU_MAP_WRITE))[0].sector, kSector0);  // reused
  ASSERT_TRUE(commit(*m));
  EXPECT_EQ(on_disk(*dev), (std::map<uint64_t, uint64_t>{{1, 1}}));
}

TEST(Model, Write_ToABlockAwaitingADoneWaitsForIt) {
  MemEnv env;
  auto dev = make_device(env);
  auto m = open_model(*dev);
  const auto w = map_request(1, 3, 1, DMU_MAP_WRITE);
  answer(*m, w);
  EXPECT_FALSE(m->answer_map(map_request(2, 3, 1, DMU_MAP_WRITE)));  // allocation awaits DONE
  done(*m, w);
  const auto d = map_request(3, 3, 1, DMU_MAP_DISCARD);
  answer(*m, d);
  EXPECT_FALSE(m->answer_map(map_request(4, 3, 1, DMU_MAP_WRITE)));  // discard awaits DONE
  // A write whose first block is free is answered up to the waiting block.
  auto a = answer(*m, map_request(5, 1, 4, DMU_MAP_WRITE));
  ASSERT_EQ(a.size(), 1u);
  EXPECT_EQ(a[0].block, 1u);
  EXPECT_EQ(a[0].nr_blocks, 2u);
  done(*m, d);
  auto later = answer(*m, map_request(4, 3, 1, DMU_MAP_WRITE));
  EXPECT_TRUE(later[0].ext_flags & DMU_EXT_NEW);
}

TEST(Model, Done_UnknownIgnoredAndDuplicateHarmless) {
  MemEnv env;
  auto dev = make_device(env);
  auto m = open_model(*dev);
  const auto w = map_request(1, 0, 1, DMU_MAP_WRITE);
  answer(*m, w);
  EXPECT_EQ(done(*m, map_request(99, 0, 1, DMU_MAP_WRITE)), DoneKind::Ignored);
  EXPECT_EQ(done(*m, w), DoneKind::Allocation);
  EXPECT_EQ(done(*m, w), DoneKind::Duplicate);
  EXPECT_EQ(done(*m, w, -EIO), DoneKind::Duplicate);  // changes nothing
  EXPECT_EQ(m->cluster_of(0), 0u);
  EXPECT_EQ(m->committable().size(), 1u);
  // A DONE whose fields differ from its MAP's is counted.
  const auto v = map_request(2, 4, 1, DMU_MAP_WRITE);
  answer(*m, v);
  std::vector<dmu_response> out;
  m->done(proto::done_request(2, 0, DMU_MAP_WRITE, 5, 1), out);
  EXPECT_EQ(m->stats().done_mismatch, 1u);
}

TEST(Model, Commits_AlternateSlotsWithTheNextGenerationAndReopenFindsTheNewest) {
  MemEnv env;
  auto dev = make_device(env);
  auto m = open_model(*dev);
  for (uint64_t i = 0; i < 3; ++i) {
    const auto w = map_request(i + 1, i, 1, DMU_MAP_WRITE);
    answer(*m, w);
    done(*m, w);
    ASSERT_TRUE(commit(*m));
    EXPECT_EQ(m->newest_slot(), static_cast<int>(i % 2));
    EXPECT_EQ(m->stats().generation, i + 1);
  }
  auto c = model::load_committed(*dev);
  ASSERT_TRUE(c && c->map);
  EXPECT_EQ(c->slot, 0);
  EXPECT_EQ(c->map->generation, 3u);
  EXPECT_TRUE(c->other_valid);
  auto again = open_model(*dev);
  EXPECT_EQ(again->live(), m->live());
  EXPECT_EQ(again->stats().generation, 3u);
  EXPECT_EQ(again->free_clusters(), kClusters - 3);
  ASSERT_TRUE(commit(*again));
  EXPECT_EQ(again->newest_slot(), 1);  // never over the newest valid slot
}

TEST(Model, TornSlot_FallsBackToTheOtherAndIsWrittenAgainNext) {
  MemEnv env;
  auto dev = make_device(env);
  auto m = open_model(*dev);
  const auto a = map_request(1, 0, 1, DMU_MAP_WRITE);
  answer(*m, a);
  done(*m, a);
  ASSERT_TRUE(commit(*m));  // generation 1 in slot 0
  const auto b = map_request(2, 1, 1, DMU_MAP_WRITE);
  answer(*m, b);
  done(*m, b);
  ASSERT_TRUE(commit(*m));  // generation 2 in slot 1
  // Tear slot 1: the entries were not all written.
  auto bytes = env.contents("dev0");
  bytes[model::slot_offset(1) + model::kSuperBytes + 16] ^= 0xff;
  env.set_contents("dev0", bytes);
  auto c = model::load_committed(*dev);
  ASSERT_TRUE(c && c->map);
  EXPECT_EQ(c->slot, 0);
  EXPECT_EQ(c->map->generation, 1u);
  EXPECT_FALSE(c->other_valid);
  auto again = open_model(*dev);
  EXPECT_EQ(again->live(), (std::map<uint64_t, uint64_t>{{0, 0}}));
  EXPECT_TRUE(again->cluster_free(1));
  ASSERT_TRUE(commit(*again));
  EXPECT_EQ(again->newest_slot(), 1);
  EXPECT_EQ(again->stats().generation, 2u);
}

TEST(Model, CommittedMapIsDurableOnceCommitReturns) {
  FaultEnv env;
  auto dev = make_device(env);
  auto m = open_model(*dev);
  const auto w = map_request(1, 9, 1, DMU_MAP_WRITE);
  answer(*m, w);
  done(*m, w);
  ASSERT_TRUE(commit(*m));
  env.crash(CrashKeeps::Nothing);  // only what was synced survives
  auto reopened = env.open("dev0", OpenMode::ReadWrite);
  ASSERT_TRUE(reopened);
  EXPECT_EQ(on_disk(**reopened), (std::map<uint64_t, uint64_t>{{9, 0}}));
}

TEST(Model, CommitThatCannotBeWrittenFailsAndKeepsTheSlot) {
  FaultEnv env;
  auto dev = make_device(env);
  auto m = open_model(*dev);
  const auto w = map_request(1, 9, 1, DMU_MAP_WRITE);
  answer(*m, w);
  done(*m, w);
  ASSERT_TRUE(commit(*m));
  env.power_cut_after(1);  // the write goes through, its sync does not
  auto r = commit(*m);
  ASSERT_FALSE(r);
  EXPECT_EQ(m->stats().commit_errors, 1u);
  EXPECT_EQ(m->newest_slot(), 0);
  EXPECT_EQ(m->stats().generation, 1u);
}

// --- Adopting the records of a daemon that went away -----------------------

dmu_allocation alloc_record(uint64_t id, uint64_t block, uint64_t nr, uint64_t cluster,
                            uint32_t flags = 0) {
  return {id, block, nr, kSector0 + cluster * kBs, 0, flags};
}
dmu_allocation discard_record(uint64_t id, uint64_t block, uint64_t nr) {
  return {id, block, nr, 0, 0, DMU_ALLOC_DISCARD};
}

TEST(ModelAdopt, RecordsBecomePendingAllocationsAndDiscardsInOrder) {
  MemEnv env;
  auto dev = make_device(env);
  {
    auto first = open_model(*dev);
    const auto w = map_request(1, 5, 1, DMU_MAP_WRITE);
    answer(*first, w);
    done(*first, w);
    ASSERT_TRUE(commit(*first));  // M: 5 -> 0
  }
  auto m = open_model(*dev);
  const std::vector<dmu_allocation> records = {alloc_record(2, 7, 2, 1, DMU_ALLOC_DONE),
                                               discard_record(3, 5, 1), alloc_record(4, 9, 1, 3)};
  ASSERT_EQ(*m->adopt(records), 3u);
  EXPECT_EQ(m->live(), (std::map<uint64_t, uint64_t>{{7, 1}, {8, 2}, {9, 3}}));
  EXPECT_EQ(m->committable(), (std::map<uint64_t, uint64_t>{{5, 0}}));  // M until DONEs
  EXPECT_FALSE(m->cluster_free(0));  // the discard holds what block 5 had
  EXPECT_EQ(m->draining_clusters(), 1u);
  EXPECT_FALSE(m->answer_map(map_request(5, 8, 1, DMU_MAP_WRITE)));  // awaits 2's DONE
  EXPECT_EQ(answer(*m, map_request(6, 20, 1, DMU_MAP_WRITE))[0].sector, kSector0 + 4 * kBs);
  EXPECT_EQ(done(*m, map_request(2, 7, 2, DMU_MAP_WRITE)), DoneKind::Allocation);
  EXPECT_EQ(done(*m, map_request(3, 5, 1, DMU_MAP_DISCARD)), DoneKind::Discard);
  EXPECT_TRUE(m->cluster_free(0));
  EXPECT_EQ(m->committable(), (std::map<uint64_t, uint64_t>{{7, 1}, {8, 2}}));
  EXPECT_FALSE(m->adopt(records));  // once, before anything else
}

TEST(ModelAdopt, ALaterRecordReusingAClusterMeansTheEarlierAnswerFailed) {
  MemEnv env;
  auto dev = make_device(env);
  auto m = open_model(*dev);
  // 1 failed (its DONE with the error comes again), then 2 got its cluster.
  ASSERT_TRUE(m->adopt(std::vector<dmu_allocation>{alloc_record(1, 5, 1, 0, DMU_ALLOC_DONE),
                                                   alloc_record(2, 9, 1, 0)}));
  EXPECT_EQ(m->live(), (std::map<uint64_t, uint64_t>{{9, 0}}));
  EXPECT_EQ(m->stats().adopted_failed, 1u);
  std::vector<dmu_response> out;
  EXPECT_EQ(m->done(proto::done_request(1, -EIO, DMU_MAP_WRITE, 5, 1), out),
            DoneKind::FailedAllocation);
  EXPECT_TRUE(out.empty());  // nothing of 2's is invalidated or released
  EXPECT_FALSE(m->cluster_free(0));
  EXPECT_EQ(done(*m, map_request(2, 9, 1, DMU_MAP_WRITE)), DoneKind::Allocation);
  EXPECT_EQ(m->committable(), (std::map<uint64_t, uint64_t>{{9, 0}}));
}

TEST(ModelAdopt, SameBlockAndClusterAgainAfterAFailureBelongsToTheLaterAnswer) {
  MemEnv env;
  auto dev = make_device(env);
  auto m = open_model(*dev);
  ASSERT_TRUE(m->adopt(std::vector<dmu_allocation>{alloc_record(1, 5, 1, 0, DMU_ALLOC_DONE),
                                                   alloc_record(2, 5, 1, 0)}));
  std::vector<dmu_response> out;
  m->done(proto::done_request(1, -EIO, DMU_MAP_WRITE, 5, 1), out);
  EXPECT_TRUE(out.empty());
  EXPECT_EQ(m->cluster_of(5), 0u);
}

TEST(ModelAdopt, RecordsContradictingTheCommittedMapAreRefused) {
  MemEnv env;
  auto dev = make_device(env);
  {
    auto first = open_model(*dev);
    const auto w = map_request(1, 5, 1, DMU_MAP_WRITE);
    answer(*first, w);
    done(*first, w);
    ASSERT_TRUE(commit(*first));  // M: 5 -> 0
  }
  auto m = open_model(*dev);
  auto r = m->adopt(std::vector<dmu_allocation>{alloc_record(2, 9, 1, 0)});  // no discard of 5
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EPROTO);
  auto other = open_model(*dev);
  EXPECT_FALSE(other->adopt(std::vector<dmu_allocation>{{7, 1, 1, 512, 0, 0}}));  // not a cluster
  EXPECT_FALSE(other->adopt(std::vector<dmu_allocation>{alloc_record(7, 1, 1, kClusters)}));
  EXPECT_FALSE(other->adopt(std::vector<dmu_allocation>{discard_record(8, 1020, 9)}));
}

// The daemon's device 0 is opened O_DIRECT: commits and reloads work through
// its aligned bounce buffers (skipped where the file system has no O_DIRECT).
TEST(ModelDevice, DirectFileCommitsAndReloads) {
  test::TempDir dir;
  const std::string path = dir.file("dev0");
  test::write_file(path, std::vector<uint8_t>(kDataStart + kClusters * kB, 0));
  auto dev = model::open_direct(path);
  if (!dev && dev.error().code == EINVAL) GTEST_SKIP() << dev.error().message;
  ASSERT_TRUE(dev) << dev.error().message;
  EXPECT_EQ(*(*dev)->size(), kDataStart + kClusters * kB);
  EXPECT_FALSE((*dev)->write(512, std::vector<uint8_t>(4096)));  // unaligned
  auto m = open_model(**dev);
  const auto w = map_request(1, 3, 2, DMU_MAP_WRITE);
  answer(*m, w);
  done(*m, w);
  ASSERT_TRUE(commit(*m));
  auto again = model::open_direct(path);
  ASSERT_TRUE(again);
  EXPECT_EQ(on_disk(**again), (std::map<uint64_t, uint64_t>{{3, 0}, {4, 1}}));
  std::vector<uint8_t> odd(100);
  auto got = (*again)->read_some(0, odd);  // lengths need not be aligned
  ASSERT_TRUE(got);
  EXPECT_EQ(*got, 100u);
  EXPECT_EQ(std::memcmp(odd.data(), model::kMagic, sizeof model::kMagic), 0);
}

TEST(Model, CommittedMapFromAnotherBlockSizeIsRefused) {
  MemEnv env;
  auto dev = make_device(env);
  const std::vector<Entry> entries = {{1, 1}};
  ASSERT_TRUE(dev->write(0, model::encode_slot(1, 2 * kB, entries)));
  auto m = Model::open(*dev, kSectors, kBs);
  ASSERT_FALSE(m);
  EXPECT_NE(m.error().message.find("blocks of 8192 bytes"), std::string::npos);
}

}  // namespace
}  // namespace dmu::testd
