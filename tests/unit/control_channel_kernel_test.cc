// ControlChannel against the real module: BIND geometry, a read served
// through MAP/EXTENT, whole-write refusal, pushes visible in LIST_EXTENTS, and
// unanswered requests handed to the next daemon.  Needs root, device-mapper
// and dm-userspace loaded, so it skips on the host; the VM case kmod-devices
// runs it under both Debian kernels.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <future>

#include "mapper/control_channel.h"
#include "mapper/dm_device.h"
#include "mapper/loop_device.h"
#include "mapper/protocol.h"
#include "tests/support/test_support.h"

namespace dmu {
namespace {

constexpr uint64_t kSectors = 8192;  // 4 MiB
constexpr uint32_t kBlockSectors = 8;

// One direct 4 KiB read of block `block` of `path`; the bytes, or empty.
std::vector<uint8_t> read_block(const std::string& path, uint64_t block) {
  int fd = ::open(path.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
  if (fd < 0) return {};
  void* buf = nullptr;
  if (::posix_memalign(&buf, 4096, 4096) != 0) {
    ::close(fd);
    return {};
  }
  std::vector<uint8_t> out;
  if (::pread(fd, buf, 4096, static_cast<off_t>(block * 4096)) == 4096)
    out.assign(static_cast<uint8_t*>(buf), static_cast<uint8_t*>(buf) + 4096);
  std::free(buf);
  ::close(fd);
  return out;
}

class ControlChannelKernelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0 || ::access(kControlDevicePath, F_OK) != 0 || !DmDevice::available())
      GTEST_SKIP() << "needs root, device-mapper and the dm-userspace module";
    data_ = test::random_bytes(kSectors * 512, 5);
    test::write_file(dir_.file("img"), data_);
    auto loop = LoopDevice::attach(dir_.file("img"));
    ASSERT_TRUE(loop) << loop.error().message;
    loop_ = std::make_unique<LoopDevice>(std::move(*loop));
    key_ = "cc-test-" + std::to_string(::getpid());
    auto dev = DmDevice::create(key_, {{0, kSectors, "userspace",
                                        key_ + " " + std::to_string(kBlockSectors) + " 1 " +
                                            loop_->dev_string() + " 2 daemon_timeout 10"}});
    ASSERT_TRUE(dev) << dev.error().message;
    dev_ = std::make_unique<DmDevice>(std::move(*dev));
  }

  void TearDown() override {
    dev_.reset();
    loop_.reset();
  }

  ControlChannel bound(BindInfo* info = nullptr) {
    auto ch = ControlChannel::open();
    EXPECT_TRUE(ch) << ch.error().message;
    auto b = ch->bind(key_);
    EXPECT_TRUE(b) << b.error().message;
    if (info && b) *info = *b;
    return std::move(*ch);
  }

  // Answers MAP requests with identity extents until `done` is ready.
  template <class F>
  void serve_until(ControlChannel& ch, std::future<F>& done) {
    dmu_request reqs[16];
    for (int i = 0; i < 100 && done.wait_for(std::chrono::seconds(0)) != std::future_status::ready;
         ++i) {
      auto n = ch.read_requests(reqs, std::chrono::milliseconds(100));
      ASSERT_TRUE(n) << n.error().message;
      std::vector<dmu_response> out;
      for (size_t j = 0; j < *n; ++j)
        if (reqs[j].type == DMU_REQ_MAP)
          out.push_back(proto::remap_extent(reqs[j].id, reqs[j].block, reqs[j].nr_blocks, 0,
                                            reqs[j].block * kBlockSectors, 0, true));
      auto w = ch.write_responses(out);
      ASSERT_TRUE(w) << w.error().message;
      EXPECT_TRUE(w->complete());
    }
  }

  std::vector<uint8_t> expected_block(uint64_t block) const {
    return {data_.begin() + static_cast<ptrdiff_t>(block * 4096),
            data_.begin() + static_cast<ptrdiff_t>((block + 1) * 4096)};
  }

  test::TempDir dir_;
  std::vector<uint8_t> data_;
  std::unique_ptr<LoopDevice> loop_;
  std::unique_ptr<DmDevice> dev_;
  std::string key_;
};

