// The test daemon's model mode in its request loop against FakeKernel
// (protocol 2): COMMIT and DONE ordering through the loop, write MAPs that
// wait for a discard's DONE, and restarts — a second daemon over the same
// device adopts the kernel's unpublished records (LIST_ALLOCATIONS) and the
// redelivered DONEs and ends with the same map.  A random run checks, after
// every step and across kills at any request, that no cluster an applied
// answer still uses is handed out again, that every commit holds exactly the
// decisions whose DONE was read before its COMMIT, and that the live map is
// what the kernel applied.
#include <gtest/gtest.h>

#include <cstdlib>
#include <random>
#include <sstream>

#include "fileio/mem_env.h"
#include "tests/kmod/daemon.h"
#include "tests/kmod/model_slots.h"
#include "tests/unit/fake_kernel.h"

namespace dmu::testd {
namespace {

using model::kDataStart;
using proto::map_request;

constexpr uint32_t kBs = 8;          // 4 KiB blocks
constexpr uint64_t kSectors = 8192;  // 1024 blocks
constexpr uint64_t kSector0 = kDataStart / 512;
using Map = std::map<uint64_t, uint64_t>;

// Device 0 that remembers the map of every slot written, by generation.
class RecordingFile final : public File {
 public:
  explicit RecordingFile(std::unique_ptr<File> f) : f_(std::move(f)) {}
  const std::string& path() const override { return f_->path(); }
  Result<size_t> read_some(uint64_t offset, std::span<uint8_t> buf) override {
    return f_->read_some(offset, buf);
  }
  Result<void> write(uint64_t offset, std::span<const uint8_t> buf) override {
    if (offset == model::slot_offset(0) || offset == model::slot_offset(1))
      if (auto m = model::decode_slot(buf)) {
        Map& out = slots[m->generation];
        out.clear();
        for (const auto& e : m->entries) out[e.vblock] = e.cluster;
      }
    return f_->write(offset, buf);
  }
  Result<uint64_t> size() override { return f_->size(); }
  Result<void> truncate(uint64_t size) override { return f_->truncate(size); }
  Result<void> sync() override { return f_->sync(); }
  Result<void> punch_hole(uint64_t offset, uint64_t length) override {
    return f_->punch_hole(offset, length);
  }
  std::map<uint64_t, Map> slots;  // generation -> map written

 private:
  std::unique_ptr<File> f_;
};

// One device 0, one fake kernel, and the daemon process of the moment.
struct World {
  explicit World(uint64_t clusters = 16, DaemonConfig c = {.mode = Mode::Model})
      : config(c), kernel(kSectors, kBs, {(kDataStart + clusters * kBs * 512) / 512}) {
    auto f = env.open("dev0", OpenMode::CreateTruncate);
    EXPECT_TRUE(f && (*f)->truncate(kDataStart + clusters * kBs * 512));
    dev = std::make_unique<RecordingFile>(std::move(*f));
    start();
  }

  // A daemon binds: loads the committed map and adopts the records.
  void start() {
    auto m = Model::open(*dev, kSectors, kBs);
    ASSERT_TRUE(m) << m.error().message;
    model = std::move(*m);
    const mapper::BindInfo bind = kernel.bind_info();
    auto r = Responder::create(config, Geometry::from(bind));
    ASSERT_TRUE(r) << r.error().message;
    daemon = std::make_unique<Daemon>(
        config, bind, std::move(*r), kernel, log, [this] { return now; }, model.get());
    auto adopted = daemon->adopt();
    ASSERT_TRUE(adopted) << adopted.error().message;
  }

  // The daemon dies (its unanswered requests go back to the kernel), and the
  // next one binds.
  void restart(uint64_t kill_after = 0) {
    daemon.reset();
    model.reset();
    kernel.rebind();
    config.kill_after_requests = kill_after;
    start();
  }

