// Is this pid a mapping process of ours?  Records and pid files name pids
// that may have exited and been reused by anything since (even by another
// device's dmu, which a SIGTERM meant for ours would stop), so every pid is
// checked against /proc before it is trusted or signalled.
#pragma once

#include <sys/types.h>

#include <string>

#include "daemon/state_file.h"

namespace dmu::daemon {

// pid runs `dmu serve --group GROUP` (the group's process or its supervisor).
bool serves_group(pid_t pid, const std::string& group);

// pid runs `dmu serve` for the device of `st` (--name NAME, or --group G of
// its record) and is its supervisor (comm "dmu-supervise", which the
// supervisor's child renames away from) when `supervisor`, else its
// mapping process.
bool serves_device(pid_t pid, const DeviceState& st, bool supervisor);

// The device is served right now: its lock is held and its record names
// its live mapping process (written once that process has set it up).
bool served(const DeviceState& st);

}  // namespace dmu::daemon