TEST_F(ControlChannelKernelTest, Bind_ReportsTheTargetGeometry) {
  BindInfo info;
  auto ch = bound(&info);
  EXPECT_EQ(info.version_major, uint32_t{DMU_VERSION_MAJOR});
  EXPECT_EQ(info.target_sectors, kSectors);
  EXPECT_EQ(info.block_sectors, kBlockSectors);
  EXPECT_EQ(info.nr_devs, 1u);
  EXPECT_EQ(info.features, uint64_t{DMU_FEATURE_ALL});
  EXPECT_EQ(info.resent, 0u);
}

TEST_F(ControlChannelKernelTest, Bind_UnknownKeyFailsAndSecondDaemonIsRefused) {
  auto stray = ControlChannel::open();
  ASSERT_TRUE(stray);
  auto b = stray->bind("no-such-key-" + key_);
  ASSERT_FALSE(b);
  EXPECT_NE(b.error().message.find("no-such-key-"), std::string::npos);
  auto first = bound();
  auto second = ControlChannel::open();
  ASSERT_TRUE(second);
  EXPECT_FALSE(second->bind(key_));
}

TEST_F(ControlChannelKernelTest, ReadThroughTheDevice_IsServedByMapAndExtent) {
  auto ch = bound();
  auto reader = std::async(std::launch::async, [&] { return read_block(dev_->node_path(), 3); });
  serve_until(ch, reader);
  EXPECT_EQ(reader.get(), expected_block(3));
}

TEST_F(ControlChannelKernelTest, WriteRaw_TruncatedBatchIsRefusedWhole) {
  auto ch = bound();
  std::vector<uint8_t> bytes(DMU_MSG_SIZE + DMU_MSG_SIZE / 2, 0);
  dmu_response inval = proto::invalidate(0, 1);
  std::memcpy(bytes.data(), &inval, sizeof inval);
  EXPECT_EQ(ch.write_raw(bytes), -EINVAL);
  auto w = ch.write_responses({&inval, 1});
  ASSERT_TRUE(w) << w.error().message;
  EXPECT_TRUE(w->complete());
}

TEST_F(ControlChannelKernelTest, BadMessage_StopsTheWriteAfterTheGoodOnes) {
  auto ch = bound();
  dmu_response batch[2] = {proto::invalidate(0, 1),
                           proto::remap_extent(12345, 0, 1, 0, 0, 0, true)};  // no such id
  auto w = ch.write_responses(batch);
  ASSERT_TRUE(w) << w.error().message;
  EXPECT_EQ(w->accepted, 1u);
  EXPECT_EQ(w->error, EINVAL);
}

TEST_F(ControlChannelKernelTest, ListExtents_ShowsPushedExtents) {
  auto ch = bound();
  dmu_response push = proto::remap_extent(DMU_PUSH_ID | 1, 100, 10, 0, 800, 0, true);
  auto w = ch.write_responses({&push, 1});
  ASSERT_TRUE(w) << w.error().message;
  ASSERT_TRUE(w->complete());
  auto list = ch.list_extents();
  ASSERT_TRUE(list) << list.error().message;
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].block, 100u);
  EXPECT_EQ((*list)[0].nr_blocks, 10u);
  EXPECT_EQ((*list)[0].sector, 800u);
  EXPECT_TRUE((*list)[0].state & DMU_EXTENT_PUSHED);
  EXPECT_FALSE((*list)[0].state & DMU_EXTENT_USED);
  EXPECT_EQ(read_block(dev_->node_path(), 105), expected_block(105));  // no daemon needed
  auto after = ch.list_extents();
  ASSERT_TRUE(after);
  ASSERT_EQ(after->size(), 1u);
  EXPECT_TRUE((*after)[0].state & DMU_EXTENT_USED);
}

TEST_F(ControlChannelKernelTest, Close_HandsUnansweredRequestsToTheNextDaemon) {
  auto reader = std::async(std::launch::async, [&] { return read_block(dev_->node_path(), 7); });
  {
    auto first = bound();
    dmu_request q[4];
    size_t got = 0;
    for (int i = 0; i < 50 && got == 0; ++i) {
      auto n = first.read_requests(q, std::chrono::milliseconds(100));
      ASSERT_TRUE(n) << n.error().message;
      got = *n;
    }
    ASSERT_EQ(got, 1u);
    EXPECT_EQ(proto::describe(q[0]).substr(0, 4), "MAP ");
  }  // closed without answering
  BindInfo info;
  auto second = bound(&info);
  EXPECT_GE(info.resent, 1u);
  serve_until(second, reader);
  EXPECT_EQ(reader.get(), expected_block(7));
}

}  // namespace
}  // namespace dmu
