// ControlChannel on the host: the interpretation of write() results the
// header promises, and errors that name the device and key.  The real
// conversation with the kernel is tested in the VM (tests/vm/cases/kmod-*.sh,
// e.g. kmod-hostile checks every write() return value against the module).
#include "mapper/control_channel.h"

#include <gtest/gtest.h>

namespace dmu {
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
}  // namespace dmu
