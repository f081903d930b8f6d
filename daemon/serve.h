// The mapping process: `dmu serve --name NAME [--name NAME ...]` or
// `dmu serve --group G` (a changing set, daemon/group.h).  Serves a
// group of attached devices (one for `dmu attach`, all disks of a domain for
// the Xen helper) from their records under /run/dmu: one poll() loop over
// their control channels, a commit thread per device.  SIGTERM/SIGINT:
// answer the COMMITs queued, commit, exit 0 leaving the dm devices in place
// (their I/O waits for the next mapping process; detach is separate).
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace dmu::daemon {

struct ServeOptions {
  std::vector<std::string> names;
  // Instead of names: serve group G's members (daemon/group.h), re-read on
  // SIGHUP; the process exits 0 when the last one has left.
  std::string group;
  // When >= 0: "ready\n" is written there once every device is bound and
  // served, or "error: <message>\n" if setup failed; then it is closed.
  int ready_fd = -1;
  // Started by a supervisor (daemon/supervise.h) that holds the devices'
  // name locks already (this process inherited them) and whose pid goes
  // into the records next to ours.
  bool supervised = false;
  // That supervisor's pid.  A group's process whose supervisor dies (kill
  // -9) hands its members over to a new supervised process (serve.cc).
  pid_t supervisor = 0;
};

// Runs until a signal or a fatal error; returns the exit status.
int serve(const ServeOptions& options);

// Writes all of `text` to a ready descriptor (nothing when fd < 0); errors
// are ignored: the reader may have stopped listening.
void tell_ready(int fd, const std::string& text);

}  // namespace dmu::daemon
