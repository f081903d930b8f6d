// ControlChannel on the host: the interpretation of write() results the
// header promises, and errors that name the device and key.  The real
// conversation with the kernel is tested in the VM (tests/vm/cases/kmod-*.sh,
// e.g. kmod-hostile checks every write() return value against the module).
#include "mapper/control_channel.h"

#include <gtest/gtest.h>

#include <functional>

namespace dmu::mapper {
namespace {

TEST(ControlChannel, InterpretWrite_FullCountMeansEverythingAccepted) {
  auto r = interpret_write(192, 0, 192, "ctl");
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->accepted, 3u);
  EXPECT_TRUE(r->complete());
}

TEST(ControlChannel, InterpretWrite_ShortCountMeansNextMessageRefused) {
  auto r = interpret_write(128, 0, 256, "ctl");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->accepted, 2u);
  EXPECT_EQ(r->error, EINVAL);
}

TEST(ControlChannel, InterpretWrite_EinvalMeansFirstMessageRefused) {
  auto r = interpret_write(-1, EINVAL, 256, "ctl");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->accepted, 0u);
  EXPECT_EQ(r->error, EINVAL);
}

TEST(ControlChannel, InterpretWrite_OtherErrnoIsAChannelFailure) {
  auto r = interpret_write(-1, ENODEV, 64, "/dev/dm-userspace (key k)");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ENODEV);
  EXPECT_NE(r.error().message.find("/dev/dm-userspace (key k)"), std::string::npos);
}

TEST(ControlChannel, InterpretWrite_PartialMessageCountIsAProtocolError) {
  auto r = interpret_write(100, 0, 128, "ctl");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EPROTO);
  auto over = interpret_write(256, 0, 128, "ctl");
  ASSERT_FALSE(over);
}

TEST(ControlChannel, Open_MissingDeviceNamesThePath) {
  auto ch = ControlChannel::open("/nonexistent/dm-userspace");
  ASSERT_FALSE(ch);
  EXPECT_EQ(ch.error().code, ENOENT);
  EXPECT_NE(ch.error().message.find("/nonexistent/dm-userspace"), std::string::npos);
}

// attach checks this first: a missing module is one line saying so.
TEST(ControlChannel, CheckPresent_SaysTheModuleIsNotLoadedOrTheNodeIsWrong) {
  auto missing = ControlChannel::check_present("/nonexistent/dm-userspace");
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, ENOENT);
  EXPECT_NE(missing.error().message.find("/nonexistent/dm-userspace: no such control device: the "
                                         "dm-userspace module is not loaded"),
            std::string::npos)
      << missing.error().message;
  auto regular = ControlChannel::check_present("/proc/version");
  ASSERT_FALSE(regular);
  EXPECT_NE(regular.error().message.find("/proc/version: not a character device"),
            std::string::npos)
      << regular.error().message;
  // A character device: checked against the number sysfs gives for it.
  auto null = ControlChannel::check_present("/dev/null", "/sys/class/mem/null/dev");
  EXPECT_TRUE(null) << null.error().message;
  auto stale = ControlChannel::check_present("/dev/null", "/sys/class/mem/zero/dev");
  ASSERT_FALSE(stale);
  EXPECT_NE(stale.error().message.find("/dev/null: device 1:3, but the dm-userspace module's "
                                       "control device is 1:5"),
            std::string::npos)
      << stale.error().message;
  auto unloaded = ControlChannel::check_present("/dev/null", "/nonexistent/dev");
  ASSERT_FALSE(unloaded);
  EXPECT_NE(unloaded.error().message.find("the dm-userspace module is not loaded"),
            std::string::npos)
      << unloaded.error().message;
}

TEST(ControlChannel, Bind_OnNonControlDeviceFailsNamingPathAndKey) {
  auto ch = ControlChannel::open("/dev/null");
  ASSERT_TRUE(ch) << ch.error().message;
  auto b = ch->bind("vm7-disk0");
  ASSERT_FALSE(b);
  EXPECT_NE(b.error().message.find("/dev/null"), std::string::npos);
  EXPECT_NE(b.error().message.find("vm7-disk0"), std::string::npos);
}

TEST(ControlChannel, Bind_RefusesEmptyAndOverlongKeys) {
  auto ch = ControlChannel::open("/dev/null");
  ASSERT_TRUE(ch);
  EXPECT_EQ(ch->bind("").error().code, EINVAL);
  EXPECT_EQ(ch->bind(std::string(DMU_KEY_LEN, 'k')).error().code, EINVAL);
}

TEST(ControlChannel, VersionMismatch_NamesBothVersions) {
  dmu_bind kernel{};
  kernel.version_major = 3;
  kernel.version_minor = 1;
  kernel.version_patch = 4;
  EXPECT_EQ(version_mismatch(kernel),
            "kernel speaks protocol 3.1.4, this daemon " + std::to_string(DMU_VERSION_MAJOR) + "." +
                std::to_string(DMU_VERSION_MINOR) + "." + std::to_string(DMU_VERSION_PATCH));
}

TEST(ControlChannel, ListAllocations_OnNonControlDeviceFailsNamingThePath) {
  auto ch = ControlChannel::open("/dev/null");
  ASSERT_TRUE(ch);
  auto l = ch->list_allocations();
  ASSERT_FALSE(l);
  EXPECT_NE(l.error().message.find("/dev/null"), std::string::npos);
  EXPECT_NE(l.error().message.find("list allocations"), std::string::npos);
}

