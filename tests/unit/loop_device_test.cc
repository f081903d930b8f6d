// LoopDevice against the host's loop driver (needs root and /dev/loop-control;
// skipped otherwise).  The VM cases use the same class under both Debian
// kernels through kmod-devices.
#include "mapper/loop_device.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <thread>

#include "tests/support/test_support.h"

namespace dmu::mapper {
namespace {

bool loop_usable() {
  return ::geteuid() == 0 && ::access("/dev/loop-control", R_OK | W_OK) == 0;
}

std::string sysfs(const LoopDevice& d, const std::string& leaf) {
  std::ifstream in("/sys/block/loop" + std::to_string(d.number()) + "/" + leaf);
  std::string s;
  std::getline(in, s);
  return s;
}

class LoopDeviceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!loop_usable()) GTEST_SKIP() << "needs root and /dev/loop-control";
    image_ = dir_.file("disk.img");
    test::write_file(image_, test::random_bytes(1 << 20, 42));
  }
  test::TempDir dir_;
  std::string image_;
};

TEST_F(LoopDeviceTest, Attach_ShowsFileContentsAndSize) {
  auto loop = LoopDevice::attach(image_);
  ASSERT_TRUE(loop) << loop.error().message;
  EXPECT_EQ(loop->size_bytes(), 1u << 20);
  EXPECT_EQ(sysfs(*loop, "loop/backing_file"), image_);
  EXPECT_EQ(sysfs(*loop, "loop/autoclear"), "1");
  EXPECT_EQ(test::read_file(loop->path()), test::read_file(image_));
  EXPECT_EQ(loop->dev_string(),
            std::to_string(major(loop->dev())) + ":" + std::to_string(minor(loop->dev())));
}

TEST_F(LoopDeviceTest, Attach_UsesDirectIoWhereTheFileSystemAllows) {
  auto loop = LoopDevice::attach(image_);
  ASSERT_TRUE(loop) << loop.error().message;
  // The flag we report is the kernel's own view of the device.
  EXPECT_EQ(sysfs(*loop, "loop/dio"), loop->direct_io() ? "1" : "0");
  auto buffered = LoopDevice::attach(image_, {.direct_io = false});
  ASSERT_TRUE(buffered) << buffered.error().message;
  EXPECT_FALSE(buffered->direct_io());
  EXPECT_EQ(sysfs(*buffered, "loop/dio"), "0");
}

TEST_F(LoopDeviceTest, ReadOnly_RefusesWrites) {
  auto loop = LoopDevice::attach(image_, {.read_only = true});
  ASSERT_TRUE(loop) << loop.error().message;
  EXPECT_EQ(sysfs(*loop, "ro"), "1");
  // Depending on the kernel, either the open for writing or the write fails.
  int fd = ::open(loop->path().c_str(), O_WRONLY | O_CLOEXEC);
  if (fd >= 0) {
    char block[512] = {1};
    EXPECT_LT(::pwrite(fd, block, sizeof block, 0), 0);
    EXPECT_TRUE(errno == EPERM || errno == EROFS) << std::strerror(errno);
    ::close(fd);
  } else {
    EXPECT_EQ(errno, EROFS);
  }
  EXPECT_EQ(test::read_file(loop->path()), test::read_file(image_));
}

