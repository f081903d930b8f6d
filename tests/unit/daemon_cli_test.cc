// The attach/detach/list/stats/serve command lines on a host without the
// kernel target: --help, one-line usage errors, and the idempotent detach of
// a name that is not attached (without touching device-mapper when there is
// no record and no runtime directory to find).
#include <gtest/gtest.h>
#include <unistd.h>

#include "tests/unit/cli_test_support.h"

namespace dmu::test {
namespace {

TEST(DaemonCli, BadArgumentsAreOneLineErrors) {
  TempDir dir;
  for (const char* args : {"attach", "attach --bogus x.img", "detach", "stats",
                           "list --output=yaml", "serve", "stats --output=xml x"}) {
    auto r = run_split("DMU_RUN_DIR=" + dir.path() + "/run " + dmu(args), dir.path());
    EXPECT_EQ(r.exit_code, 1) << args;
    EXPECT_EQ(line_count(r.err), 1u) << args << ": " << r.err;
    EXPECT_EQ(r.out, "") << args;
  }
}

TEST(DaemonCli, AttachNamesTheMissingImage) {
  TempDir dir;
  auto r = run_split("DMU_RUN_DIR=" + dir.path() + "/run " + dmu("attach " + dir.file("no.qcow2")),
                     dir.path());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find(dir.file("no.qcow2")), std::string::npos) << r.err;
  EXPECT_EQ(line_count(r.err), 1u) << r.err;
}

TEST(DaemonCli, AttachRefusesABadName) {
  TempDir dir;
  auto r = run_split(dmu("create -f raw x.img 1M") + " >/dev/null && DMU_RUN_DIR=" + dir.path() +
                         "/run " + dmu("attach --name a/b x.img"),
                     dir.path());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("a/b"), std::string::npos) << r.err;
}

// This host has no dm-userspace module (vm.attach-errors checks the same in
// a VM after rmmod, and with the module loaded but its node gone).
TEST(DaemonCli, AttachWithoutTheModuleSaysSoInOneLine) {
  if (::access("/dev/dm-userspace", F_OK) == 0) GTEST_SKIP() << "dm-userspace is loaded here";
  TempDir dir;
  auto r = run_split(dmu("create -f raw x.img 1M") + " >/dev/null && DMU_RUN_DIR=" + dir.path() +
                         "/run " + dmu("attach -f raw x.img"),
                     dir.path());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("/dev/dm-userspace: no such control device: the dm-userspace module is not "
                       "loaded"),
            std::string::npos)
      << r.err;
  EXPECT_EQ(line_count(r.err), 1u) << r.err;
}

TEST(DaemonCli, ListOfNothingIsEmpty) {
  TempDir dir;
  auto r = run_split("DMU_RUN_DIR=" + dir.path() + "/run " + dmu("list --output=json"), dir.path());
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "[]\n");
}

}  // namespace
}  // namespace dmu::test
