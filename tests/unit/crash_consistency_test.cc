// Crash consistency through the daemon's code path: a random workload of
// writes, discards and flushes runs through the in-process transport and the
// map service on the crash simulator (tests/support/fault_env.h), and is cut at
// every write and flush boundary.  After each cut the simulated disk keeps
// nothing, everything, or a random subset of what was not synced, and then
//   - the image opens and the engine's check finds no corruption,
//   - qemu-img check (on a real copy of the files) finds no corruption
//     (leaked clusters are allowed),
//   - every byte acknowledged by the last completed flush, and not written
//     again since, reads back as acknowledged.
#include <gtest/gtest.h>

#include <random>

#include "fileio/mem_env.h"
#include "formats/chain.h"
#include "mapper/inprocess_transport.h"
#include "tests/support/fault_env.h"
#include "tests/unit/cli_test_support.h"

namespace dmu::test {
namespace {

constexpr uint64_t K = 1024, M = 1024 * 1024;
constexpr uint64_t kSize = 4 * M;

struct Case {
  const char* name;
  const char* build;               // shell: makes top.img (and backing files) in a directory
  std::vector<const char*> files;  // files loaded into the simulator, top first
  bool qemu_check;
};

struct Op {
  enum Kind { Write, Discard, Flush } kind;
  uint64_t offset = 0, length = 0;
  uint8_t pattern = 0;
};

std::vector<Op> workload(uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<Op> ops;
  for (int i = 0; i < 22; ++i) {
    Op op;
    const unsigned r = rng() % 10;
    op.kind = r < 6 ? Op::Write : r < 8 ? Op::Discard : Op::Flush;
    op.offset = rng() % kSize;
    op.length = 1 + rng() % (96 * K);
    if (rng() % 3 == 0) {
      op.offset = op.offset / (64 * K) * (64 * K);
      op.length = 64 * K;
    }
    op.length = std::min(op.length, kSize - op.offset);
    op.pattern = uint8_t(1 + rng() % 250);
    ops.push_back(op);
  }
  ops.push_back(Op{Op::Flush});
  return ops;
}

// What a run did before the power went.
struct RunResult {
  std::vector<uint8_t> acked;  // guest contents at the last completed flush
  std::vector<bool> dirty;     // bytes written or discarded after it
  bool finished = false;       // every operation succeeded
};

class CrashConsistency : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    auto built = run_split(std::string("set -e; ") + GetParam().build, dir_.path(), 60);
    ASSERT_EQ(built.exit_code, 0) << built.err;
    for (const char* f : GetParam().files) initial_[f] = read_file(dir_.file(f));
    // The guest contents before the workload, through qemu-img.
    auto raw = run_split("qemu-img convert -O raw top.img initial.raw", dir_.path());
    ASSERT_EQ(raw.exit_code, 0) << raw.err;
    initial_guest_ = read_file(dir_.file("initial.raw"));
    ASSERT_EQ(initial_guest_.size(), kSize);
  }

  // Runs the workload on a fresh simulator, cut after `cut` mutations.
  RunResult run(FaultEnv& env, const std::vector<Op>& ops, uint64_t cut) {
    for (const auto& [name, bytes] : initial_) env.set_contents(name, bytes);
    RunResult r{initial_guest_, std::vector<bool>(kSize, false)};
    std::vector<uint8_t> model = initial_guest_;
    formats::ChainOptions options;
    options.access = formats::Access::ReadWrite;
    env.power_cut_after(cut);
    auto chain = formats::Chain::open(env, "top.img", options);
    if (!chain) return r;
    MemEnv scratch_env;
    const uint64_t block = mapper::choose_block_size(**chain);
    auto service = mapper::MapService::create(
        **chain, *mapper::ScratchStore::create(scratch_env, "scratch", 8 * M, block, false), {});
    if (!service) return r;
    mapper::InprocessTransport io(**service);
    for (const Op& op : ops) {
      Result<void> done;
      if (op.kind == Op::Write) {
        std::vector<uint8_t> data(op.length, op.pattern);
        std::fill(model.begin() + op.offset, model.begin() + op.offset + op.length, op.pattern);
        std::fill(r.dirty.begin() + op.offset, r.dirty.begin() + op.offset + op.length, true);
        done = io.write(op.offset, data);
      } else if (op.kind == Op::Discard) {
        // Discarded contents are the format's business: unknown afterwards.
        std::fill(r.dirty.begin() + op.offset, r.dirty.begin() + op.offset + op.length, true);
        done = io.discard(op.offset, op.length);
        if (done) {
          std::vector<uint8_t> now(op.length);
          if (auto rd = io.read(op.offset, now); rd)
            std::copy(now.begin(), now.end(), model.begin() + op.offset);
        }
      } else {
        done = io.flush();
        if (done) {
          r.acked = model;
          r.dirty.assign(kSize, false);
        }
      }
      if (!done) return r;
    }
    r.finished = true;
    return r;
  }

