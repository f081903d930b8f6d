// An image `dmu create` has made survives a power loss right after it
// returned: every file it wrote is synced and so is the directory holding
// their names (a new name is not on disk until then).  Run on the crash
// simulator, which drops names whose directory was never synced.
#include <gtest/gtest.h>

#include "formats/image.h"
#include "tests/support/fault_env.h"

namespace dmu::formats {
namespace {

using test::CrashKeeps;
using test::FaultEnv;

struct Case {
  const char* name;
  const char* format;
  std::map<std::string, std::string> options;
  std::vector<const char*> files;  // every file the create writes
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << c.name;
}

class CreateDurability : public ::testing::TestWithParam<Case> {};

TEST_P(CreateDurability, ImageOpensAndReadsZerosAfterACrash) {
  const Case& c = GetParam();
  const auto* driver = formats::find_driver(c.format);
  ASSERT_NE(driver, nullptr);
  formats::CreateOptions options;
  options.virtual_size = 1 << 20;
  options.options = c.options;
  // Nothing kept of what was not synced, everything, and random sectors.
  for (int keeps = 0; keeps < 3; ++keeps) {
    SCOPED_TRACE("crash keeps " + std::to_string(keeps));
    FaultEnv env;
    auto created = driver->create(env, "vm/disk.img", options);
    ASSERT_TRUE(created) << created.error().message;
    env.crash(keeps == 0   ? CrashKeeps::Nothing
              : keeps == 1 ? CrashKeeps::Everything
                           : CrashKeeps::RandomSubset,
              7);
    for (const char* f : c.files) EXPECT_TRUE(env.exists(f)) << f << " lost";
    auto image = driver->open(env, "vm/disk.img", formats::Access::ReadOnly);
    ASSERT_TRUE(image) << image.error().message;
    EXPECT_EQ((*image)->info().virtual_size, options.virtual_size);
    auto m = (*image)->map(0, options.virtual_size);
    ASSERT_TRUE(m) << m.error().message;
    auto check = (*image)->check(formats::Repair::None);
    if (!check && check.error().code == ENOTSUP) continue;  // raw: nothing to check
    ASSERT_TRUE(check) << check.error().message;
    EXPECT_EQ(check->corruptions, 0u);
  }
}

const Case kCases[] = {
    {"Raw", "raw", {}, {"vm/disk.img"}},
    {"Qcow", "qcow", {}, {"vm/disk.img"}},
    {"Qcow2", "qcow2", {}, {"vm/disk.img"}},
    {"Qcow2DataFile", "qcow2", {{"data_file", "disk.data"}}, {"vm/disk.img", "vm/disk.data"}},
    {"VmdkMonolithicSparse", "vmdk", {}, {"vm/disk.img"}},
    {"VmdkSplitSparse",
     "vmdk",
     {{"subformat", "twoGbMaxExtentSparse"}},
     {"vm/disk.img", "vm/disk-s001.img"}},
    {"VmdkMonolithicFlat",
     "vmdk",
     {{"subformat", "monolithicFlat"}},
     {"vm/disk.img", "vm/disk-flat.img"}},
};

INSTANTIATE_TEST_SUITE_P(Formats, CreateDurability, ::testing::ValuesIn(kCases),
                         [](const auto& p) { return std::string(p.param.name); });

}  // namespace
}  // namespace dmu::formats