  void step() { ASSERT_TRUE(daemon->step(std::chrono::milliseconds(0))); }
  // Steps until the daemon read everything queued.
  void run() {
    for (int i = 0; i < 100 && kernel.queued() && !daemon->killed(); ++i) step();
  }
  Map disk() {
    auto c = model::load_committed(*dev);
    EXPECT_TRUE(c) << c.error().message;
    Map m;
    if (c && c->map)
      for (const auto& e : c->map->entries) m[e.vblock] = e.cluster;
    return m;
  }

  DaemonConfig config;
  MemEnv env;
  std::unique_ptr<RecordingFile> dev;
  FakeKernel kernel;
  std::ostringstream log;
  std::chrono::steady_clock::time_point now{};
  std::unique_ptr<Model> model;
  std::unique_ptr<Daemon> daemon;
};

uint64_t cluster_of_sector(uint64_t sector) {
  return (sector - kSector0) / kBs;
}

TEST(ModelLoop, CommitReadBeforeADoneDoesNotPublishIt) {
  World w;
  w.kernel.issue(map_request(1, 4, 1, DMU_MAP_WRITE));
  w.step();
  ASSERT_TRUE(w.kernel.completed.count(1));
  w.kernel.issue(proto::commit_request(2));
  ASSERT_TRUE(w.kernel.finish(1));  // its DONE is queued behind the COMMIT
  w.run();
  EXPECT_EQ(w.kernel.committed[2], 0);
  EXPECT_TRUE(w.disk().empty());
  EXPECT_EQ(w.kernel.unpublished(), 1u);
  w.kernel.issue(proto::commit_request(3));
  w.run();
  EXPECT_EQ(w.disk(), (Map{{4, 0}}));
  EXPECT_TRUE(w.kernel.published.count(1));
  EXPECT_NE(w.log.str().find("event=commit id=3 delay_ms=0 entries=1 generation=2"),
            std::string::npos);
}

TEST(ModelLoop, DelayedCommitWritesTheMapOfItsOwnReadingTime) {
  World w(16, {.mode = Mode::Model, .commit_delay_ms = 10});
  w.kernel.issue(map_request(1, 4, 1, DMU_MAP_WRITE));
  w.step();
  w.kernel.issue(proto::commit_request(2));
  w.step();  // read now, answered after the delay
  ASSERT_TRUE(w.kernel.finish(1));
  w.step();  // the DONE arrives while the commit waits
  EXPECT_FALSE(w.kernel.committed.count(2));
  EXPECT_EQ(w.daemon->commits_waiting(), 1u);
  EXPECT_EQ(w.model->committable().size(), 1u);
  w.now += std::chrono::milliseconds(10);
  w.step();
  EXPECT_EQ(w.kernel.committed[2], 0);
  EXPECT_TRUE(w.disk().empty());  // the map as it was when the COMMIT was read
  EXPECT_EQ(w.kernel.unpublished(), 1u);
}

TEST(ModelLoop, WriteToADiscardedBlockWaitsForTheDiscardsDone) {
  World w;
  w.kernel.issue(map_request(1, 2, 1, DMU_MAP_WRITE));
  w.step();
  ASSERT_TRUE(w.kernel.finish(1));
  w.kernel.issue(map_request(2, 2, 1, DMU_MAP_DISCARD));
  w.run();
  EXPECT_EQ(w.kernel.completed[2], 0);
  w.kernel.issue(map_request(3, 2, 1, DMU_MAP_WRITE));
  w.run();
  EXPECT_FALSE(w.kernel.completed.count(3));
  EXPECT_EQ(w.daemon->counters().deferred, 1u);
  EXPECT_EQ(w.daemon->deferred_waiting(), 1u);
  ASSERT_TRUE(w.kernel.finish(2));  // the discard's DONE
  w.run();
  ASSERT_TRUE(w.kernel.completed.count(3));
  const dmu_response& last = w.kernel.accepted.back();
  EXPECT_EQ(last.id, 3u);
  EXPECT_TRUE(last.ext_flags & DMU_EXT_NEW);
  EXPECT_EQ(cluster_of_sector(last.sector), 0u);  // the freed cluster, reused
  EXPECT_NE(w.log.str().find("event=done id=2 status=0 what=discard"), std::string::npos);
}

TEST(ModelRestart, SecondDaemonAdoptsUnpublishedRecordsAndEndsWithTheSameMap) {
  World w;
  for (uint64_t id = 1; id <= 3; ++id) w.kernel.issue(map_request(id, id * 10, 2, DMU_MAP_WRITE));
  w.run();
  ASSERT_TRUE(w.kernel.finish(1));
  w.kernel.issue(proto::commit_request(4));
  w.run();  // publishes 1
  ASSERT_TRUE(w.kernel.finish(2));
  w.run();  // 2's DONE read, not published
  w.kernel.issue(map_request(5, 10, 1, DMU_MAP_DISCARD));
  w.run();
  const Map before = w.model->live();
  EXPECT_EQ(before, (Map{{11, 1}, {20, 2}, {21, 3}, {30, 4}, {31, 5}}));
  EXPECT_EQ(w.disk(), (Map{{10, 0}, {11, 1}}));

  w.restart();
  EXPECT_NE(w.log.str().find("event=adopted records=3 discards=1"), std::string::npos);
  EXPECT_EQ(w.kernel.list_allocation_calls, 2);  // once per daemon
  EXPECT_EQ(w.model->live(), before);
  EXPECT_FALSE(w.model->cluster_free(0));  // held by the discard until its DONE
  EXPECT_EQ(w.model->pending_allocations(), 2u);
  EXPECT_EQ(w.model->pending_discards(), 1u);
  // A new write gets none of the clusters the old daemon handed out.
  w.kernel.issue(map_request(6, 40, 1, DMU_MAP_WRITE));
  w.run();  // also reads 2's DONE again
  EXPECT_EQ(cluster_of_sector(w.kernel.accepted.back().sector), 6u);
  w.kernel.finish_all();
  w.kernel.issue(proto::commit_request(7));
  w.run();
  EXPECT_EQ(w.kernel.committed[7], 0);
  EXPECT_EQ(w.disk(), (Map{{11, 1}, {20, 2}, {21, 3}, {30, 4}, {31, 5}, {40, 6}}));
  EXPECT_EQ(w.kernel.unpublished(), 0u);
  EXPECT_TRUE(w.model->cluster_free(0));
}

TEST(ModelRestart, CommitWrittenButNotAnsweredIsAnsweredByTheNextDaemon) {
  World w(16, {.mode = Mode::Model, .kill_after_requests = 4});
  w.kernel.issue(map_request(1, 0, 1, DMU_MAP_WRITE));
  w.kernel.issue(map_request(2, 1, 1, DMU_MAP_WRITE));
  w.step();  // 2 requests handled
  w.kernel.finish_all();
  w.kernel.issue(proto::commit_request(3));
  w.step();  // DONE, DONE: 4 requests: dies before reading the COMMIT
  ASSERT_TRUE(w.daemon->killed());
  w.restart(3);  // this one dies right after writing the COMMIT's map
  w.step();      // the two DONEs again, then the COMMIT: COMMITTED never sent
  ASSERT_TRUE(w.daemon->killed());
  EXPECT_FALSE(w.kernel.committed.count(3));
  EXPECT_EQ(w.disk(), (Map{{0, 0}, {1, 1}}));  // on disk ahead of the kernel
  w.restart();
  EXPECT_EQ(w.model->live(), (Map{{0, 0}, {1, 1}}));
  EXPECT_EQ(w.model->pending_allocations(), 2u);
  w.run();
  EXPECT_EQ(w.kernel.committed[3], 0);
  EXPECT_EQ(w.kernel.unpublished(), 0u);
  EXPECT_EQ(w.disk(), (Map{{0, 0}, {1, 1}}));
  EXPECT_EQ(w.model->free_clusters(), 14u);
}

TEST(ModelRestart, DiscardedClusterStaysHeldAcrossARestartUntilTheDiscardsDone) {
  World w;
  w.kernel.issue(map_request(1, 0, 1, DMU_MAP_WRITE));
  w.run();
  ASSERT_TRUE(w.kernel.finish(1));
  w.kernel.issue(map_request(2, 0, 1, DMU_MAP_DISCARD));
  w.kernel.issue(proto::commit_request(3));
  w.run();  // publishes the allocation; the discard awaits DONE
  EXPECT_EQ(w.disk(), (Map{{0, 0}}));
  w.restart();
  EXPECT_TRUE(w.model->live().empty());
  EXPECT_FALSE(w.model->cluster_free(0));
  w.kernel.issue(map_request(4, 7, 1, DMU_MAP_WRITE));
  w.run();
  EXPECT_EQ(cluster_of_sector(w.kernel.accepted.back().sector), 1u);
  ASSERT_TRUE(w.kernel.finish(2));
  w.run();
  EXPECT_TRUE(w.model->cluster_free(0));
}

TEST(ModelLoop, CleanExitCommitsWhatIsCommittable) {
  World w;
  w.kernel.issue(map_request(1, 6, 1, DMU_MAP_WRITE));
  w.kernel.issue(map_request(2, 7, 1, DMU_MAP_WRITE));
  w.run();
  ASSERT_TRUE(w.kernel.finish(1));
  w.run();
  w.daemon->final_commit();
  EXPECT_EQ(w.disk(), (Map{{6, 0}}));  // 2's DONE has not arrived
  EXPECT_NE(w.log.str().find("event=final_commit entries=1 generation=1 status=0"),
            std::string::npos);
  w.daemon->report_counters();
  EXPECT_NE(w.log.str().find("event=model clusters=16 free=14 draining=0 mapped=2 committable=1 "
                             "pending_allocations=1"),
            std::string::npos);
}

// --- Random runs -----------------------------------------------------------

// What the kernel applied, rebuilt from the accepted messages only.
class Oracle {
 public:
  explicit Oracle(World& w) : w_(w) {}

