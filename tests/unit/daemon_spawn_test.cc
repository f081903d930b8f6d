// spawn_dmu: what a background dmu process gets from its caller -- nothing
// but /dev/null, its log and (for attach's mapping process) the ready pipe.
#include "daemon/spawn.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

namespace dmu::daemon {
namespace {

std::string read_all(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

class SpawnTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("dmu-spawn-test-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  int wait(pid_t pid) {
    int status = 0;
    EXPECT_EQ(::waitpid(pid, &status, 0), pid);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  std::filesystem::path dir_;
};

// A descriptor of ours without O_CLOEXEC (block-dmu's flock, libxenstore's
// watch pipe) must not reach the child; its stdout is /dev/null, its
// stderr the log, its session its own.
TEST_F(SpawnTest, ChildGetsOnlyNullLogAndItsOwnSession) {
  const std::string leak = (dir_ / "leak").string();
  int leaked = ::open(leak.c_str(), O_RDWR | O_CREAT, 0600);  // no O_CLOEXEC, on purpose
  ASSERT_GE(leaked, 0);
  const std::string log = (dir_ / "child.log").string();
  const std::string script =
      // Read before any redirection of the shell's own (dash saves and
      // moves its descriptors for those).
      "one=$(readlink /proc/$$/fd/1); "
      "links=$(for f in /proc/$$/fd/*; do readlink \"$f\"; done); "
      "echo \"$one\" >&2; echo \"$links\" >&2; echo stdout-text; "
      "[ \"$(cut -d' ' -f6 /proc/self/stat)\" = $$ ] && echo own-session >&2";
  auto pid = spawn_dmu("/bin/sh", {"-c", script}, log);
  ::close(leaked);
  ASSERT_TRUE(pid) << pid.error().message;
  EXPECT_EQ(wait(*pid), 0);
  const std::string out = read_all(log);
  EXPECT_EQ(out.substr(0, out.find('\n')), "/dev/null") << out;  // its stdout
  EXPECT_EQ(out.find(leak), std::string::npos) << out;
  EXPECT_NE(out.find("own-session"), std::string::npos) << out;
  EXPECT_EQ(out.find("stdout-text"), std::string::npos) << out;
}

TEST_F(SpawnTest, ReadyDescriptorBecomesThree) {
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  const std::string log = (dir_ / "child.log").string();
  auto pid = spawn_dmu("/bin/sh", {"-c", "echo ready >&3"}, log, p[1]);
  ::close(p[1]);
  ASSERT_TRUE(pid) << pid.error().message;
  char buf[16] = {};
  EXPECT_EQ(::read(p[0], buf, sizeof buf - 1), 6);
  EXPECT_STREQ(buf, "ready\n");
  ::close(p[0]);
  EXPECT_EQ(wait(*pid), 0);
}

TEST_F(SpawnTest, ExecFailureIsReportedInTheLog) {
  const std::string log = (dir_ / "child.log").string();
  auto pid = spawn_dmu((dir_ / "no-such-program").string(), {"detach", "x"}, log);
  ASSERT_TRUE(pid) << pid.error().message;
  EXPECT_EQ(wait(*pid), 127);
  EXPECT_NE(read_all(log).find("error: exec"), std::string::npos);
}

}  // namespace
}  // namespace dmu::daemon
