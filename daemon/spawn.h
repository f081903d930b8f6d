// Background dmu processes: the mapping process attach starts, and the
// detach a timed-out attach leaves behind.  They outlive their caller (a
// CLI, block-dmu, dmu-xen-helper) in a session of their own, with none of
// its descriptors or signal settings.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "common/error.h"

namespace dmu::daemon {

// Runs `program ARGS...` (argv[0] "dmu") in a new session: stdin and stdout
// /dev/null, stderr appended to `log`, `ready_fd` (when >= 0) as descriptor
// 3, every other descriptor closed, the default signal mask.  Returns its
// pid; the caller reaps it (dmu-xen-helper reaps every child).
Result<pid_t> spawn_dmu(const std::string& program, const std::vector<std::string>& args,
                        const std::string& log, int ready_fd = -1);

}  // namespace dmu::daemon
