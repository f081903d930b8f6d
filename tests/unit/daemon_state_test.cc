// The state record under /run/dmu (daemon/state_file.h): JSON round trip,
// atomic writes, listing, and refusal of damaged records with the file and
// field named.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <optional>
#include <thread>

#include "daemon/group.h"
#include "daemon/name_lock.h"
#include "daemon/paths.h"
#include "daemon/state_file.h"
#include "tests/support/test_support.h"

namespace dmu::daemon {
namespace {

// Points the runtime directory at a temporary one for the test's lifetime.
class RunDir {
 public:
  RunDir() { ::setenv("DMU_RUN_DIR", (dir_.path() + "/run/dmu").c_str(), 1); }
  ~RunDir() { ::unsetenv("DMU_RUN_DIR"); }
  std::string path() const { return dir_.path() + "/run/dmu"; }

 private:
  test::TempDir dir_;
};

DeviceState sample(const std::string& name = "vm1-xvda") {
  DeviceState s;
  s.name = name;
  s.image = "/vm/disk.qcow2";
  s.format = "qcow2";
  s.chain = {"/vm/disk.qcow2", "/vm/base.qcow2"};
  s.key = key_for(name);
  s.read_only = false;
  s.block_sectors = 128;
  s.target_sectors = 2097152;
  s.devices = {{"/vm/disk.qcow2", "/dev/loop0", true},
               {"/vm/base.qcow2", "/dev/loop1", false},
               {"/run/dmu/" + name + ".scratch", "/dev/loop2", false}};
  s.scratch = "/run/dmu/" + name + ".scratch";
  s.pid = 4242;
  return s;
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
}

TEST(DaemonState, JsonRoundTrip) {
  const DeviceState s = sample();
  auto back = state_from_json(to_json(s), "x.json");
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(*back, s);
  EXPECT_EQ(to_json(s)["node"], "/dev/mapper/vm1-xvda");
}

// Metadata loops round-trip; a record with them is version 2 (an older dmu
// refuses it instead of detaching it without them), one without stays
// version 1, and both are read.
TEST(DaemonState, MetadataLoopsRoundTripAndSetTheVersion) {
  DeviceState s = sample();
  EXPECT_EQ(to_json(s)["version"], 1);
  EXPECT_FALSE(to_json(s).contains("metadata-loops"));
  s.metadata_loops = {{"/vm/disk.qcow2", "/dev/loop7", true},
                      {"/vm/base.vmdk", "/dev/loop8", false}};
  const nlohmann::json j = to_json(s);
  EXPECT_EQ(j["version"], 2);
  EXPECT_EQ(j["metadata-loops"][0]["lock"], "writer");
  EXPECT_EQ(j["metadata-loops"][1]["lock"], "reader");
  auto back = state_from_json(j, "x.json");
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(*back, s);

  nlohmann::json bad = j;
  bad["metadata-loops"][1]["lock"] = "exclusive";
  auto r = state_from_json(bad, "x.json");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("metadata-loops[1]"), std::string::npos) << r.error().message;
  bad = j;
  bad["metadata-loops"][0].erase("loop");
  r = state_from_json(bad, "x.json");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("'loop'"), std::string::npos) << r.error().message;
  bad = j;
  bad["version"] = 4;
  r = state_from_json(bad, "x.json");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("version 4"), std::string::npos) << r.error().message;
}

// A device served by a group process (dmu attach --group) records the group
// and is version 3, so an older dmu refuses it rather than waiting for a
// process it cannot find by its command line; records without a group keep
// their version and read back with no group.
TEST(DaemonState, GroupRoundTripsAndIsVersion3) {
  DeviceState s = sample();
  EXPECT_FALSE(to_json(s).contains("group"));
  s.group = "xen-dom7";
  nlohmann::json j = to_json(s);
  EXPECT_EQ(j["version"], 3);
  EXPECT_EQ(j["group"], "xen-dom7");
  auto back = state_from_json(j, "x.json");
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(*back, s);
  s.metadata_loops = {{"/vm/disk.qcow2", "/dev/loop7", true}};
  EXPECT_EQ(to_json(s)["version"], 3);
  s.group.clear();
  EXPECT_EQ(to_json(s)["version"], 2);
  j["group"] = 7;
  auto r = state_from_json(j, "x.json");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("'group'"), std::string::npos) << r.error().message;
}