TEST_F(LoopDeviceTest, Destruction_DetachesTheDevice) {
  int number;
  {
    auto loop = LoopDevice::attach(image_);
    ASSERT_TRUE(loop) << loop.error().message;
    number = loop->number();
  }
  // LOOP_CLR_FD finishes asynchronously on recent kernels; give it a moment.
  std::string backing = "/sys/block/loop" + std::to_string(number) + "/loop/backing_file";
  for (int i = 0; i < 100 && ::access(backing.c_str(), F_OK) == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_NE(::access(backing.c_str(), F_OK), 0) << "loop" << number << " still attached";
}

TEST_F(LoopDeviceTest, Move_TransfersOwnershipWithoutDetaching) {
  auto loop = LoopDevice::attach(image_);
  ASSERT_TRUE(loop) << loop.error().message;
  LoopDevice moved = std::move(*loop);
  EXPECT_EQ(sysfs(moved, "loop/backing_file"), image_);
  auto detached = moved.detach();
  EXPECT_TRUE(detached) << detached.error().message;
}

// attach refuses a file an image names unless it is a regular file, judged
// on the descriptor the loop device would get (no stat-then-open window),
// and says which image named it.
TEST_F(LoopDeviceTest, NamedBy_RefusesWhatIsNotARegularFile) {
  const std::string link = dir_.file("data.raw");
  ASSERT_EQ(::symlink("/dev/null", link.c_str()), 0);
  auto loop = LoopDevice::attach(link, {.read_only = true, .named_by = "/vm/evil.qcow2"});
  ASSERT_FALSE(loop);
  EXPECT_EQ(loop.error().code, EPERM);
  EXPECT_NE(loop.error().message.find("/vm/evil.qcow2: names " + link), std::string::npos)
      << loop.error().message;
  EXPECT_NE(loop.error().message.find("not a regular file"), std::string::npos);
  // A regular file is fine, named or not.
  auto ok = LoopDevice::attach(image_, {.read_only = true, .named_by = "/vm/top.qcow2"});
  EXPECT_TRUE(ok) << ok.error().message;
}

// A vmdk descriptor is a few hundred bytes: the loop driver takes it (a
// device of 0 sectors), which is all a metadata loop needs.
TEST_F(LoopDeviceTest, Attach_TakesAFileSmallerThanASector) {
  const std::string tiny = dir_.file("tiny.vmdk");
  test::write_file(tiny, test::random_bytes(300, 7));
  auto loop = LoopDevice::attach(tiny, {.read_only = true, .direct_io = false});
  ASSERT_TRUE(loop) << loop.error().message;
  EXPECT_EQ(loop->size_bytes(), 0u);
  EXPECT_EQ(sysfs(*loop, "loop/backing_file"), tiny);
}

// keep_after_close(): the device, and the locks on its description, stay
// after the last close until detach_loop_of; without it autoclear takes
// the device with the last close.
TEST_F(LoopDeviceTest, KeepAfterClose_OutlivesTheLastCloseUntilDetached) {
  auto kept = LoopDevice::attach(image_, {.read_only = true, .lock = LockMode::Writer});
  ASSERT_TRUE(kept) << kept.error().message;
  auto k = kept->keep_after_close();
  ASSERT_TRUE(k) << k.error().message;
  EXPECT_EQ(sysfs(*kept, "loop/autoclear"), "0");
  const std::string path = kept->path();
  kept->release();
  EXPECT_TRUE(open_loop_of(path, image_)) << path << " went with its last close";
  EXPECT_FALSE(ImageLock::acquire(image_, LockMode::Reader)) << "the locks went with the close";

  auto gone = detach_loop_of(path, image_);
  ASSERT_TRUE(gone) << gone.error().message;
  EXPECT_TRUE(*gone);
  wait_loop_released(path, image_);
  EXPECT_FALSE(open_loop_of(path, image_));
  EXPECT_TRUE(ImageLock::acquire(image_, LockMode::Writer)) << "detach left the locks";

  auto plain = LoopDevice::attach(image_, {.read_only = true});
  ASSERT_TRUE(plain) << plain.error().message;
  const std::string plain_path = plain->path();
  plain->release();
  wait_loop_released(plain_path, image_);
  EXPECT_FALSE(open_loop_of(plain_path, image_)) << "autoclear did not detach " << plain_path;
}

TEST(LoopDevice, Attach_MissingFileNamesIt) {
  auto loop = LoopDevice::attach("/nonexistent/disk.img");
  ASSERT_FALSE(loop);
  EXPECT_EQ(loop.error().code, ENOENT);
  EXPECT_NE(loop.error().message.find("/nonexistent/disk.img"), std::string::npos);
}

}  // namespace
}  // namespace dmu::mapper
