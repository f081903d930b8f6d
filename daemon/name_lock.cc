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

// An exclusive flock on `path` that is still linked there, trying for up
// to `wait`; EWOULDBLOCK (with `busy` as the message) when it stays held.
Result<UniqueFd> lock_linked(const std::string& path, std::chrono::milliseconds wait,
                             const std::string& busy) {
  DMU_TRY(ensure_run_dir());
  const auto start = std::chrono::steady_clock::now();
  const auto deadline = start + wait;
  for (;;) {
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return fail(errno_error(path + ": open lock file"));
    UniqueFd lock(fd);
    if (::flock(lock.get(), LOCK_EX | LOCK_NB) == 0) {
      if (still_linked(lock.get(), path)) return lock;
      // Its holder removed it meanwhile: take the new one.
    } else if (errno != EWOULDBLOCK) {
      return fail(errno_error(path + ": lock"));
    }
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) return fail(EWOULDBLOCK, busy);
    // Quick at first (a probe lasts an instant), then gentler for a long wait.
    const bool early = now - start < std::chrono::seconds(1);
    std::this_thread::sleep_for(std::chrono::milliseconds(early ? 10 : 100));
  }
}

}  // namespace

Result<NameLock> NameLock::try_acquire(const std::string& name) {
  // lock_held() probes with a shared flock held for two syscalls: a `dmu
  // list` or `detach` running at the same moment must not make us think
  // another process serves the name, so a refusal is retried briefly; a
  // real owner holds the lock for its whole life.
  const std::string path = lock_path(name);
  const std::string busy = path + ": another dmu process serves or sets up '" + name + "'";
  DMU_ASSIGN_OR_RETURN(UniqueFd fd, lock_linked(path, std::chrono::milliseconds(500), busy));
  return NameLock(std::move(fd));
}

Result<DetachLock> DetachLock::acquire(const std::string& name, std::chrono::milliseconds wait) {
  std::string path = detach_lock_path(name);
  const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(wait).count();
  const std::string busy = name + ": another dmu detach of it still runs after " +
                           std::to_string(seconds) + " s (" + path + ")";
  DMU_ASSIGN_OR_RETURN(UniqueFd fd, lock_linked(path, wait, busy));
  return DetachLock(std::move(path), std::move(fd));
}

DetachLock::~DetachLock() {
  // Unlinked while still held: a waiter that gets the old file sees it
  // unlinked and takes the new one.
  if (fd_.valid()) (void)::unlink(path_.c_str());
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
