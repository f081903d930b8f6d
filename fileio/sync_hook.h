// SyncHook: code a thread runs around every File::sync() it makes.
//
// The mapping daemon's commit thread holds the lock that guards a format
// engine for the whole of Image::commit(), but most of a commit's time is
// fdatasync: the disk, not the engine.  Installing a hook that lets go of
// the lock before each sync and takes it back after lets the request loop
// answer reads meanwhile (daemon/served_device.h says which requests may
// run in that window and why the engine's state is whole there).
//
// The hook belongs to the thread that installs it: syncs made by any other
// thread run as always.  Only real files call it (fileio's posix and direct
// files); in-memory files have no disk to wait for.
#pragma once

#include <functional>

#include "common/error.h"

namespace dmu {

class SyncHook {
 public:
  // Installs before/after for this thread until the hook is destroyed (an
  // outer hook of the thread is back then).
  SyncHook(std::function<void()> before, std::function<void()> after);
  ~SyncHook();
  SyncHook(const SyncHook&) = delete;
  SyncHook& operator=(const SyncHook&) = delete;

  // Runs sync between this thread's before() and after(), or alone when the
  // thread has no hook.  after() runs however sync ends (an exception too).
  static Result<void> around(const std::function<Result<void>()>& sync);

 private:
  std::function<void()> before_, after_;
  SyncHook* outer_;
};

}  // namespace dmu
