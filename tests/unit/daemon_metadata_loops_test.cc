// Metadata loops (daemon/metadata_loops.h): which files of a chain need one
// (a qcow2 file with an external data file, a vmdk descriptor with extent
// files), and, against the host's loop driver (root and /dev/loop-control,
// else skipped), that their locks keep qemu-io from writing the file until
// they are released, and that a lost one is set up again unless QEMU took
// the file meanwhile.
#include "daemon/metadata_loops.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <climits>
#include <thread>

#include "daemon/paths.h"
#include "tests/unit/cli_test_support.h"

namespace dmu::daemon {
namespace {

using test::run_split;

bool loop_usable() {
  return ::geteuid() == 0 && ::access("/dev/loop-control", R_OK | W_OK) == 0;
}

std::string real(const std::string& path) {
  char buf[PATH_MAX];
  return ::realpath(path.c_str(), buf) ? std::string(buf) : path;
}

class MetadataLoops : public ::testing::Test {
 protected:
  void SetUp() override { ::setenv("DMU_RUN_DIR", dir_.file("run").c_str(), 1); }
  void TearDown() override { ::unsetenv("DMU_RUN_DIR"); }

  void sh(const std::string& command) {
    auto r = run_split(command, dir_.path());
    ASSERT_EQ(r.exit_code, 0) << command << ": " << r.err;
  }
  std::unique_ptr<formats::Chain> open(const std::string& name) {
    formats::ChainOptions co;
    co.access = formats::Access::ReadWrite;
    auto chain = formats::Chain::open(posix_env(), dir_.file(name), co);
    EXPECT_TRUE(chain) << chain.error().message;
    return chain ? std::move(*chain) : nullptr;
  }
  std::vector<MetadataFile> files_of(const std::string& name, bool writable = true) {
    auto chain = open(name);
    if (!chain) return {};
    auto files = metadata_files(*chain, dir_.file(name), writable);
    EXPECT_TRUE(files) << files.error().message;
    return files ? *files : std::vector<MetadataFile>{};
  }
  // qemu-io's verdict on writing `name`: empty when it wrote, else its output.
  std::string qemu_write(const std::string& name) {
    auto r = run_split("qemu-io -c 'write 0 512' " + name, dir_.path());
    return r.exit_code == 0 ? std::string() : r.out + r.err;
  }
  // A record of an attached `image` whose only metadata loop is `loop`.
  DeviceState record(const std::string& image, const std::string& loop) {
    DeviceState st;
    st.name = "ml";
    st.image = image;
    st.format = "qcow2";
    st.chain = {image};
    st.key = key_for(st.name);
    st.block_sectors = 8;
    st.target_sectors = 2048;
    st.devices = {{dir_.file("d.raw"), "/dev/loop-none", true}};
    st.scratch = scratch_path(st.name);
    st.metadata_loops = {{real(image), loop, true}};
    return st;
  }