  void issue(const dmu_request& q) {
    issued_[q.id] = q;
    w_.kernel.issue(q);
  }
  const std::set<uint64_t>& awaiting_done() const { return awaiting_done_; }

  // The DONE of `id` is queued with `status`; mirrors what the kernel does.
  void finished(uint64_t id, int32_t status) {
    awaiting_done_.erase(id);
    if (auto h = held_.find(id); h != held_.end()) held_.erase(h);
    // A failed answer: the kernel dropped its NEW extents and no I/O uses
    // their clusters any more, even where a discard unmapped them since.
    if (status != 0)
      for (auto [block, cluster] : fresh_[id]) {
        if (auto m = mapping_.find(block); m != mapping_.end() && m->second == cluster) {
          mapping_.erase(m);
          dropped_.emplace(block, cluster);
        }
        for (auto& [discard, clusters] : held_) clusters.erase(cluster);
      }
    if (status != 0) failed_.insert(id);
  }

  // Checks every message accepted since the last call.
  void absorb() {
    const auto& acc = w_.kernel.accepted;
    for (; seen_ < acc.size(); ++seen_) {
      const dmu_response& r = acc[seen_];
      SCOPED_TRACE(proto::describe(r));
      if (r.type == DMU_RSP_EXTENT) extent(r);
      if (r.type == DMU_RSP_COMPLETE) complete(r);
      if (r.type == DMU_RSP_COMMITTED && r.status == 0) commit_check(r.id);
      if ((r.type == DMU_RSP_EXTENT && (r.flags & DMU_RSP_FINAL)) || r.type == DMU_RSP_COMPLETE)
        if (issued_[r.id].flags & (DMU_MAP_WRITE | DMU_MAP_DISCARD)) awaiting_done_.insert(r.id);
    }
  }

