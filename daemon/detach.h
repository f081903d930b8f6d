// detach NAME: the reverse of attach, and only when nothing uses the device
// (like `dmsetup remove`, it refuses while the device is open).  Order:
// flush the device through the kernel (a COMMIT the live mapping process
// answers, so every completed write's metadata is durable), SIGTERM the
// mapping process and wait until it has exited (its lock is free), remove
// the dm device, detach the loop devices still bound to our files, remove
// the record.  Detaching a name that is not attached succeeds with a note;
// so does one queued behind another detach of NAME whose device went while
// it waited: a device attached again meanwhile (a new attach id in its
// record) is left alone.
// A device opened after the check cannot be removed: it is served again and
// detach fails with "device is in use".
#pragma once

#include <chrono>
#include <string>

#include "common/error.h"

namespace dmu::daemon {

struct DetachOptions {
  std::string name;
  // Remove the device even when no mapping process runs and the kernel
  // holds allocations nobody committed (they are lost).
  bool force = false;
  // The dmu binary, to serve the device again when it was opened between
  // the open-count check and the removal (the removal then fails).
  std::string program = "/proc/self/exe";
  // First wait up to this long for the process holding NAME's lock to let
  // it go, then detach what nobody serves (no flush through a process
  // that is going): how a timed-out attach has its device removed once a
  // late bind lets go (it sent that process SIGTERM, or its group the leave
  // marker).  ETIMEDOUT if it is still held; a device still open (udev's
  // blkid) is tried again until the same time is up.
  std::chrono::seconds wait_release{0};
};

// Returns a note for the user ("" when the device was detached).
Result<std::string> detach(const DetachOptions& options);

}  // namespace dmu::daemon