  test::TempDir dir_;
};

TEST_F(MetadataLoops, QcowWithAnExternalDataFileNeedsOne) {
  sh("qemu-img create -q -f qcow2 -o data_file=d.raw,data_file_raw=on m.qcow2 1M");
  auto files = files_of("m.qcow2");
  ASSERT_EQ(files.size(), 1u);
  EXPECT_EQ(files[0].path, real(dir_.file("m.qcow2")));
  EXPECT_EQ(files[0].mode, LockMode::Writer);
  EXPECT_FALSE(files[0].named_by) << "the user's own image is theirs to choose";
  files = files_of("m.qcow2", /*writable=*/false);
  ASSERT_EQ(files.size(), 1u);
  EXPECT_EQ(files[0].mode, LockMode::Reader);
}

TEST_F(MetadataLoops, VmdkDescriptorWithExtentFilesNeedsOne) {
  sh("qemu-img create -q -f vmdk -o subformat=twoGbMaxExtentSparse v.vmdk 1M");
  auto files = files_of("v.vmdk");
  ASSERT_EQ(files.size(), 1u);
  EXPECT_EQ(files[0].path, real(dir_.file("v.vmdk")));
  EXPECT_EQ(files[0].mode, LockMode::Writer);
}

TEST_F(MetadataLoops, ImagesThatHoldTheirOwnDataNeedNone) {
  sh("qemu-img create -q -f qcow2 q.qcow2 1M && qemu-img create -q -f vmdk s.vmdk 1M && "
     "qemu-img create -q -f qcow2 -b q.qcow2 -F qcow2 o.qcow2");
  EXPECT_TRUE(files_of("q.qcow2").empty());
  EXPECT_TRUE(files_of("s.vmdk").empty());
  EXPECT_TRUE(files_of("o.qcow2").empty());
}

// A backing image with an external data file: shared (reader) locks, and
// it is the image above that names it.
TEST_F(MetadataLoops, BackingImageGetsReaderLocksAndNamesItsParent) {
  sh("qemu-img create -q -f qcow2 -o data_file=d.raw,data_file_raw=on b.qcow2 1M && "
     "qemu-img create -q -f qcow2 -b b.qcow2 -F qcow2 t.qcow2");
  auto files = files_of("t.qcow2");
  ASSERT_EQ(files.size(), 1u);
  EXPECT_EQ(files[0].path, real(dir_.file("b.qcow2")));
  EXPECT_EQ(files[0].mode, LockMode::Reader);
  ASSERT_TRUE(files[0].named_by);
  EXPECT_EQ(*files[0].named_by, dir_.file("t.qcow2"));
}

// The whole life of one: qemu-io is refused while the loop exists, after
// the process that made it closed it, and may write once it is released.
TEST_F(MetadataLoops, LocksHoldAfterTheLastCloseUntilReleased) {
  if (!loop_usable()) GTEST_SKIP() << "needs root and /dev/loop-control";
  sh("qemu-img create -q -f qcow2 -o data_file=d.raw,data_file_raw=on m.qcow2 1M");
  auto files = files_of("m.qcow2");
  ASSERT_EQ(files.size(), 1u);
  auto loop = attach_metadata_loop(files[0]);
  ASSERT_TRUE(loop) << loop.error().message;
  auto kept = loop->keep_after_close();
  ASSERT_TRUE(kept) << kept.error().message;
  const DeviceState st = record(dir_.file("m.qcow2"), loop->path());
  loop->release();

  const std::string refused = qemu_write("m.qcow2");
  EXPECT_NE(refused.find("Failed to get \"write\" lock"), std::string::npos) << refused;
  auto reader = run_split("qemu-io -r -c 'read 0 512' m.qcow2", dir_.path());
  EXPECT_NE(reader.exit_code, 0) << "a writer lock lets no reader in";

  auto released = release_metadata_loops(st);
  ASSERT_TRUE(released) << released.error().message;
  EXPECT_EQ(qemu_write("m.qcow2"), "");
  EXPECT_FALSE(mapper::open_loop_of(st.metadata_loops[0].loop, st.metadata_loops[0].file));
  // Twice is harmless: a loop no longer bound to the file is left alone.
  EXPECT_TRUE(release_metadata_loops(st));
}

// A metadata loop that vanished (losetup -d) is set up again by the next
// mapping process, and the record names the new one.
TEST_F(MetadataLoops, ALostLoopIsRestored) {
  if (!loop_usable()) GTEST_SKIP() << "needs root and /dev/loop-control";
  sh("qemu-img create -q -f qcow2 -o data_file=d.raw,data_file_raw=on m.qcow2 1M");
  DeviceState st = record(dir_.file("m.qcow2"), "/dev/loop-gone");
  ASSERT_TRUE(write_state(st));
  auto restored = restore_metadata_loops(st);
  ASSERT_TRUE(restored) << restored.error().message;
  const MetadataLoop& m = st.metadata_loops[0];
  EXPECT_NE(m.loop, "/dev/loop-gone");
  EXPECT_TRUE(mapper::open_loop_of(m.loop, m.file));
  auto on_disk = read_state("ml");
  ASSERT_TRUE(on_disk && *on_disk);
  EXPECT_EQ((*on_disk)->metadata_loops, st.metadata_loops);
  EXPECT_NE(qemu_write("m.qcow2").find("lock"), std::string::npos);

  // Bound: left as it is.
  const DeviceState before = st;
  ASSERT_TRUE(restore_metadata_loops(st));
  EXPECT_EQ(st, before);
  ASSERT_TRUE(release_metadata_loops(st));
}

// ... unless QEMU took the file while no lock of ours was on it: then the
// mapping process must not serve.
TEST_F(MetadataLoops, RestoreRefusesAFileQemuHolds) {
  if (!loop_usable()) GTEST_SKIP() << "needs root and /dev/loop-control";
  sh("qemu-img create -q -f qcow2 -o data_file=d.raw,data_file_raw=on m.qcow2 1M");
  const pid_t qemu = ::fork();
  if (qemu == 0) {
    // QEMU opens a relative data_file name from its working directory.
    if (::chdir(dir_.path().c_str()) != 0) ::_exit(126);
    ::execlp("qemu-io", "qemu-io", "-c", "sleep 30000", "m.qcow2", nullptr);
    ::_exit(127);
  }
  bool held = false;
  for (int i = 0; i < 250 && !held; ++i) {
    held = !ImageLock::acquire(dir_.file("m.qcow2"), LockMode::Reader);
    if (!held) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  DeviceState st = record(dir_.file("m.qcow2"), "/dev/loop-gone");
  auto restored = restore_metadata_loops(st);
  ::kill(qemu, SIGKILL);
  ::waitpid(qemu, nullptr, 0);
  ASSERT_TRUE(held) << "qemu-io never locked m.qcow2";
  ASSERT_FALSE(restored);
  EXPECT_NE(restored.error().message.find("cannot be taken again"), std::string::npos)
      << restored.error().message;
  EXPECT_NE(restored.error().message.find("m.qcow2"), std::string::npos);
  EXPECT_EQ(st.metadata_loops[0].loop, "/dev/loop-gone") << "a failed restore changed the record";
}

}  // namespace
}  // namespace dmu::daemon