// The attach id round-trips without a new version (older dmu ignore it); a
// record without one (written before it existed) still reads, with none.
TEST(DaemonState, AttachIdRoundTripsAndIsOptional) {
  DeviceState s = sample();
  EXPECT_FALSE(to_json(s).contains("attach-id"));
  s.attach_id = new_attach_id();
  EXPECT_EQ(s.attach_id.size(), 16u);
  EXPECT_NE(s.attach_id, new_attach_id());
  nlohmann::json j = to_json(s);
  EXPECT_EQ(j["version"], 1);
  EXPECT_EQ(j["attach-id"], s.attach_id);
  auto back = state_from_json(j, "x.json");
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(*back, s);
  j.erase("attach-id");
  back = state_from_json(j, "x.json");
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(back->attach_id, "");
  j["attach-id"] = 7;
  auto r = state_from_json(j, "x.json");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("'attach-id'"), std::string::npos) << r.error().message;
}

TEST(DaemonState, FileRoundTripCreatesTheDirectory) {
  RunDir run;
  ASSERT_TRUE(write_state(sample()));
  auto back = read_state("vm1-xvda");
  ASSERT_TRUE(back) << back.error().message;
  ASSERT_TRUE(back->has_value());
  EXPECT_EQ(**back, sample());
  // No temporary file is left beside the record.
  std::vector<std::string> problems;
  auto all = list_states(problems);
  EXPECT_TRUE(problems.empty());
  ASSERT_EQ(all.size(), 1u);
}

TEST(DaemonState, MissingRecordIsNotAnError) {
  RunDir run;
  auto r = read_state("nothing");
  ASSERT_TRUE(r);
  EXPECT_FALSE(r->has_value());
}

TEST(DaemonState, RewriteReplacesTheRecord) {
  RunDir run;
  DeviceState s = sample();
  ASSERT_TRUE(write_state(s));
  s.pid = 99;
  ASSERT_TRUE(write_state(s));
  auto back = read_state(s.name);
  ASSERT_TRUE(back && *back);
  EXPECT_EQ((*back)->pid, 99);
}

TEST(DaemonState, DamagedRecordsNameFileAndField) {
  RunDir run;
  ASSERT_TRUE(ensure_run_dir());
  write_text(run.path() + "/bad.json", "{not json");
  auto r = read_state("bad");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find(run.path() + "/bad.json"), std::string::npos);

  nlohmann::json j = to_json(sample("typo"));
  j["block-sectors"] = "many";
  write_text(run.path() + "/typo.json", j.dump());
  r = read_state("typo");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("block-sectors"), std::string::npos) << r.error().message;

  j = to_json(sample("old"));
  j["version"] = 0;
  write_text(run.path() + "/old.json", j.dump());
  r = read_state("old");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("version"), std::string::npos);

  // A record must describe the name it is filed under.
  write_text(run.path() + "/other.json", to_json(sample("elsewhere")).dump());
  EXPECT_FALSE(read_state("other"));
}

TEST(DaemonState, ListSkipsStatsAndReportsDamage) {
  RunDir run;
  ASSERT_TRUE(write_state(sample("a")));
  ASSERT_TRUE(write_state(sample("b")));
  write_text(run.path() + "/a.stats.json", "{}");
  write_text(run.path() + "/broken.json", "[]");
  std::vector<std::string> problems;
  auto all = list_states(problems);
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].name, "a");
  EXPECT_EQ(all[1].name, "b");
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_NE(problems[0].find("broken.json"), std::string::npos);
}

