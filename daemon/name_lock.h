// NameLock: the live mapping process of a device holds an exclusive flock()
// on /run/dmu/NAME.lock for as long as it runs.  The kernel drops it when the
// process ends however it ends (kill -9 included, and a zombie holds no
// lock), so "is the lock free" is the reliable "has the process exited" that
// detach waits for, immune to pid reuse; and two processes never serve one
// device.
#pragma once

#include <chrono>
#include <string>

#include "common/error.h"
#include "common/unique_fd.h"

namespace dmu::daemon {

class NameLock {
 public:
  // Takes the lock without waiting; EWOULDBLOCK when a live process has it.
  static Result<NameLock> try_acquire(const std::string& name);
  NameLock() = default;
  bool held() const { return fd_.valid(); }
  void release() { fd_.reset(); }

 private:
  explicit NameLock(UniqueFd fd) : fd_(std::move(fd)) {}
  UniqueFd fd_;
};

// Serialises the detaches of NAME (NAME.detach): block-dmu's remove, the
// Xen helper's withdrawal or clean-up of a gone domain, and a timed-out
// attach's background detach may all go for one device at once, and each
// reads the record, flushes and signals its process before it can take
// NAME's lock.  A second detach waits here for the first, then finds what
// that one left.  The holder unlinks the file as it lets go (no file stays
// behind in the run directory); a waiter that took the unlinked file
// takes the new one.
class DetachLock {
 public:
  // Waits up to `wait`; EWOULDBLOCK when another detach still holds it.
  static Result<DetachLock> acquire(const std::string& name, std::chrono::milliseconds wait);
  DetachLock(DetachLock&&) = default;
  DetachLock& operator=(DetachLock&&) = delete;
  ~DetachLock();

 private:
  DetachLock(std::string path, UniqueFd fd) : path_(std::move(path)), fd_(std::move(fd)) {}
  std::string path_;
  UniqueFd fd_;
};

// True when a live process holds NAME's lock.
bool lock_held(const std::string& name);
// Waits until nobody holds NAME's lock; false after `timeout`.
bool wait_lock_free(const std::string& name, std::chrono::milliseconds timeout);

}  // namespace dmu::daemon
