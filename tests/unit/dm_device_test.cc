// DmDevice: argument checks on any host; create/status/message/remove where
// the kernel has device-mapper (skipped on hosts without it; the VM case
// kmod-devices runs this program under both Debian kernels).
#include "mapper/dm_device.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mapper/loop_device.h"
#include "tests/support/test_support.h"

namespace dmu::mapper {
namespace {

TEST(DmDevice, Create_RefusesBadNamesAndEmptyTables) {
  EXPECT_EQ(DmDevice::create("", {{0, 8, "zero", ""}}).error().code, EINVAL);
  EXPECT_EQ(DmDevice::create("a/b", {{0, 8, "zero", ""}}).error().code, EINVAL);
  auto e = DmDevice::create("dmu-test-empty", {});
  ASSERT_FALSE(e);
  EXPECT_NE(e.error().message.find("dmu-test-empty"), std::string::npos);
}

class DmDeviceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0 || !DmDevice::available())
      GTEST_SKIP() << "needs root and device-mapper in the kernel";
  }
  std::string name(const char* what) { return "dmu-test-" + std::to_string(::getpid()) + what; }
};

TEST_F(DmDeviceTest, Create_MakesNodeAndRemoveDeletesIt) {
  auto dev = DmDevice::create(name("zero"), {{0, 2048, "zero", ""}});
  ASSERT_TRUE(dev) << dev.error().message;
  struct stat st {};
  ASSERT_EQ(::stat(dev->node_path().c_str(), &st), 0) << dev->node_path();
  EXPECT_TRUE(S_ISBLK(st.st_mode));
  EXPECT_EQ(st.st_rdev, dev->dev());
  auto bytes = test::read_file(dev->node_path());
  EXPECT_EQ(bytes.size(), 2048u * 512);
  EXPECT_EQ(std::count(bytes.begin(), bytes.end(), 0), static_cast<long>(bytes.size()));
  const std::string node = dev->node_path();
  auto removed = dev->remove();
  ASSERT_TRUE(removed) << removed.error().message;
  EXPECT_NE(::access(node.c_str(), F_OK), 0) << node << " left behind";
}

TEST_F(DmDeviceTest, Status_ReportsEachTableLine) {
  auto dev = DmDevice::create(name("two"), {{0, 1024, "zero", ""}, {1024, 1024, "error", ""}});
  ASSERT_TRUE(dev) << dev.error().message;
  auto st = dev->status();
  ASSERT_TRUE(st) << st.error().message;
  ASSERT_EQ(st->size(), 2u);
  EXPECT_EQ((*st)[0].type, "zero");
  EXPECT_EQ((*st)[1].start, 1024u);
  EXPECT_EQ((*st)[1].type, "error");
}

TEST_F(DmDeviceTest, LinearOverLoop_ReadsTheFile) {
  test::TempDir dir;
  auto data = test::random_bytes(1 << 20, 7);
  test::write_file(dir.file("img"), data);
  auto loop = LoopDevice::attach(dir.file("img"));
  ASSERT_TRUE(loop) << loop.error().message;
  auto dev = DmDevice::create(name("lin"), {{0, 2048, "linear", loop->dev_string() + " 0"}},
                              {.read_only = true, .uuid = ""});
  ASSERT_TRUE(dev) << dev.error().message;
  EXPECT_EQ(test::read_file(dev->node_path()), data);
}

TEST_F(DmDeviceTest, Message_ToTargetWithoutHandlerFailsWithContext) {
  auto dev = DmDevice::create(name("msg"), {{0, 8, "zero", ""}});
  ASSERT_TRUE(dev) << dev.error().message;
  auto r = dev->message("hello");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find(name("msg")), std::string::npos);
  EXPECT_NE(r.error().message.find("hello"), std::string::npos);
}

TEST_F(DmDeviceTest, Create_BadTableFailsWithKernelReasonAndLeavesNothing) {
  auto dev = DmDevice::create(name("bad"), {{0, 8, "linear", "/nonexistent 0"}});
  ASSERT_FALSE(dev);
  EXPECT_NE(dev.error().message.find("linear /nonexistent 0"), std::string::npos);
  EXPECT_FALSE(DmDevice::adopt(name("bad")));
}

TEST_F(DmDeviceTest, Destruction_RemovesUnlessReleased) {
  {
    auto dev = DmDevice::create(name("raii"), {{0, 8, "zero", ""}});
    ASSERT_TRUE(dev) << dev.error().message;
  }
  EXPECT_FALSE(DmDevice::adopt(name("raii")));
  {
    auto dev = DmDevice::create(name("kept"), {{0, 8, "zero", ""}});
    ASSERT_TRUE(dev) << dev.error().message;
    dev->release();
  }
  auto again = DmDevice::adopt(name("kept"));
  ASSERT_TRUE(again) << again.error().message;
  EXPECT_TRUE(again->remove());
}

}  // namespace
}  // namespace dmu::mapper
