// QEMU-compatible image locking, both directions: dmu refuses an image QEMU
// (qemu-io) has open for writing, with a "Failed to get ... lock" line naming
// the file, and QEMU refuses an image dmu has open for writing.  Readers
// share with readers, as between QEMUs.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>
#include <vector>

#include "fileio/image_lock.h"
#include "formats/chain.h"
#include "tests/unit/cli_test_support.h"

namespace dmu::test {
namespace {

// A qemu-io process holding an image open (qemu-io's sleep command).
class QemuHolder {
 public:
  QemuHolder(const std::string& image, bool writable) {
    std::vector<std::string> args = {"qemu-io", "-f", "qcow2"};
    if (!writable) args.push_back("-r");
    for (const char* a : {"-c", "sleep 30000"}) args.push_back(a);
    args.push_back(image);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::execvp("qemu-io", argv.data());
      ::_exit(127);
    }
    // Wait until its locks are in place: a writer lock of ours stops working.
    for (int i = 0; i < 200; ++i) {
      if (!ImageLock::acquire(image, LockMode::Writer)) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ADD_FAILURE() << "qemu-io never locked " << image;
  }
  ~QemuHolder() {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }

 private:
  pid_t pid_ = -1;
};

class LockImage : public ::testing::Test {
 protected:
  void SetUp() override {
    auto r = run_split("qemu-img create -q -f qcow2 img.qcow2 1M", dir_.path());
    ASSERT_EQ(r.exit_code, 0) << r.err;
    image_ = dir_.file("img.qcow2");
  }
  TempDir dir_;
  std::string image_;
};

TEST_F(LockImage, WriterExcludesWritersAndReaders) {
  auto w = ImageLock::acquire(image_, LockMode::Writer);
  ASSERT_TRUE(w) << w.error().message;
  auto w2 = ImageLock::acquire(image_, LockMode::Writer);
  ASSERT_FALSE(w2);
  EXPECT_EQ(w2.error().code, EAGAIN);
  EXPECT_NE(w2.error().message.find(image_), std::string::npos);
  EXPECT_FALSE(ImageLock::acquire(image_, LockMode::Reader));
}

TEST_F(LockImage, ReadersShareButExcludeAWriter) {
  auto r1 = ImageLock::acquire(image_, LockMode::Reader);
  auto r2 = ImageLock::acquire(image_, LockMode::Reader);
  ASSERT_TRUE(r1);
  ASSERT_TRUE(r2);
  auto w = ImageLock::acquire(image_, LockMode::Writer);
  ASSERT_FALSE(w);
  EXPECT_NE(w.error().message.find("Failed to get \"write\" lock"), std::string::npos)
      << w.error().message;
}

TEST_F(LockImage, ReleasedWhenTheLockIsDropped) {
  {
    auto w = ImageLock::acquire(image_, LockMode::Writer);
    ASSERT_TRUE(w);
  }
  EXPECT_TRUE(ImageLock::acquire(image_, LockMode::Writer));
}

// What a loop device does with the description it is given: keeps it after
// whoever opened it is gone.  Here a child places the locks and hands the
// description (shared over fork) and dies; the locks stay with the
// description, and go with its last close.
TEST_F(LockImage, PlacedLocksLiveAsLongAsTheDescription) {
  const int file = ::open(image_.c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(file, 0);
  const pid_t child = ::fork();
  if (child == 0) {
    // The child places the locks on the shared description and exits.
    ::_exit(ImageLock::place(file, image_, LockMode::Writer) ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);

  auto w = ImageLock::acquire(image_, LockMode::Writer);
  ASSERT_FALSE(w) << "placed writer locks must exclude another writer";
  EXPECT_FALSE(ImageLock::acquire(image_, LockMode::Reader));
  auto io = run_split("qemu-io -f qcow2 img.qcow2 -c 'read 0 512'", dir_.path());
  EXPECT_NE(io.exit_code, 0);
  EXPECT_NE((io.out + io.err).find("Failed to get \"write\" lock"), std::string::npos)
      << io.out << io.err;

  ::close(file);  // the last reference: the locks go with it
  EXPECT_TRUE(ImageLock::acquire(image_, LockMode::Writer));
}

// Placing needs no check: it must not conflict with an acquire() the caller
// still holds (attach keeps the chain's locks until the loops have theirs).
TEST_F(LockImage, PlacingNextToOwnAcquiredLockSucceeds) {
  auto held = ImageLock::acquire(image_, LockMode::Writer);
  ASSERT_TRUE(held);
  const int file = ::open(image_.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(file, 0);
  EXPECT_TRUE(ImageLock::place(file, image_, LockMode::Writer));
  held = ImageLock{};
  EXPECT_FALSE(ImageLock::acquire(image_, LockMode::Reader));
  ::close(file);
  EXPECT_TRUE(ImageLock::acquire(image_, LockMode::Reader));
}

TEST_F(LockImage, DmuRefusesAnImageQemuWrites) {
  QemuHolder qemu(image_, true);
  const auto before = read_file(image_);  // as qemu-io left it once it had its locks
  auto io = run_split(dmu("io img.qcow2 -c 'write 0 4k'"), dir_.path());
  EXPECT_NE(io.exit_code, 0);
  EXPECT_EQ(line_count(io.err), 1u) << io.err;
  EXPECT_NE(io.err.find("Failed to get"), std::string::npos) << io.err;
  EXPECT_NE(io.err.find("img.qcow2"), std::string::npos) << io.err;
  // Readers too, as qemu-img info is refused: 'Failed to get shared "write" lock'.
  auto info = run_split(dmu("info img.qcow2"), dir_.path());
  EXPECT_NE(info.exit_code, 0);
  EXPECT_NE(info.err.find("Failed to get shared \"write\" lock"), std::string::npos) << info.err;
  auto create = run_split(dmu("create -f qcow2 img.qcow2 1M"), dir_.path());
  EXPECT_NE(create.exit_code, 0) << "create must not overwrite an image in use";
  EXPECT_EQ(read_file(image_), before) << "a refused command changed the image";
}

TEST_F(LockImage, DmuReadsAnImageQemuOnlyReads) {
  QemuHolder qemu(image_, false);
  const auto before = read_file(image_);
  auto info = run_split(dmu("info img.qcow2"), dir_.path());
  EXPECT_EQ(info.exit_code, 0) << info.err;
  auto io = run_split(dmu("io img.qcow2 -c 'write 0 4k'"), dir_.path());
  EXPECT_NE(io.exit_code, 0);
  EXPECT_NE(io.err.find("Failed to get \"write\" lock"), std::string::npos) << io.err;
  EXPECT_EQ(read_file(image_), before) << "the refused write changed the image";
}

TEST_F(LockImage, QemuRefusesAnImageDmuWrites) {
  // The chain as dmu io and the daemon open it: read-write, locked.
  formats::ChainOptions options;
  options.access = formats::Access::ReadWrite;
  options.lock = true;
  const auto before = read_file(image_);
  auto chain = formats::Chain::open(posix_env(), image_, options);
  ASSERT_TRUE(chain) << chain.error().message;
  auto io = run_split("qemu-io -f qcow2 img.qcow2 -c 'write 0 512'", dir_.path());
  EXPECT_NE(io.exit_code, 0);
  EXPECT_NE((io.out + io.err).find("Failed to get \"write\" lock"), std::string::npos)
      << io.out << io.err;
  auto info = run_split("qemu-img info img.qcow2", dir_.path());
  EXPECT_NE(info.exit_code, 0);
  EXPECT_NE(info.err.find("Failed to get shared \"write\" lock"), std::string::npos) << info.err;
  chain->reset();  // dmu wrote nothing: the file must be as it was
  EXPECT_EQ(read_file(image_), before) << "qemu-io changed an image dmu has open";
}

TEST_F(LockImage, BackingImagesAreLockedForReadingOnly) {
  auto r = run_split("qemu-img create -q -f qcow2 -b img.qcow2 -F qcow2 top.qcow2", dir_.path());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  formats::ChainOptions options;
  options.access = formats::Access::ReadWrite;
  options.lock = true;
  auto chain = formats::Chain::open(posix_env(), dir_.file("top.qcow2"), options);
  ASSERT_TRUE(chain) << chain.error().message;
  // QEMU may read the backing image, as it may between two QEMUs.
  auto info = run_split("qemu-img info img.qcow2", dir_.path());
  EXPECT_EQ(info.exit_code, 0) << info.err;
  const auto before = read_file(image_);
  auto io = run_split("qemu-io -f qcow2 img.qcow2 -c 'write 0 512'", dir_.path());
  EXPECT_NE(io.exit_code, 0) << "a backing image in use must not be written";
  EXPECT_EQ(read_file(image_), before) << "qemu-io changed a backing image in use";
}

}  // namespace
}  // namespace dmu::test
