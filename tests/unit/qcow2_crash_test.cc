// Crash safety of the qcow2 engine: a random write/zero/discard/commit
// workload runs on a FaultEnv whose power is cut after n mutating calls,
// for every n; the crash keeps none, all or a random subset of the unsynced
// writes.  Reopened, the image must have no corruption (leaks are allowed),
// every byte acknowledged by a completed commit must read back (or hold a
// value written after that commit), and the image must take new writes.
#include <gtest/gtest.h>

#include <random>

#include "common/endian.h"
#include "tests/support/fault_env.h"
#include "tests/unit/qcow2_test_helpers.h"

namespace dmu::qcow2_test {
namespace {

using test::CrashKeeps;
using test::FaultEnv;

using formats::Access;
using formats::Repair;

constexpr const char* kImage = "crash.qcow2";

struct Op {
  enum Kind { Write, Zero, Discard, Commit } kind;
  uint64_t offset = 0, length = 0;
  uint8_t value = 0;
  bool unmap = false;
};

std::vector<Op> make_workload(uint64_t size, uint64_t cs, uint64_t gran, uint64_t max_write,
                              uint32_t seed, int n) {
  std::mt19937 rng(seed);
  std::vector<Op> ops;
  for (int i = 0; i < n; ++i) {
    Op op{};
    unsigned k = rng() % 12;
    if (k < 7) {
      op.kind = Op::Write;
      op.offset = rng() % size;
      op.length = 1 + rng() % std::min<uint64_t>(max_write, size - op.offset);
      op.value = uint8_t(1 + rng() % 255);
    } else if (k < 8) {
      op.kind = Op::Zero;
      op.offset = (rng() % size) / gran * gran;
      op.length = std::min<uint64_t>((1 + rng() % 3) * gran, size - op.offset);
      op.unmap = rng() % 2;
    } else if (k < 9) {
      op.kind = Op::Discard;
      op.offset = (rng() % size) / cs * cs;
      op.length = std::min<uint64_t>((1 + rng() % 3) * cs, size - op.offset);
    } else {
      op.kind = Op::Commit;
    }
    ops.push_back(op);
  }
  ops.push_back(Op{Op::Commit});
  return ops;
}

// Runs ops until one fails.  `acked` is the disk as of the last completed
// commit; `later` are the ops started after it (any of them may have landed,
// wholly or in part).
struct Outcome {
  std::vector<uint8_t> acked;
  std::vector<Op> later;
  bool allows(uint64_t byte, uint8_t value) const {
    if (acked[byte] == value) return true;
    for (const Op& op : later)
      if (byte >= op.offset && byte < op.offset + op.length &&
          value == (op.kind == Op::Write ? op.value : 0))
        return true;
    return false;
  }
};

bool apply(Image& im, const Op& op, std::vector<uint8_t>& current) {
  switch (op.kind) {
    case Op::Write: {
      std::vector<uint8_t> data(op.length, op.value);
      if (!try_write_guest(im, op.offset, data)) return false;
      std::fill(current.begin() + long(op.offset), current.begin() + long(op.offset + op.length),
                op.value);
      return true;
    }
    case Op::Zero: {
      auto r = im.write_zeroes(op.offset, op.length, op.unmap);
      if (!r && r.error().code == ENOTSUP) {
        Op w = op;
        w.kind = Op::Write;
        w.value = 0;
        return apply(im, w, current);
      }
      if (!r) return false;
      std::fill(current.begin() + long(op.offset), current.begin() + long(op.offset + op.length),
                0);
      return true;
    }
    case Op::Discard: {
      if (!im.discard(op.offset, op.length)) return false;
      std::fill(current.begin() + long(op.offset), current.begin() + long(op.offset + op.length),
                0);
      return true;
    }
    case Op::Commit:
      return bool(im.commit());
  }
  return false;
}

Outcome run_until_failure(FaultEnv& env, const std::vector<Op>& ops, std::vector<uint8_t> start) {
  Outcome o;
  o.acked = start;
  std::vector<uint8_t> current = std::move(start);
  auto im = open_image(env, kImage, Access::ReadWrite);
  if (!im) return o;  // the cut came before the image was even opened
  for (const Op& op : ops) {
    // Whatever this op does may land, even if it fails half way.
    if (op.kind != Op::Commit) o.later.push_back(op);
    bool ok = apply(**im, op, current);
    if (!ok) break;
    if (op.kind == Op::Commit) {
      o.acked = current;
      o.later.clear();
    }
  }
  return o;
}

struct CrashCase {
  const char* name;
  const char* create;   // qemu-img create -o
  const char* prepare;  // qemu-io commands run on the image first
  const char* size;
  uint64_t io_size;  // guest bytes the workload touches
  bool compress = false;
  bool snapshot = false;
  const char* data_file = nullptr;  // loaded into the FaultEnv beside the image
  bool moves_reftable = false;      // the workload must relocate the refcount table
  uint64_t max_write = 0;           // bytes per write; 0: three clusters
};

class Qcow2Crash : public ::testing::TestWithParam<CrashCase> {};

TEST_P(Qcow2Crash, EveryPowerCutLeavesAConsistentImageWithAcknowledgedData) {
  const CrashCase& c = GetParam();
  test::TempDir dir;
  std::string cmd = "cd " + test::shell_quote(dir.path()) + " && qemu-img create -q -f qcow2 -o " +
                    c.create + " base.qcow2 " + c.size + " && qemu-io -f qcow2 " + c.prepare +
                    " base.qcow2";
  if (c.compress)
    cmd += " && qemu-img convert -c -O qcow2 base.qcow2 c.qcow2 && mv c.qcow2 base.qcow2";
  if (c.snapshot) cmd += " && qemu-img snapshot -c snap base.qcow2";
  test::run_ok(cmd);
  const auto base = test::read_file(dir.file("base.qcow2"));
  const auto data = c.data_file ? test::read_file(dir.file(c.data_file)) : std::vector<uint8_t>{};
  auto load = [&](FaultEnv& env) {
    env.set_contents(kImage, base);
    if (c.data_file) env.set_contents(c.data_file, data);
  };
  std::vector<uint8_t> start;
  uint64_t cs, gran;
  {
    FaultEnv env;
    load(env);
    auto im = open_image(env, kImage, Access::ReadOnly);
    ASSERT_TRUE(im) << im.error().message;
    start = read_all(**im);
    cs = (*im)->info().cluster_size;
    gran = (*im)->info().granularity;
  }
  const auto ops = make_workload(c.io_size, cs, gran, c.max_write ? c.max_write : 3 * cs, 42, 60);
  uint64_t total;
  {
    FaultEnv env;
    load(env);
    (void)run_until_failure(env, ops, start);
    total = env.mutations();
    ASSERT_GT(total, 10u);
    auto header = [](const std::vector<uint8_t>& b) { return load_be64(b.data() + 48); };
    if (c.moves_reftable) {
      ASSERT_NE(header(env.contents(kImage)), header(base));
    }
  }
  const CrashKeeps modes[] = {CrashKeeps::Nothing, CrashKeeps::Everything,
                              CrashKeeps::RandomSubset};
  for (uint64_t n = 0; n <= total; ++n) {
    for (CrashKeeps keeps : modes) {
      SCOPED_TRACE("power cut after " + std::to_string(n) + " of " + std::to_string(total) +
                   " mutations, crash keeps " + std::to_string(int(keeps)));
      FaultEnv env;
      load(env);
      env.power_cut_after(n);
      Outcome o = run_until_failure(env, ops, start);
      env.crash(keeps, uint32_t(n));
      auto im = open_image(env, kImage, Access::ReadOnly);
      ASSERT_TRUE(im) << im.error().message;
      auto report = (*im)->check(Repair::None);
      ASSERT_TRUE(report) << report.error().message;
      ASSERT_EQ(report->corruptions, 0u) << ::testing::PrintToString(report->messages);
      ASSERT_EQ(report->check_errors, 0u) << ::testing::PrintToString(report->messages);
      auto got = read_all(**im);
      for (size_t i = 0; i < got.size(); ++i)
        if (!o.allows(i, got[i]))
          FAIL() << "guest byte " << i << " reads " << int(got[i]) << ", acknowledged "
                 << int(o.acked[i]);
      im->reset();
      // The survivor takes writes again and stays consistent; the
      // oracle agrees now and then.
      if (keeps == CrashKeeps::RandomSubset && n % 16 == 0) {
        auto rw = open_image(env, kImage, Access::ReadWrite);
        ASSERT_TRUE(rw) << rw.error().message;
        write_guest(**rw, 0, pattern(3 * cs, 0x77));
        ASSERT_TRUE((*rw)->commit());
        auto again = (*rw)->check(Repair::Leaks);
        ASSERT_TRUE(again);
        EXPECT_EQ(again->corruptions, 0u);
        EXPECT_EQ(again->leaks, 0u);
        rw->reset();
        std::string file = dir.file("copy.qcow2");
        test::write_file(file, env.contents(kImage));
        if (c.data_file) test::write_file(dir.file(c.data_file), env.contents(c.data_file));
        auto j = qemu_check(file);
        EXPECT_EQ(json_u64(j, "corruptions") + json_u64(j, "leaks"), 0u) << j.dump();
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Workloads, Qcow2Crash,
    ::testing::Values(
        CrashCase{"cluster_4k", "cluster_size=4k", "-c 'write -P 1 0 256k'", "1M", 1 << 20},
        CrashCase{"v2_cluster_4k", "compat=0.10,cluster_size=4k", "-c 'write -P 1 0 256k'", "1M",
                  1 << 20},
        CrashCase{"extended_l2", "extended_l2=on,cluster_size=16k", "-c 'write -P 1 0 64k'", "1M",
                  1 << 20},
        CrashCase{"refcount_table_growth", "cluster_size=512,refcount_bits=64",
                  "-c 'write -P 1 0 1940k'", "4M", 4 << 20, false, false, nullptr, true, 32768},
        CrashCase{"compressed", "cluster_size=4k", "-c 'write -P 1 0 512k'", "1M", 1 << 20, true},
        CrashCase{"snapshot", "cluster_size=4k", "-c 'write -P 1 0 512k'", "1M", 1 << 20, false,
                  true},
        CrashCase{"data_file", "cluster_size=4k,data_file=crash.data", "-c 'write -P 1 0 64k'",
                  "1M", 1 << 20, false, false, "crash.data"}),
    [](const auto& p) { return std::string(p.param.name); });

}  // namespace
}  // namespace dmu::qcow2_test