TEST(DaemonState, RemoveTakesTheCompanionsToo) {
  RunDir run;
  ASSERT_TRUE(write_state(sample("gone")));
  for (const auto& p : {stats_path("gone"), scratch_path("gone"), log_path("gone"), lock_path("gone")})
    write_text(p, "x");
  remove_state_files("gone");
  std::vector<std::string> problems;
  EXPECT_TRUE(list_states(problems).empty());
  for (const auto& p : {stats_path("gone"), scratch_path("gone"), log_path("gone"), lock_path("gone")})
    EXPECT_FALSE(std::ifstream(p).good()) << p;
}

// A writer killed between write_file_atomic's create and rename leaves
// NAME.json.tmp.PID; the name's removal takes it once it is over a minute
// old, not a living writer's, nor a fresh one (a writer in another pid
// namespace has a pid we cannot see).
TEST(DaemonState, RemoveTakesADeadWritersTemporaries) {
  RunDir run;
  ASSERT_TRUE(write_state(sample("gone")));
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) ::_exit(0);
  ASSERT_EQ(::waitpid(child, nullptr, 0), child);
  const std::string dead = std::to_string(child), alive = std::to_string(::getpid());
  const std::string dead_record = state_path("gone") + ".tmp." + dead;
  const std::string dead_stats = stats_path("gone") + ".tmp." + dead;
  const std::string living = state_path("gone") + ".tmp." + alive;
  const std::string other = state_path("gone2") + ".tmp." + dead;
  for (const auto& p : {dead_record, dead_stats, living, other}) {
    write_text(p, "x");
    const timespec two_minutes_ago[2] = {{::time(nullptr) - 120, 0}, {::time(nullptr) - 120, 0}};
    ASSERT_EQ(::utimensat(AT_FDCWD, p.c_str(), two_minutes_ago, 0), 0) << p;
  }
  const std::string fresh = leave_path("gone") + ".tmp." + dead;
  write_text(fresh, "x");
  remove_state_files("gone");
  EXPECT_FALSE(std::ifstream(dead_record).good());
  EXPECT_FALSE(std::ifstream(dead_stats).good());
  EXPECT_TRUE(std::ifstream(living).good()) << "a living writer's temporary was taken";
  EXPECT_TRUE(std::ifstream(other).good()) << "another name's temporary was taken";
  EXPECT_TRUE(std::ifstream(fresh).good()) << "a fresh temporary was taken";
}

TEST(DaemonState, AFailedAttachKeepsTheLogItsErrorNames) {
  RunDir run;
  ASSERT_TRUE(write_state(sample("failed")));
  write_text(log_path("failed"), "why it failed");
  remove_state_files("failed", /*keep_log=*/true);
  EXPECT_FALSE(std::ifstream(state_path("failed")).good());
  EXPECT_TRUE(std::ifstream(log_path("failed")).good());
}

// A `dmu list` probing the lock (a shared flock for an instant) while the
// mapping process takes it must not make the process give up.
TEST(DaemonState, TakingTheNameLockWaitsOutAProbe) {
  RunDir run;
  ASSERT_TRUE(ensure_run_dir());
  write_text(lock_path("busy"), "");
  int fd = ::open(lock_path("busy").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::flock(fd, LOCK_SH), 0);  // a probe that lasts 100 ms
  std::thread probe([fd] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    ::close(fd);
  });
  auto lock = NameLock::try_acquire("busy");
  probe.join();
  ASSERT_TRUE(lock) << lock.error().message;
  EXPECT_TRUE(lock_held("busy"));
}

