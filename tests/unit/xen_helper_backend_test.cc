// dmu-xen-helper's pure logic (xen-helper/backend.h): which targets it
// serves, how a backend path names a domain's disk, and the names and paths
// block-dmu shares with it.
#include <gtest/gtest.h>

#include "xen-helper/backend.h"

namespace dmu::xenhelper {
namespace {

TEST(XenHelperTarget, KnownPrefixesGiveFormatAndPath) {
  for (const char* f : {"qcow", "qcow2", "vmdk", "raw"}) {
    auto t = parse_target(std::string(f) + ":/vm/a.img");
    ASSERT_TRUE(t) << t.error().message;
    EXPECT_EQ(t->format, f);
    EXPECT_EQ(t->path, "/vm/a.img");
  }
  auto probe = parse_target("dmu:/vm/a b.qcow2");
  ASSERT_TRUE(probe);
  EXPECT_EQ(probe->format, "");  // dmu probes
  EXPECT_EQ(probe->path, "/vm/a b.qcow2");
  // Only the first colon separates: the path may hold more.
  auto colon = parse_target("qcow2:/vm/x:y.qcow2");
  ASSERT_TRUE(colon);
  EXPECT_EQ(colon->path, "/vm/x:y.qcow2");
}

TEST(XenHelperTarget, UnknownPrefixOrRelativePathIsRefusedNamingTheTarget) {
  for (const char* bad : {"qed:/vm/a.qed", "/vm/plain.img", "qcow2:vm/rel.qcow2", "qcow2:", "",
                          "QCOW2:/vm/a", "vhd:/vm/a.vhd"}) {
    auto t = parse_target(bad);
    ASSERT_FALSE(t) << bad;
    EXPECT_NE(t.error().message.find(std::string(bad) + ": target is not"), std::string::npos)
        << t.error().message;
  }
}

TEST(XenHelperBackend, AbsoluteAndRelativePathsNameDomainAndDevice) {
  EXPECT_EQ(parse_backend_path("/local/domain/0/backend/vbd/7/51712"), (BackendId{7, 51712}));
  EXPECT_EQ(parse_backend_path("backend/vbd/7/51712"), (BackendId{7, 51712}));
  EXPECT_EQ(parse_backend_path("/local/domain/0/backend/vbd/12/51728/dmu/request"),
            (BackendId{12, 51728}));
  for (const char* bad :
       {"/local/domain/0/backend/vbd/7", "/local/domain/0/backend/vif/7/0", "/local/domain/7/device/vbd/51712",
        "/local/domain/0/backend/vbd/x/51712", "/local/domain/0/backend/vbd/7/", "backend/vbd/07/1",
        "backend/vbd/99999999999/1", "@releaseDomain"})
    EXPECT_FALSE(parse_backend_path(bad)) << bad;
}

TEST(XenHelperBackend, NamesAndPathsMatchBlockDmu) {
  const BackendId id{7, 51712};
  EXPECT_EQ(backend_path(id), "/local/domain/0/backend/vbd/7/51712");
  EXPECT_EQ(parse_backend_path(backend_path(id)), id);
  // block-dmu: dm_name() -> xen-vbd-<domid>-<devid>; state dir: the
  // relative XENBUS_PATH with '/' -> '_'.
  EXPECT_EQ(dm_name(id), "xen-vbd-7-51712");
  EXPECT_EQ(parse_dm_name("xen-vbd-7-51712"), id);
  EXPECT_EQ(hotplug_state_dir("/run/dmu/hotplug", id), "/run/dmu/hotplug/backend_vbd_7_51712");
  EXPECT_EQ(group_name(7), "xen-dom7");
  for (const char* bad : {"xen-vbd-7", "xen-vbd--1", "xen-vbd-7-x", "vbd-7-51712", "xen-vbd-7-51712-2", "r1"})
    EXPECT_FALSE(parse_dm_name(bad)) << bad;
}

TEST(XenHelperRequest, AFreshAddOrADeadHelpersClaimIsClaimable) {
  auto none_alive = [](pid_t) { return false; };
  auto all_alive = [](pid_t) { return true; };
  EXPECT_EQ(request_claim(42), "claimed 42");
  EXPECT_TRUE(request_claimable("add", 42, all_alive));
  // A helper killed mid-add left its claim; block-dmu still waits.
  EXPECT_TRUE(request_claimable("claimed 7", 42, none_alive));
  EXPECT_FALSE(request_claimable("claimed 7", 42, all_alive));  // it works on it
  EXPECT_FALSE(request_claimable("claimed 42", 42, none_alive));  // ours already
  for (const char* bad : {"", "ad", "add ", "claimed", "claimed ", "claimed x", "claimed 7x",
                          "claimed -7", "claimed 07", "claimed 0", "claimed 12345678901", "busy 7"})
    EXPECT_FALSE(request_claimable(bad, 42, none_alive)) << bad;
}

TEST(XenHelperRequest, DeadlineIsAPositiveDecimal) {
  EXPECT_EQ(parse_deadline("1764000029"), 1764000029);
  for (const char* bad : {"", "0", "012", "-5", "x", "12x", " 12", "12 ", "1234567890123"})
    EXPECT_FALSE(parse_deadline(bad)) << bad;
}

// Three slow disks of one xl create: the third must not start a 20 s attach
// 25 s into block-dmu's 29 s wait.
TEST(XenHelperRequest, AttachBudgetIsWhatIsLeftOfBlockDmusWait) {
  using std::chrono::milliseconds;
  using std::chrono::seconds;
  const int64_t deadline = 1000;                                              // s
  EXPECT_EQ(attach_budget(std::nullopt, 990'000, seconds(20)), seconds(20));  // an older block-dmu
  EXPECT_EQ(attach_budget(deadline, 971'000, seconds(20)), seconds(20));      // 29 s left
  EXPECT_EQ(attach_budget(deadline, 980'500, seconds(20)), milliseconds(17'500));  // 2 s to answer
  EXPECT_EQ(attach_budget(deadline, 995'000, seconds(20)), seconds(3));
  EXPECT_EQ(attach_budget(deadline, 995'001, seconds(20)), seconds(0));  // too little to start
  EXPECT_EQ(attach_budget(deadline, 1'200'000, seconds(20)), seconds(0));
  EXPECT_EQ(attach_budget(deadline, -5, seconds(20)), seconds(20));  // a clock before 1970
}

// A gone domain's device whose detach keeps failing (held open in dom0)
// is tried again later and later, not at every tick.
TEST(XenHelperGoneDetach, RetriesBackOffTo5Minutes) {
  using std::chrono::seconds;
  EXPECT_EQ(gone_detach_retry_delay(0), seconds(5));
  EXPECT_EQ(gone_detach_retry_delay(1), seconds(5));
  EXPECT_EQ(gone_detach_retry_delay(2), seconds(10));
  EXPECT_EQ(gone_detach_retry_delay(3), seconds(20));
  EXPECT_EQ(gone_detach_retry_delay(6), seconds(160));
  EXPECT_EQ(gone_detach_retry_delay(7), seconds(300));
  EXPECT_EQ(gone_detach_retry_delay(4000000000u), seconds(300));
}

}  // namespace
}  // namespace dmu::xenhelper
