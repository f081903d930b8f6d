// NameLock over flock(2); see name_lock.h.
#include "daemon/name_lock.h"

#include <fcntl.h>
#include <sys/file.h>

#include <thread>

#include "daemon/paths.h"

namespace dmu::daemon {

Result<NameLock> NameLock::try_acquire(const std::string& name) {
  DMU_TRY(ensure_run_dir());
  const std::string path = lock_path(name);
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return fail(errno_error(path + ": open lock file"));
  UniqueFd lock(fd);
  // lock_held() probes with a shared flock held for two syscalls: a `dmu
  // list` or `detach` running at the same moment must not make us think
  // another process serves the name, so a refusal is retried briefly; a
  // real owner holds the lock for its whole life.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(500);
  while (::flock(lock.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK) return fail(errno_error(path + ": lock"));
    if (std::chrono::steady_clock::now() >= deadline)
      return fail(EWOULDBLOCK, path + ": another dmu process serves or sets up '" + name + "'");
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return NameLock(std::move(lock));
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
