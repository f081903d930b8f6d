// NameLock over flock(2); see name_lock.h.
#include "daemon/name_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>

#include <thread>

#include "daemon/paths.h"

namespace dmu::daemon {

namespace {

// True when `path` still names the file open on fd: a holder that gave the
// name up unlinks the lock file (remove_state_files) while holding it, and a
// lock taken on the unlinked file would exclude nobody.
bool still_linked(int fd, const std::string& path) {
  struct stat held {}, named {};
  return ::fstat(fd, &held) == 0 && ::stat(path.c_str(), &named) == 0 &&
         held.st_dev == named.st_dev && held.st_ino == named.st_ino;
}

}  // namespace

Result<NameLock> NameLock::try_acquire(const std::string& name) {
  DMU_TRY(ensure_run_dir());
  const std::string path = lock_path(name);
  // lock_held() probes with a shared flock held for two syscalls: a `dmu
  // list` or `detach` running at the same moment must not make us think
  // another process serves the name, so a refusal is retried briefly; a
  // real owner holds the lock for its whole life.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(500);
  for (;;) {
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return fail(errno_error(path + ": open lock file"));
    UniqueFd lock(fd);
    if (::flock(lock.get(), LOCK_EX | LOCK_NB) == 0) {
      if (still_linked(lock.get(), path)) return NameLock(std::move(lock));
      // Its holder removed it meanwhile: take the new one.
    } else if (errno != EWOULDBLOCK) {
      return fail(errno_error(path + ": lock"));
    }
    if (std::chrono::steady_clock::now() >= deadline)
      return fail(EWOULDBLOCK, path + ": another dmu process serves or sets up '" + name + "'");
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

bool lock_held(const std::string& name) {
  int fd = ::open(lock_path(name).c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;  // no lock file: nobody ever took it
  UniqueFd lock(fd);
  if (::flock(lock.get(), LOCK_SH | LOCK_NB) == 0) return false;
  return errno == EWOULDBLOCK;
}

bool wait_lock_free(const std::string& name, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (lock_held(name)) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return true;
}

}  // namespace dmu::daemon
