// qcow (version 1) crash safety: power cuts at every mutation of random
// write/zero/commit workloads leave a consistent image holding every write a
// completed commit acknowledged (see tests/unit/crash_harness.h).
#include <gtest/gtest.h>

#include "fileio/mem_env.h"
#include "formats/image.h"
#include "tests/unit/crash_harness.h"

namespace dmu::formats::qcow {
namespace {

std::vector<uint8_t> made(uint64_t size, const std::string& backing = "") {
  MemEnv env;
  formats::CreateOptions o;
  o.virtual_size = size;
  if (!backing.empty()) o.backing_file = backing;
  auto r = formats::find_driver("qcow")->create(env, "img", o);
  EXPECT_TRUE(r);
  return env.contents("img");
}

TEST(QcowCrash, EveryCutLeavesCommittedWritesAndNoCorruption) {
  test::CrashSetup setup;
  const uint64_t size = 5 << 20;  // three L2 tables, allocated as the workload goes
  setup.chain = {{"disk.qcow", "qcow"}};
  setup.files["disk.qcow"] = made(size);
  for (uint32_t seed : {1u, 2u}) {
    SCOPED_TRACE("workload seed " + std::to_string(seed));
    test::run_crash_matrix(setup, test::random_workload(seed, size, 14, 3 * 4096, true));
  }
}

TEST(QcowCrash, OverlayWithBackingFileSurvivesEveryCut) {
  test::CrashSetup setup;
  const uint64_t size = 3 << 20;
  setup.chain = {{"top.qcow", "qcow"}, {"base.raw", "raw"}};
  setup.files["top.qcow"] = made(size, "base.raw");
  std::vector<uint8_t> base(size);
  for (size_t s = 0; s < size / 512; ++s)
    std::fill_n(base.begin() + s * 512, 512, uint8_t(200 + s % 50));
  setup.files["base.raw"] = base;
  test::run_crash_matrix(setup, test::random_workload(3, size, 14, 2048, false));
}

}  // namespace
}  // namespace dmu::formats::qcow
