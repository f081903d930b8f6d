// The supervisor: `dmu serve --supervise`, the process `dmu attach` starts.
// It takes the devices' name locks, then forks the mapping process (serve())
// and starts a new one at once when it dies -- kill -9, a crash, an error
// after it was bound -- so a guest's I/O waits for at most a restart, not
// for an administrator.  The new process rebinds and adopts what the dead
// one left in the kernel (served_device.cc).  The child inherits the name
// locks: while either of the two lives the name is served, and only when both
// are gone is `dmu attach --name NAME IMAGE` the way back.
//
// SIGTERM/SIGINT go to the mapping process, which commits and exits 0; the
// supervisor then exits 0 too.  A mapping process that exits 0 on its own
// (someone sent it SIGTERM: detach, an upgrade) ends the supervisor as well.
// Restarts that keep failing back off (up to kMaxBackoff) and stop after
// kMaxQuickFailures in a row, each logged; a bound process killed by
// SIGKILL is restarted at once however often that happens
// (vm.attach-restart kills one every second).
#pragma once

#include "daemon/serve.h"

namespace dmu::daemon {

// Runs until the mapping process stops cleanly or cannot be started again;
// returns the exit status.  options.ready_fd gets the first start's answer.
int supervise(const ServeOptions& options);

}  // namespace dmu::daemon