// Two detaches of one name: the second waits for the first (and gives up
// after its wait), the first unlinks the file as it lets go, and a waiter
// holding the unlinked file moves on to the new one.
TEST(DaemonState, DetachesOfOneNameTakeTurns) {
  RunDir run;
  auto first = DetachLock::acquire("d", std::chrono::milliseconds(0));
  ASSERT_TRUE(first) << first.error().message;
  auto busy = DetachLock::acquire("d", std::chrono::milliseconds(100));
  ASSERT_FALSE(busy);
  EXPECT_EQ(busy.error().code, EWOULDBLOCK);
  EXPECT_NE(busy.error().message.find("another dmu detach of it still runs"), std::string::npos)
      << busy.error().message;
  // A waiter already holding the old file when the first lets go.
  int stale = ::open(detach_lock_path("d").c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(stale, 0);
  std::optional<Result<DetachLock>> second;
  std::thread waiter([&] { second.emplace(DetachLock::acquire("d", std::chrono::seconds(5))); });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  { auto gone = std::move(*first); }  // lets go
  waiter.join();
  ASSERT_TRUE(*second) << second->error().message;
  // The stale descriptor's file is unlinked: locking it excludes nobody,
  // while the second holds the one the path names.
  EXPECT_EQ(::flock(stale, LOCK_EX | LOCK_NB), 0);
  ::close(stale);
  EXPECT_FALSE(DetachLock::acquire("d", std::chrono::milliseconds(50)));
  second.reset();
  EXPECT_NE(::access(detach_lock_path("d").c_str(), F_OK), 0) << "the file stayed behind";
}

// B3: a rebind of a group member read the record, found nobody serving, and
// wrote it back with pid 0 -- over the pid a group process restarted by its
// supervisor had written meanwhile, so join_group waited for a pid that
// never came.  mark_unbound rewrites under the name lock, which the serving
// process holds.
TEST(DaemonState, MarkUnboundLeavesAServingProcessesPid) {
  RunDir run;
  DeviceState s = sample("xen-vbd-1-51712");
  s.group = "xen-dom1";
  s.pid = 0;
  ASSERT_TRUE(write_state(s));
  // The restarted group process: takes the lock, then writes its pid.
  auto server = NameLock::try_acquire(s.name);
  ASSERT_TRUE(server) << server.error().message;
  s.pid = 4242;
  ASSERT_TRUE(write_state(s));
  auto r = mark_unbound(s.name);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_FALSE(*r);
  auto back = read_state(s.name);
  ASSERT_TRUE(back && *back);
  EXPECT_EQ((*back)->pid, 4242);
  EXPECT_TRUE(lock_held(s.name));
}

TEST(DaemonState, MarkUnboundClearsThePidWhenNobodyServes) {
  RunDir run;
  DeviceState s = sample("xen-vbd-1-51728");
  s.group = "xen-dom1";
  s.supervisor = 17;
  ASSERT_TRUE(write_state(s));
  auto r = mark_unbound(s.name);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_TRUE(*r);
  auto back = read_state(s.name);
  ASSERT_TRUE(back && *back);
  DeviceState want = s;
  want.pid = 0;
  EXPECT_EQ(**back, want);  // only the pid changed
  EXPECT_FALSE(lock_held(s.name));  // and the lock is let go for the group process
  auto again = NameLock::try_acquire(s.name);
  EXPECT_TRUE(again) << again.error().message;
}

TEST(DaemonState, MarkUnboundOfAMissingRecordSaysSo) {
  RunDir run;
  auto r = mark_unbound("gone");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ENOENT);
}

TEST(DaemonState, AtomicWriteLeavesNoTemporary) {
  test::TempDir dir;
  const std::string path = dir.file("x.json");
  ASSERT_TRUE(write_file_atomic(path, "one\n"));
  ASSERT_TRUE(write_file_atomic(path, "two\n"));
  std::ifstream in(path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, "two\n");
  auto r = write_file_atomic(dir.file("missing/x.json"), "x");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("missing/x.json"), std::string::npos);
}

}  // namespace
}  // namespace dmu::daemon