// A kernel stand-in for DMU_IOC_LIST_ALLOCATIONS: `records` behind an opaque
// cursor (here an index scrambled so it is not monotonic), counting calls.
struct FakeLister {
  std::vector<dmu_allocation> records;
  int calls = 0;
  static uint64_t cursor_of(size_t index) { return index ? (index * 7919) ^ 0xabcdef : 0; }
  int operator()(dmu_list_allocations& req) {
    ++calls;
    size_t index = 0;
    while (index <= records.size() && cursor_of(index) != req.start) ++index;
    if (index > records.size()) return -EINVAL;  // a cursor never handed out
    if (req.reserved[0] || req.reserved[1] || req.count) return -EINVAL;
    auto* out = reinterpret_cast<dmu_allocation*>(static_cast<uintptr_t>(req.buf));
    req.count = 0;
    while (req.count < req.max && index < records.size()) out[req.count++] = records[index++];
    req.next = cursor_of(index);
    return 0;
  }
};

std::vector<dmu_allocation> numbered(size_t n) {
  std::vector<dmu_allocation> v;
  for (size_t i = 0; i < n; ++i) v.push_back({i + 1, i, 1, 4096 + 8 * i, 0, 0});
  return v;
}

TEST(ControlChannel, WalkAllocations_RepeatsWithNextUntilAShortPage) {
  for (size_t n : {size_t{0}, size_t{5}, size_t{8}, size_t{17}}) {
    SCOPED_TRACE(n);
    FakeLister k{numbered(n)};
    auto all = walk_allocations(std::ref(k), 4, SIZE_MAX, "ctl");
    ASSERT_TRUE(all) << all.error().message;
    ASSERT_EQ(all->size(), n);
    for (size_t i = 0; i < n; ++i) EXPECT_EQ((*all)[i].id, i + 1);  // application order kept
    EXPECT_EQ(k.calls, static_cast<int>(n / 4 + 1));  // a full last page needs one more call
  }
}

TEST(ControlChannel, WalkAllocations_StopsAtMaxTotal) {
  FakeLister k{numbered(10)};
  auto some = walk_allocations(std::ref(k), 4, 6, "ctl");
  ASSERT_TRUE(some);
  EXPECT_EQ(some->size(), 6u);
  EXPECT_EQ(some->back().id, 6u);
}

TEST(ControlChannel, WalkAllocations_RefusesOverfullPagesAndAStuckCursor) {
  auto overfull = walk_allocations(
      [](dmu_list_allocations& req) {
        req.count = req.max + 1;
        return 0;
      },
      4, SIZE_MAX, "ctl");
  ASSERT_FALSE(overfull);
  EXPECT_EQ(overfull.error().code, EPROTO);
  int calls = 0;
  auto stuck = walk_allocations(
      [&](dmu_list_allocations& req) {
        ++calls;
        req.count = req.max;
        req.next = req.start;  // never moves
        return 0;
      },
      4, SIZE_MAX, "ctl");
  ASSERT_FALSE(stuck);
  EXPECT_EQ(stuck.error().code, EPROTO);
  EXPECT_EQ(calls, 1);
  auto failing = walk_allocations([](dmu_list_allocations&) { return -ENODEV; }, 4, SIZE_MAX,
                                  "/dev/dm-userspace (key k)");
  ASSERT_FALSE(failing);
  EXPECT_EQ(failing.error().code, ENODEV);
  EXPECT_NE(failing.error().message.find("key k"), std::string::npos);
}

TEST(ControlChannel, ReadRequests_TimeoutReturnsNothing) {
  // A pipe with no writer data stands in for an idle control device.
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  std::string path = "/proc/self/fd/" + std::to_string(fds[0]);
  auto ch = ControlChannel::open(path);
  ASSERT_TRUE(ch) << ch.error().message;
  dmu_request buf[4];
  auto n = ch->read_requests(buf, std::chrono::milliseconds(20));
  ASSERT_TRUE(n) << n.error().message;
  EXPECT_EQ(*n, 0u);
  ::close(fds[0]);
  ::close(fds[1]);
}

TEST(ControlChannel, ReadRequests_ReturnsWholeMessagesInOrder) {
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  auto ch = ControlChannel::open("/proc/self/fd/" + std::to_string(fds[0]));
  ASSERT_TRUE(ch);
  dmu_request sent[2] = {proto::map_request(1, 5, 2, DMU_MAP_WRITE), proto::commit_request(2)};
  ASSERT_EQ(::write(fds[1], sent, sizeof sent), static_cast<ssize_t>(sizeof sent));
  dmu_request got[8];
  auto n = ch->read_requests(got, std::chrono::milliseconds(1000));
  ASSERT_TRUE(n) << n.error().message;
  ASSERT_EQ(*n, 2u);
  EXPECT_EQ(proto::describe(got[0]), "MAP id=1 block=5+2 write");
  EXPECT_EQ(proto::describe(got[1]), "COMMIT id=2");
  ::close(fds[0]);
  ::close(fds[1]);
}

TEST(ControlChannel, ReadRequests_PartialMessageIsAProtocolError) {
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  auto ch = ControlChannel::open("/proc/self/fd/" + std::to_string(fds[0]));
  ASSERT_TRUE(ch);
  char junk[100] = {};
  ASSERT_EQ(::write(fds[1], junk, sizeof junk), 100);
  dmu_request got[8];
  auto n = ch->read_requests(got, std::chrono::milliseconds(1000));
  ASSERT_FALSE(n);
  EXPECT_EQ(n.error().code, EPROTO);
  ::close(fds[0]);
  ::close(fds[1]);
}

}  // namespace
}  // namespace dmu::mapper
