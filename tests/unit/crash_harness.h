// Crash safety at the engine level: a random workload of writes, zeroings and
// commits runs against images in a FaultEnv, the power is cut after every
// possible number of mutations, the disk keeps nothing / everything / a
// random subset of the unsynced writes, and the reopened image must be
// consistent (check finds no corruption) and hold every write acknowledged by
// a completed commit (CrashModel).
#pragma once

#include <gtest/gtest.h>

#include <map>
#include <random>
#include <string>
#include <vector>

#include "tests/support/fault_env.h"
#include "formats/image.h"
#include "tests/unit/engine_harness.h"

namespace dmu::test {

struct CrashOp {
  enum Kind { Write, Zero, Commit } kind;
  uint64_t offset = 0, length = 0;
  uint8_t value = 0;
};

// Sector-aligned writes (a few clusters at most) and zeroings, with commits
// in between.
inline std::vector<CrashOp> random_workload(uint32_t seed, uint64_t size, int count,
                                            uint64_t max_len, bool zeros) {
  std::mt19937 rng(seed);
  std::vector<CrashOp> ops;
  uint8_t value = 1;
  for (int i = 0; i < count; ++i) {
    uint64_t sectors = size / 512;
    uint64_t off = (rng() % sectors) * 512;
    uint64_t len = std::min<uint64_t>((1 + rng() % (max_len / 512)) * 512, size - off);
    if (zeros && rng() % 5 == 0)
      ops.push_back({CrashOp::Zero, off, len, 0});
    else
      ops.push_back({CrashOp::Write, off, len, value++});
    if (rng() % 3 == 0) ops.push_back({CrashOp::Commit});
  }
  ops.push_back({CrashOp::Commit});
  return ops;
}

struct CrashSetup {
  std::vector<std::pair<std::string, std::string>> chain;  // (path, format), top first
  std::map<std::string, std::vector<uint8_t>> files;       // every file's starting bytes
};

struct OpenChain {
  std::vector<std::unique_ptr<formats::Image>> images;
  std::vector<formats::Image*> ptrs;
};

inline Result<OpenChain> open_chain(Env& env, const CrashSetup& s, formats::Access top_access) {
  OpenChain c;
  for (size_t i = 0; i < s.chain.size(); ++i) {
    const auto& [path, fmt] = s.chain[i];
    DMU_ASSIGN_OR_RETURN(auto img, formats::find_driver(fmt)->open(
                                       env, path, i == 0 ? top_access : formats::Access::ReadOnly));
    c.ptrs.push_back(img.get());
    c.images.push_back(std::move(img));
  }
  return c;
}

// Runs ops until one fails (the power cut); the model learns every attempt.
inline void run_ops(const std::vector<CrashOp>& ops, OpenChain& c, CrashModel& model) {
  for (const CrashOp& op : ops) {
    Result<void> r;
    switch (op.kind) {
      case CrashOp::Write: {
        model.wrote(op.offset, op.length, op.value);
        std::vector<uint8_t> data(op.length, op.value);
        r = write_chain(c.ptrs, op.offset, data);
        break;
      }
      case CrashOp::Zero:
        model.wrote(op.offset, op.length, 0);
        r = zero_chain(c.ptrs, op.offset, op.length, true);
        break;
      case CrashOp::Commit:
        r = c.ptrs.front()->commit();
        if (r) model.committed();
        break;
    }
    if (!r) return;
  }
}

inline void run_crash_matrix(const CrashSetup& setup, const std::vector<CrashOp>& ops) {
  auto fresh_env = [&](FaultEnv& env) {
    for (const auto& [path, bytes] : setup.files) env.set_contents(path, bytes);
  };
  // The uncut run: how many mutations there are, and a sanity check.
  uint64_t total;
  std::vector<uint8_t> initial;
  {
    FaultEnv env;
    fresh_env(env);
    auto c = open_chain(env, setup, formats::Access::ReadWrite);
    ASSERT_TRUE(c) << c.error().message;
    auto start = read_all(c->ptrs);
    ASSERT_TRUE(start) << start.error().message;
    initial = *start;
    CrashModel model(initial.size());
    model.set_initial(initial);
    uint64_t m0 = env.mutations();
    run_ops(ops, *c, model);
    total = env.mutations() - m0;
    auto end = read_all(c->ptrs);
    ASSERT_TRUE(end) << end.error().message;
    ASSERT_EQ(*end, model.current()) << "the uncut workload does not read back";
  }
  ASSERT_GT(total, 0u);
  for (uint64_t n = 0; n <= total; ++n) {
    for (CrashKeeps keeps :
         {CrashKeeps::Nothing, CrashKeeps::Everything, CrashKeeps::RandomSubset}) {
      SCOPED_TRACE("power cut after " + std::to_string(n) + " of " + std::to_string(total) +
                   " mutations, crash keeps " + std::to_string(int(keeps)));
      FaultEnv env;
      fresh_env(env);
      CrashModel model(initial.size());
      model.set_initial(initial);
      {
        auto c = open_chain(env, setup, formats::Access::ReadWrite);
        ASSERT_TRUE(c) << c.error().message;
        env.power_cut_after(n);
        run_ops(ops, *c, model);
      }
      env.crash(keeps, uint32_t(n * 7 + 1));
      auto c = open_chain(env, setup, formats::Access::ReadOnly);
      ASSERT_TRUE(c) << c.error().message;
      auto bytes = read_all(c->ptrs);
      ASSERT_TRUE(bytes) << bytes.error().message;
      std::string bad = model.verify(*bytes);
      ASSERT_EQ(bad, "");
      auto check = c->ptrs.front()->check(formats::Repair::None);
      if (!check && check.error().code == ENOTSUP) continue;  // raw: nothing to check
      ASSERT_TRUE(check) << check.error().message;
      ASSERT_EQ(check->corruptions, 0u) << (check->messages.empty() ? "" : check->messages[0]);
    }
  }
}

}  // namespace dmu::test
