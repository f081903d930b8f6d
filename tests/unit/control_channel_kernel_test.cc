// ControlChannel against the real module: BIND geometry, a read served
// through MAP/EXTENT, whole-write refusal, pushes visible in LIST_EXTENTS,
// unanswered requests handed to the next daemon, and (protocol 2) DONE with
// the MAP's range for writes and discards, listed by LIST_ALLOCATIONS and
// read again by the next daemon until a COMMIT covers it.  Needs root, device-mapper
// and dm-userspace loaded, so it skips on the host; the VM case kmod-devices
// runs it under both Debian kernels.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <future>
#include <optional>

#include "mapper/control_channel.h"
#include "mapper/dm_device.h"
#include "mapper/loop_device.h"
#include "mapper/protocol.h"
#include "tests/support/test_support.h"

namespace dmu::mapper {
namespace {

constexpr uint64_t kSectors = 8192;  // 4 MiB
constexpr uint32_t kBlockSectors = 8;

// One direct 4 KiB write of `data` to block `block` of `path`; true on success.
bool write_block(const std::string& path, uint64_t block, const std::vector<uint8_t>& data) {
  int fd = ::open(path.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC);
  if (fd < 0) return false;
  void* buf = nullptr;
  if (::posix_memalign(&buf, 4096, 4096) != 0) {
    ::close(fd);
    return false;
  }
  std::memcpy(buf, data.data(), 4096);
  const bool ok = ::pwrite(fd, buf, 4096, static_cast<off_t>(block * 4096)) == 4096;
  std::free(buf);
  ::close(fd);
  return ok;
}

// BLKDISCARD of blocks [block, block + n) of `path`; true on success.
bool discard_blocks(const std::string& path, uint64_t block, uint64_t n) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  uint64_t range[2] = {block * 4096, n * 4096};
  const bool ok = ::ioctl(fd, BLKDISCARD, range) == 0;
  ::close(fd);
  return ok;
}

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
  EXPECT_EQ(info.allocations, 0u);
  EXPECT_EQ(info.writable_devs, 1u);
  auto records = ch.list_allocations();
  ASSERT_TRUE(records) << records.error().message;
  EXPECT_TRUE(records->empty());
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

// Reads requests until one satisfies `want` (up to ~5 s); answers nothing.
template <class F>
std::optional<dmu_request> read_until(ControlChannel& ch, F&& want) {
  dmu_request q[16];
  for (int i = 0; i < 50; ++i) {
    auto n = ch.read_requests(q, std::chrono::milliseconds(100));
    EXPECT_TRUE(n) << n.error().message;
    if (!n) return std::nullopt;
    for (size_t j = 0; j < *n; ++j)
      if (want(q[j])) return q[j];
  }
  return std::nullopt;
}

TEST_F(ControlChannelKernelTest, WriteDone_CarriesTheMapsRangeAndIsRedeliveredUntilCommitted) {
  const std::vector<uint8_t> pattern(4096, 0x5a);
  auto writer =
      std::async(std::launch::async, [&] { return write_block(dev_->node_path(), 9, pattern); });
  dmu_request map{};
  {
    auto first = bound();
    auto m = read_until(first, [](const dmu_request& q) {
      return q.type == DMU_REQ_MAP && (q.flags & DMU_MAP_WRITE);
    });
    ASSERT_TRUE(m);
    map = *m;
    EXPECT_EQ(map.block, 9u);
    dmu_response fresh = proto::remap_extent(map.id, 9, 1, 0, 9 * kBlockSectors,
                                             DMU_EXT_WRITABLE | DMU_EXT_NEW, true);
    auto w = first.write_responses({&fresh, 1});
    ASSERT_TRUE(w) << w.error().message;
    ASSERT_TRUE(w->complete());
    auto done = read_until(
        first, [&](const dmu_request& q) { return q.type == DMU_REQ_DONE && q.id == map.id; });
    ASSERT_TRUE(done);
    EXPECT_EQ(proto::request_problem(*done), "");
    EXPECT_EQ(done->flags, map.flags);
    EXPECT_EQ(done->block, map.block);
    EXPECT_EQ(done->nr_blocks, map.nr_blocks);
    EXPECT_EQ(done->status, 0);
    EXPECT_TRUE(writer.get());
    auto records = first.list_allocations();
    ASSERT_TRUE(records) << records.error().message;
    ASSERT_EQ(records->size(), 1u);
    EXPECT_EQ(proto::describe((*records)[0]),
              "ALLOC id=" + std::to_string(map.id) + " block=9+1 dev=0 sector=72 done");
  }  // gone without a COMMIT: the record is not published
  BindInfo info;
  auto second = bound(&info);
  EXPECT_EQ(info.allocations, 1u);
  auto records = second.list_allocations();
  ASSERT_TRUE(records) << records.error().message;
  ASSERT_EQ(records->size(), 1u);
  EXPECT_EQ((*records)[0].id, map.id);
  auto again = read_until(
      second, [&](const dmu_request& q) { return q.type == DMU_REQ_DONE && q.id == map.id; });
  ASSERT_TRUE(again) << "the DONE of an unpublished allocation was not read again";
  EXPECT_EQ(again->block, map.block);
  EXPECT_EQ(read_block(dev_->node_path(), 9), pattern);  // the NEW extent stays cached
}

TEST_F(ControlChannelKernelTest, Discard_GetsADoneAndIsListedUntilThen) {
  auto ch = bound();
  auto discarder =
      std::async(std::launch::async, [&] { return discard_blocks(dev_->node_path(), 16, 4); });
  auto m = read_until(ch, [](const dmu_request& q) {
    return q.type == DMU_REQ_MAP && (q.flags & DMU_MAP_DISCARD);
  });
  ASSERT_TRUE(m);
  EXPECT_EQ(m->block, 16u);
  EXPECT_EQ(m->nr_blocks, 4u);
  dmu_response ok = proto::complete(m->id, 0);
  auto w = ch.write_responses({&ok, 1});
  ASSERT_TRUE(w) << w.error().message;
  ASSERT_TRUE(w->complete());
  EXPECT_TRUE(discarder.get());
  auto done =
      read_until(ch, [&](const dmu_request& q) { return q.type == DMU_REQ_DONE && q.id == m->id; });
  ASSERT_TRUE(done) << "no DONE for an answered discard";
  EXPECT_EQ(done->flags, uint32_t{DMU_MAP_DISCARD});
  EXPECT_EQ(done->block, 16u);
  EXPECT_EQ(done->nr_blocks, 4u);
  auto records = ch.list_allocations();
  ASSERT_TRUE(records) << records.error().message;
  ASSERT_EQ(records->size(), 1u);
  EXPECT_EQ(proto::describe((*records)[0]),
            "DISCARD id=" + std::to_string(m->id) + " block=16+4 done");
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
}  // namespace dmu::mapper
