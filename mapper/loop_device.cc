// LoopDevice implementation: LOOP_CTL_GET_FREE + LOOP_CONFIGURE with a retry
// when another process grabs the same free device first.
#include "mapper/loop_device.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <linux/loop.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <thread>
#include <utility>

namespace dmu::mapper {
namespace {

constexpr int kLoopMajor = 7;
constexpr int kClaimAttempts = 16;

// Opens /dev/loopN, creating the node if devtmpfs has not (yet) made it.
Result<UniqueFd> open_loop_node(int n, int flags) {
  std::string path = "/dev/loop" + std::to_string(n);
  int fd = ::open(path.c_str(), flags | O_CLOEXEC);
  if (fd < 0 && errno == ENOENT) {
    if (::mknod(path.c_str(), S_IFBLK | 0660, makedev(kLoopMajor, n)) != 0 && errno != EEXIST)
      return fail(errno_error(path + ": create loop device node"));
    fd = ::open(path.c_str(), flags | O_CLOEXEC);
  }
  if (fd < 0) return fail(errno_error(path + ": open loop device"));
  return UniqueFd(fd);
}

}  // namespace

Result<LoopDevice> LoopDevice::attach(const std::string& file, const LoopOptions& options) {
  int file_fd = ::open(file.c_str(), (options.read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
  if (file_fd < 0) return fail(errno_error(file + ": open for loop device"));
  UniqueFd backing(file_fd);
  if (options.named_by) {
    struct stat st {};
    if (::fstat(backing.get(), &st) != 0) return fail(errno_error(file + ": stat"));
    if (!S_ISREG(st.st_mode))
      return fail(EPERM, *options.named_by + ": names " + file +
                             ", which is not a regular file; dmu attaches only regular files "
                             "named inside images");
  }
  if (options.lock) DMU_TRY(ImageLock::place(backing.get(), file, *options.lock));

  int ctl_fd = ::open("/dev/loop-control", O_RDWR | O_CLOEXEC);
  if (ctl_fd < 0) return fail(errno_error(file + ": open /dev/loop-control"));
  UniqueFd control(ctl_fd);

  loop_config config{};
  config.fd = static_cast<uint32_t>(backing.get());
  config.block_size = options.block_size;
  config.info.lo_flags = (options.read_only ? LO_FLAGS_READ_ONLY : 0) |
                         (options.autoclear ? LO_FLAGS_AUTOCLEAR : 0) |
                         (options.direct_io ? LO_FLAGS_DIRECT_IO : 0);
  std::strncpy(reinterpret_cast<char*>(config.info.lo_file_name), file.c_str(), LO_NAME_SIZE - 1);

  for (int attempt = 0; attempt < kClaimAttempts; ++attempt) {
    int n = ::ioctl(control.get(), LOOP_CTL_GET_FREE);
    if (n < 0) return fail(errno_error(file + ": find a free loop device"));
    auto opened = open_loop_node(n, options.read_only ? O_RDONLY : O_RDWR);
    // ENXIO: between GET_FREE and our open, another process bound the
    // device and is tearing it down (or removed it); take the next free one.
    if (!opened && opened.error().code == ENXIO) continue;
    DMU_ASSIGN_OR_RETURN(UniqueFd loop, std::move(opened));
    int rc = ::ioctl(loop.get(), LOOP_CONFIGURE, &config);
    if (rc != 0 && errno == EINVAL && (config.info.lo_flags & LO_FLAGS_DIRECT_IO)) {
      // Some kernels refuse direct I/O outright instead of falling back.
      config.info.lo_flags &= ~LO_FLAGS_DIRECT_IO;
      rc = ::ioctl(loop.get(), LOOP_CONFIGURE, &config);
    }
    if (rc != 0) {
      if (errno == EBUSY) continue;  // someone else took /dev/loopN first
      return fail(errno_error(file + ": configure /dev/loop" + std::to_string(n)));
    }

    LoopDevice dev;
    dev.path_ = "/dev/loop" + std::to_string(n);
    dev.file_ = file;
    dev.number_ = n;
    dev.read_only_ = options.read_only;
    dev.fd_ = std::move(loop);
    loop_info64 info{};
    if (::ioctl(dev.fd_.get(), LOOP_GET_STATUS64, &info) != 0)
      return fail(errno_error(dev.path_ + ": read loop status"));
    dev.direct_io_ = (info.lo_flags & LO_FLAGS_DIRECT_IO) != 0;
    struct stat st {};
    if (::fstat(dev.fd_.get(), &st) != 0) return fail(errno_error(dev.path_ + ": stat"));
    dev.dev_ = st.st_rdev;
    uint64_t bytes = 0;
    if (::ioctl(dev.fd_.get(), BLKGETSIZE64, &bytes) != 0)
      return fail(errno_error(dev.path_ + ": read size"));
    dev.size_bytes_ = bytes;
    return dev;
  }
  return fail(EBUSY, file + ": every free loop device was taken by another process first (" +
                         std::to_string(kClaimAttempts) + " attempts)");
}

LoopDevice::LoopDevice(LoopDevice&& other) noexcept {
  *this = std::move(other);
}

LoopDevice& LoopDevice::operator=(LoopDevice&& other) noexcept {
  if (this != &other) {
    (void)detach();
    fd_ = std::move(other.fd_);
    path_ = std::move(other.path_);
    file_ = std::move(other.file_);
    number_ = std::exchange(other.number_, -1);
    dev_ = std::exchange(other.dev_, 0);
    read_only_ = other.read_only_;
    direct_io_ = other.direct_io_;
    size_bytes_ = std::exchange(other.size_bytes_, 0);
  }
  return *this;
}

LoopDevice::~LoopDevice() {
  (void)detach();
}

Result<void> LoopDevice::keep_after_close() {
  loop_info64 info{};
  if (::ioctl(fd_.get(), LOOP_GET_STATUS64, &info) != 0)
    return fail(errno_error(path_ + ": read loop status"));
  // LO_FLAGS_AUTOCLEAR is the one flag LOOP_SET_STATUS64 may clear; the
  // rest of the status is written back as read.
  info.lo_flags &= ~uint32_t(LO_FLAGS_AUTOCLEAR);
  if (::ioctl(fd_.get(), LOOP_SET_STATUS64, &info) != 0)
    return fail(errno_error(path_ + ": clear autoclear of the loop device over " + file_));
  return {};
}

Result<void> LoopDevice::detach() {
  if (!fd_.valid()) return {};
  int rc = ::ioctl(fd_.get(), LOOP_CLR_FD);
  int err = errno;
  fd_.reset();
  // ENXIO: already detached (autoclear raced us); nothing left to do.
  if (rc != 0 && err != ENXIO) return fail(errno_error(path_ + ": detach from " + file_, err));
  return {};
}

std::string LoopDevice::dev_string() const {
  return std::to_string(major(dev_)) + ":" + std::to_string(minor(dev_));
}

namespace {

// True when the loop device behind fd is bound to the file `st` describes.
Result<bool> bound_to(int fd, const std::string& loop_path, const struct stat& st) {
  loop_info64 info{};
  if (::ioctl(fd, LOOP_GET_STATUS64, &info) != 0) {
    if (errno == ENXIO) return false;  // not bound to anything
    return fail(errno_error(loop_path + ": read loop status"));
  }
  return info.lo_device == st.st_dev && info.lo_inode == st.st_ino;
}

}  // namespace

Result<UniqueFd> open_loop_of(const std::string& loop_path, const std::string& file) {
  struct stat st {};
  if (::stat(file.c_str(), &st) != 0) return fail(errno_error(file + ": stat"));
  int fd = ::open(loop_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail(errno_error(loop_path + ": open loop device of " + file));
  UniqueFd loop(fd);
  DMU_ASSIGN_OR_RETURN(bool ours, bound_to(loop.get(), loop_path, st));
  if (!ours) return fail(ENXIO, loop_path + ": no longer bound to " + file);
  return loop;
}

Result<uint64_t> refresh_loop_capacity(int loop_fd, const std::string& loop_path) {
  if (::ioctl(loop_fd, LOOP_SET_CAPACITY, 0) != 0)
    return fail(errno_error(loop_path + ": set capacity"));
  uint64_t bytes = 0;
  if (::ioctl(loop_fd, BLKGETSIZE64, &bytes) != 0)
    return fail(errno_error(loop_path + ": read size"));
  return bytes;
}

Result<bool> loop_direct_io(int loop_fd, const std::string& loop_path) {
  loop_info64 info{};
  if (::ioctl(loop_fd, LOOP_GET_STATUS64, &info) != 0)
    return fail(errno_error(loop_path + ": read loop status"));
  return (info.lo_flags & LO_FLAGS_DIRECT_IO) != 0;
}

Result<bool> detach_loop_of(const std::string& loop_path, const std::string& file) {
  struct stat st {};
  if (::stat(file.c_str(), &st) != 0) return false;  // the file is gone: not ours to judge
  int fd = ::open(loop_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;  // the node (or the device) is gone
  UniqueFd loop(fd);
  DMU_ASSIGN_OR_RETURN(bool ours, bound_to(loop.get(), loop_path, st));
  if (!ours) return false;
  if (::ioctl(loop.get(), LOOP_CLR_FD) != 0 && errno != ENXIO)
    return fail(errno_error(loop_path + ": detach from " + file));
  return true;
}

void wait_loop_released(const std::string& loop_path, const std::string& file) {
  const std::string sys =
      "/sys/block/" + loop_path.substr(loop_path.rfind('/') + 1) + "/loop/backing_file";
  for (int i = 0; i < 100; ++i) {
    std::ifstream in(sys);
    std::string bound;
    if (!in || !std::getline(in, bound) || bound != file) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

}  // namespace dmu::mapper
