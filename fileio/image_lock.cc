// QEMU-compatible OFD byte-range locks (see image_lock.h for the layout).
#include "fileio/image_lock.h"

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <utility>

namespace dmu {
namespace {

constexpr off_t kPermBase = 100;    // QEMU's RAW_LOCK_PERM_BASE
constexpr off_t kSharedBase = 200;  // QEMU's RAW_LOCK_SHARED_BASE

// QEMU's BLK_PERM_* bits and the names its messages use.
enum Perm : unsigned { kConsistentRead = 0, kWrite = 1, kWriteUnchanged = 2, kResize = 3 };
constexpr std::array<const char*, 4> kPermNames = {"consistent read", "write", "write unchanged",
                                                   "resize"};
constexpr unsigned kPermCount = 4;

struct PermSet {
  unsigned held;      // bits we hold
  unsigned unshared;  // bits we refuse to others
};

PermSet perms_for(LockMode mode) {
  unsigned refuse = (1u << kWrite) | (1u << kResize);
  if (mode == LockMode::Writer)
    return {(1u << kConsistentRead) | (1u << kWrite) | (1u << kResize), refuse};
  return {1u << kConsistentRead, refuse};
}

Result<void> lock_byte(int fd, off_t byte, const std::string& path) {
  struct flock fl {};
  fl.l_type = F_RDLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = byte;
  fl.l_len = 1;
  if (::fcntl(fd, F_OFD_SETLK, &fl) == 0) return {};
  int e = errno;
  if (e == EAGAIN || e == EACCES)
    return fail(EAGAIN, path + ": Failed to lock byte " + std::to_string(byte) +
                            " (is another process using the image?)");
  return fail(errno_error(path + ": lock byte " + std::to_string(byte), e));
}

// True when another open file description holds a lock on `byte`.
Result<bool> byte_taken(int fd, off_t byte, const std::string& path) {
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = byte;
  fl.l_len = 1;
  if (::fcntl(fd, F_OFD_GETLK, &fl) < 0)
    return fail(errno_error(path + ": test lock byte " + std::to_string(byte)));
  return fl.l_type != F_UNLCK;
}

}  // namespace

Result<ImageLock> ImageLock::acquire(const std::string& path, LockMode mode) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail(errno_error(path));
  ImageLock lock(path, fd);  // closes fd (and drops its locks) on every error path

  DMU_TRY(place(fd, path, mode));
  const PermSet p = perms_for(mode);
  // Same order and wording as QEMU's raw_check_lock_bytes.
  const std::string hint = " (is another process using the image?)";
  for (unsigned bit = 0; bit < kPermCount; ++bit) {
    if (!(p.held & (1u << bit))) continue;
    DMU_ASSIGN_OR_RETURN(bool taken, byte_taken(fd, kSharedBase + bit, path));
    if (taken)
      return fail(EAGAIN, path + ": Failed to get \"" + kPermNames[bit] + "\" lock" + hint);
  }
  for (unsigned bit = 0; bit < kPermCount; ++bit) {
    if (!(p.unshared & (1u << bit))) continue;
    DMU_ASSIGN_OR_RETURN(bool taken, byte_taken(fd, kPermBase + bit, path));
    if (taken)
      return fail(EAGAIN, path + ": Failed to get shared \"" + kPermNames[bit] + "\" lock" + hint);
  }
  return lock;
}

Result<void> ImageLock::place(int fd, const std::string& path, LockMode mode) {
  PermSet p = perms_for(mode);
  for (unsigned bit = 0; bit < kPermCount; ++bit) {
    if (p.held & (1u << bit)) DMU_TRY(lock_byte(fd, kPermBase + bit, path));
    if (p.unshared & (1u << bit)) DMU_TRY(lock_byte(fd, kSharedBase + bit, path));
  }
  return {};
}

ImageLock::ImageLock(ImageLock&& other) noexcept
    : path_(std::move(other.path_)), fd_(std::exchange(other.fd_, -1)) {}

ImageLock& ImageLock::operator=(ImageLock&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    path_ = std::move(other.path_);
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

ImageLock::~ImageLock() {
  if (fd_ >= 0) ::close(fd_);  // closing the description releases its OFD locks
}

}  // namespace dmu