  void verify(FaultEnv& env, const RunResult& r, uint64_t cut, int keeps, bool qemu_check) {
    const std::string where =
        "cut after " + std::to_string(cut) + " mutations, crash keeps " + std::to_string(keeps);
    auto chain = formats::Chain::open(env, "top.img", formats::ChainOptions{});
    ASSERT_TRUE(chain) << where << ": " << chain.error().message;
    auto report = (*chain)->top().check(formats::Repair::None);
    if (report || report.error().code != ENOTSUP) {
      ASSERT_TRUE(report) << where << ": " << report.error().message;
      EXPECT_EQ(report->corruptions, 0u) << where;
      EXPECT_EQ(report->check_errors, 0u) << where;
    }
    std::vector<uint8_t> got(kSize);
    ASSERT_TRUE((*chain)->read(0, got)) << where;
    for (uint64_t i = 0; i < kSize; ++i)
      if (!r.dirty[i] && got[i] != r.acked[i]) {
        ADD_FAILURE() << where << ": acknowledged byte at " << i << " is " << int(got[i])
                      << ", expected " << int(r.acked[i]);
        break;
      }
    if (qemu_check) {
      for (const auto& [name, bytes] : initial_)
        write_file(dir_.file("crashed-" + name), env.contents(name));
      auto c = run_split("qemu-img check crashed-top.img", dir_.path());
      EXPECT_TRUE(c.exit_code == 0 || c.exit_code == 3) << where << "\n" << c.out << c.err;
    }
  }

  TempDir dir_;
  std::map<std::string, std::vector<uint8_t>> initial_;
  std::vector<uint8_t> initial_guest_;
};

TEST_P(CrashConsistency, EveryCutLeavesAConsistentImageWithAcknowledgedData) {
  const auto ops = workload(1234);
  uint64_t total = 0;
  {
    // The uncut run must do the whole workload, or the cuts below would
    // only ever test the part before its failure.
    FaultEnv env;
    RunResult whole = run(env, ops, UINT64_MAX);
    ASSERT_TRUE(whole.finished) << "the workload fails without any power cut";
    total = env.mutations();
    env.crash(CrashKeeps::Nothing);
    verify(env, whole, total, 0, false);
    ASSERT_FALSE(HasFailure()) << "the uncut workload does not read back";
  }
  ASSERT_GT(total, 10u);
  // Every cut crashes three ways (the disk keeps nothing, everything, or a
  // random subset of the unsynced writes); the engine checks and reads back
  // all three, and qemu-img check (a process each) runs on one of them,
  // rotating, so every cut is checked by QEMU too.
  for (uint64_t cut = 0; cut <= total; ++cut) {
    for (int keeps = 0; keeps < 3 && !HasFailure(); ++keeps) {
      FaultEnv env;
      RunResult r = run(env, ops, cut);
      env.crash(keeps == 0   ? CrashKeeps::Nothing
                : keeps == 1 ? CrashKeeps::Everything
                             : CrashKeeps::RandomSubset,
                uint32_t(cut));
      verify(env, r, cut, keeps, GetParam().qemu_check && keeps == int(cut % 3));
    }
    if (HasFailure()) break;
  }
}

const Case kCases[] = {
    {"Qcow2Compat11", "qemu-img create -q -f qcow2 top.img 4M", {"top.img"}, true},
    {"Qcow2Compat010", "qemu-img create -q -f qcow2 -o compat=0.10 top.img 4M", {"top.img"}, true},
    {"Qcow2LazyRefcounts",
     "qemu-img create -q -f qcow2 -o lazy_refcounts=on top.img 4M",
     {"top.img"},
     true},
    {"Qcow2OverBacking",
     "qemu-img create -q -f qcow2 -o cluster_size=4k base.qcow2 4M;"
     "qemu-io -f qcow2 base.qcow2 -c 'write -P 3 0 4M' >/dev/null;"
     "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.img",
     {"top.img", "base.qcow2"},
     true},
    {"Qcow2ExtendedL2",
     "qemu-img create -q -f qcow2 -o extended_l2=on top.img 4M",
     {"top.img"},
     true},
    {"Qcow", "qemu-img create -q -f qcow top.img 4M", {"top.img"}, false},
    {"VmdkMonolithicSparse", "qemu-img create -q -f vmdk top.img 4M", {"top.img"}, true},
};

INSTANTIATE_TEST_SUITE_P(Formats, CrashConsistency, ::testing::ValuesIn(kCases),
                         [](const auto& p) { return std::string(p.param.name); });

}  // namespace
}  // namespace dmu::test