  const Map& mapping() const { return mapping_; }

 private:
  struct Decision {
    uint64_t id;
    std::optional<uint64_t> cluster;  // none: a discard
  };

  bool in_use(uint64_t cluster) const {
    for (const auto& [block, c] : mapping_)
      if (c == cluster) return true;
    for (const auto& [id, clusters] : held_)
      if (clusters.count(cluster)) return true;
    return false;
  }

  void extent(const dmu_response& r) {
    const dmu_request& q = issued_.at(r.id);
    for (uint64_t i = 0; i < r.nr_blocks; ++i) {
      const uint64_t b = r.block + i;
      if (r.kind == DMU_EXT_ZERO) {
        EXPECT_FALSE(mapping_.count(b)) << "block " << b << " answered ZERO while mapped";
        continue;
      }
      const uint64_t c = cluster_of_sector(r.sector) + i;
      if (r.ext_flags & DMU_EXT_NEW) {
        EXPECT_TRUE(q.flags & DMU_MAP_WRITE);
        EXPECT_FALSE(mapping_.count(b)) << "block " << b << " allocated again";
        EXPECT_FALSE(in_use(c)) << "cluster " << c << " handed out while in use";
        mapping_[b] = c;
        fresh_[r.id].emplace_back(b, c);
        history_[b].push_back({r.id, c});
      } else {
        // A daemon that has not read the failed DONE yet still maps the
        // block read-only (its INVALIDATE follows the DONE).
        auto m = mapping_.find(b);
        EXPECT_TRUE((m != mapping_.end() && m->second == c) ||
                    (!(r.ext_flags & DMU_EXT_WRITABLE) && dropped_.count({b, c})))
            << "block " << b << " remapped to cluster " << c;
      }
    }
  }

