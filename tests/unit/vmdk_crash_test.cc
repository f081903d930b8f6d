// vmdk crash safety: power cuts at every mutation of random write/zero/commit
// workloads leave a consistent image holding every write a completed commit
// acknowledged (see tests/unit/crash_harness.h): a monolithic sparse image
// with zeroed grains, one whose grain tables must be allocated, a descriptor
// over two sparse extents and a flat one, and a child over a parent.
#include <gtest/gtest.h>

#include "common/endian.h"
#include "fileio/mem_env.h"
#include "formats/image.h"
#include "tests/unit/crash_harness.h"

namespace dmu::formats::vmdk {
namespace {

void create_in(MemEnv& env, const std::string& path, uint64_t size,
               std::map<std::string, std::string> opts = {},
               std::optional<std::string> backing = std::nullopt) {
  formats::CreateOptions o;
  o.virtual_size = size;
  o.options = std::move(opts);
  o.backing_file = std::move(backing);
  auto r = formats::find_driver("vmdk")->create(env, path, o);
  ASSERT_TRUE(r) << r.error().message;
}

TEST(VmdkCrash, MonolithicSparseWithZeroedGrainsSurvivesEveryCut) {
  MemEnv mem;
  create_in(mem, "disk.vmdk", 3 << 20, {{"zeroed_grain", "on"}});
  test::CrashSetup setup;
  setup.chain = {{"disk.vmdk", "vmdk"}};
  setup.files["disk.vmdk"] = mem.contents("disk.vmdk");
  test::run_crash_matrix(setup, test::random_workload(7, 3 << 20, 14, 3 * 65536, true));
}

TEST(VmdkCrash, NewGrainTablesSurviveEveryCut) {
  MemEnv mem;
  create_in(mem, "disk.vmdk", 3 << 20);
  auto bytes = mem.contents("disk.vmdk");
  // No grain table yet in either directory: the workload must allocate it.
  store_le32(&bytes[load_le64(&bytes[56]) * 512], 0);
  store_le32(&bytes[load_le64(&bytes[48]) * 512], 0);
  test::CrashSetup setup;
  setup.chain = {{"disk.vmdk", "vmdk"}};
  setup.files["disk.vmdk"] = bytes;
  test::run_crash_matrix(setup, test::random_workload(8, 3 << 20, 10, 2 * 65536, true));
}

TEST(VmdkCrash, DescriptorOverSparseAndFlatExtentsSurvivesEveryCut) {
  MemEnv mem;
  create_in(mem, "a.vmdk", 1 << 20);
  create_in(mem, "b.vmdk", 1 << 20);
  std::string desc =
      "# Disk DescriptorFile\nversion=1\nCID=1234abcd\nparentCID=ffffffff\n"
      "createType=\"twoGbMaxExtentSparse\"\n\n# Extent description\n"
      "RW 2048 SPARSE \"a.vmdk\"\nRW 1024 FLAT \"f.raw\" 0\nRW 2048 SPARSE \"b.vmdk\"\n";
  test::CrashSetup setup;
  setup.chain = {{"disk.vmdk", "vmdk"}};
  setup.files["disk.vmdk"] = std::vector<uint8_t>(desc.begin(), desc.end());
  setup.files["a.vmdk"] = mem.contents("a.vmdk");
  setup.files["b.vmdk"] = mem.contents("b.vmdk");
  setup.files["f.raw"] = std::vector<uint8_t>(512 * 1024, 0);
  test::run_crash_matrix(setup, test::random_workload(9, 5 << 19, 14, 3 * 65536, true));
}

TEST(VmdkCrash, ChildOverParentSurvivesEveryCut) {
  MemEnv mem;
  create_in(mem, "base.vmdk", 2 << 20);
  create_in(mem, "child.vmdk", 2 << 20, {{"zeroed_grain", "on"}}, "base.vmdk");
  // Give the parent contents the child's writes must not lose.
  auto base = formats::find_driver("vmdk")->open(mem, "base.vmdk", formats::Access::ReadWrite);
  ASSERT_TRUE(base);
  ASSERT_TRUE(test::write_chain({base->get()}, 0, std::vector<uint8_t>(2 << 20, 0xa5)));
  ASSERT_TRUE((*base)->commit());
  base->reset();
  // The parent's CID changed with that write: make the child agree again.
  auto child_bytes = mem.contents("child.vmdk");
  auto parent = formats::find_driver("vmdk")->open(mem, "base.vmdk", formats::Access::ReadOnly);
  ASSERT_TRUE(parent);
  char cid[16];
  std::snprintf(cid, sizeof cid, "%08x",
                std::get<dmu::formats::VmdkSpecific>((*parent)->info().format_specific).cid);
  // Replace the whole value: the CID written at create time may have fewer
  // than 8 digits.  The descriptor area is NUL-padded, so the text may grow.
  std::string text(child_bytes.begin() + 512, child_bytes.begin() + 512 + 1024);
  const size_t at = text.find("parentCID=") + 10;
  const size_t eol = text.find('\n', at);
  ASSERT_NE(eol, std::string::npos);
  text = text.substr(0, at) + cid + text.substr(eol);
  text.resize(1024);  // drops only NUL padding: the value grew by at most 7
  std::copy(text.begin(), text.end(), child_bytes.begin() + 512);
  test::CrashSetup setup;
  setup.chain = {{"child.vmdk", "vmdk"}, {"base.vmdk", "vmdk"}};
  setup.files["child.vmdk"] = child_bytes;
  setup.files["base.vmdk"] = mem.contents("base.vmdk");
  test::run_crash_matrix(setup, test::random_workload(10, 2 << 20, 14, 2 * 65536, true));
}

}  // namespace
}  // namespace dmu::formats::vmdk