  void complete(const dmu_response& r) {
    const dmu_request& q = issued_.at(r.id);
    if (!(q.flags & DMU_MAP_DISCARD) || r.status != 0) return;
    for (uint64_t b = q.block; b < q.block + q.nr_blocks; ++b) {
      history_[b].push_back({r.id, std::nullopt});
      if (auto m = mapping_.find(b); m != mapping_.end()) {
        held_[r.id].insert(m->second);
        mapping_.erase(m);
      }
    }
  }

  // The slot just committed holds, for every block, the effect of its last
  // decision whose DONE was read (status 0 for allocations) before the
  // COMMIT was read the last time.
  void commit_check(uint64_t commit_id) {
    const auto& log = w_.kernel.read_log;
    size_t at = log.size();
    while (at > 0 && !(log[at - 1].type == DMU_REQ_COMMIT && log[at - 1].id == commit_id)) --at;
    ASSERT_GT(at, 0u);
    std::set<uint64_t> read_ok;
    for (size_t i = 0; i + 1 < at; ++i)
      if (log[i].type == DMU_REQ_DONE && (log[i].status == 0 || (log[i].flags & DMU_MAP_DISCARD)))
        read_ok.insert(log[i].id);
    Map expected;
    for (const auto& [block, decisions] : history_) {
      for (auto d = decisions.rbegin(); d != decisions.rend(); ++d) {
        // A failed allocation changed nothing; a discard counts whatever its status.
        if (!read_ok.count(d->id) || (d->cluster && failed_.count(d->id))) continue;
        if (d->cluster) expected[block] = *d->cluster;
        break;
      }
    }
    // The slot this commit wrote (the daemon logs its generation).
    const std::string text = w_.log.str();
    const size_t line = text.rfind("event=commit id=" + std::to_string(commit_id) + " ");
    ASSERT_NE(line, std::string::npos);
    const size_t g = text.find("generation=", line);
    const uint64_t generation = std::stoull(text.substr(g + 11));
    ASSERT_TRUE(w_.dev->slots.count(generation));
    const Map disk = w_.dev->slots[generation];
    // On a mismatch, the decisions of every block that differs.
    std::string why;
    for (const auto& [block, decisions] : history_) {
      auto on_disk = disk.find(block);
      auto wanted = expected.find(block);
      const bool same = on_disk == disk.end()
                            ? wanted == expected.end()
                            : wanted != expected.end() && on_disk->second == wanted->second;
      if (same) continue;
      // Appended piece by piece: g++ 12 -O3 warns -Wrestrict on `"x" + std::string`.
      why += "\n  block ";
      why += std::to_string(block);
      why += ':';
      for (const auto& d : decisions) {
        why += ' ';
        why += std::to_string(d.id);
        if (d.cluster) {
          why += "->";
          why += std::to_string(*d.cluster);
        } else {
          why += " discard";
        }
        if (read_ok.count(d.id)) why += " (DONE read)";
        if (failed_.count(d.id)) why += " failed";
      }
    }
    EXPECT_EQ(disk, expected) << "commit " << commit_id << why;
  }

  World& w_;
  size_t seen_ = 0;
  std::map<uint64_t, dmu_request> issued_;
  Map mapping_;
  std::map<uint64_t, std::set<uint64_t>> held_;  // discard id -> clusters until its DONE
  std::map<uint64_t, std::vector<std::pair<uint64_t, uint64_t>>> fresh_;
  std::map<uint64_t, std::vector<Decision>> history_;
  std::set<uint64_t> awaiting_done_;
  std::set<uint64_t> failed_;
  std::set<std::pair<uint64_t, uint64_t>> dropped_;  // (block, cluster) of failed answers
};

TEST(ModelRestart, RandomRunsWithKillsKeepEveryClusterAndCommitRight) {
  // DMU_MODEL_SEEDS=N runs more seeds (a soak); the default keeps it quick.
  const char* env_seeds = std::getenv("DMU_MODEL_SEEDS");
  const uint32_t seeds = env_seeds ? static_cast<uint32_t>(std::atoi(env_seeds)) : 40;
  for (uint32_t seed = 1; seed <= seeds; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937 rng(seed);
    auto pick = [&](uint32_t n) { return static_cast<uint32_t>(rng() % n); };
    World w(24, {.mode = Mode::Model, .verbose = true});
    Oracle o(w);
    uint64_t next_id = 1;
    // Once the daemon read every DONE the kernel queued, its live map is
    // what the kernel applied (a failed allocation's DONE unmaps it).
    auto check_live = [&] {
      if (!w.daemon->killed() && w.kernel.queued() == 0) {
        EXPECT_EQ(w.model->live(), o.mapping());
      }
    };
    for (int op = 0; op < 400 && !::testing::Test::HasFailure(); ++op) {
      const uint32_t r = pick(100);
      if (r < 30) {
        o.issue(map_request(next_id++, pick(40), 1 + pick(3), DMU_MAP_WRITE));
      } else if (r < 38) {
        o.issue(map_request(next_id++, pick(40), 1 + pick(4), 0));
      } else if (r < 46) {
        o.issue(map_request(next_id++, pick(40), 1 + pick(3), DMU_MAP_DISCARD));
      } else if (r < 72 && !o.awaiting_done().empty()) {
        auto it = o.awaiting_done().begin();
        std::advance(it, pick(static_cast<uint32_t>(o.awaiting_done().size())));
        const uint64_t id = *it;
        const int32_t status = pick(10) == 0 ? -EIO : 0;
        if (w.kernel.finish(id, status)) o.finished(id, status);
      } else if (r < 82) {
        o.issue(proto::commit_request(next_id++));
      } else if (r < 86) {
        w.restart(pick(3) == 0 ? 1 + pick(12) : 0);
        check_live();
        continue;
      }
      if (pick(10) < 7) {
        w.step();
        o.absorb();
        if (w.daemon->killed()) {
          w.restart();
          check_live();
        }
        check_live();
      }
    }
    // Drain: every answer reports DONE, every deferred write gets answered.
    for (int round = 0; round < 50; ++round) {
      w.run();
      o.absorb();
      if (w.daemon->killed()) w.restart();
      if (o.awaiting_done().empty() && w.kernel.queued() == 0 && !w.daemon->deferred_waiting())
        break;
      for (uint64_t id : std::set<uint64_t>(o.awaiting_done()))
        if (w.kernel.finish(id, 0)) o.finished(id, 0);
    }
    w.restart();  // and once more from a cold start
    w.kernel.issue(proto::commit_request(next_id++));
    w.run();
    o.absorb();
    EXPECT_EQ(w.kernel.unpublished(), 0u);
    EXPECT_EQ(w.model->live(), o.mapping());
    EXPECT_EQ(w.disk(), o.mapping());
    EXPECT_EQ(w.model->free_clusters() + o.mapping().size(), 24u);
    if (::testing::Test::HasFailure()) {
      std::cerr << w.log.str();
      break;
    }
  }
}

}  // namespace
}  // namespace dmu::testd
