// Where a device's runtime record lives (DESIGN.md, "Mapping process": what
// must outlive the mapping process).  Everything sits in one directory,
// /run/dmu unless DMU_RUN_DIR says otherwise (unit tests, a second
// instance), one set of files per dm device name:
//   NAME.json        the state record (state_file.h), written atomically
//   NAME.lock        flock()ed by the live mapping process
//   NAME.stats.json  the mapping process's own counters
//   NAME.scratch     the scratch store (decompressed clusters)
//   NAME.log         the background mapping process's stderr
//   NAME.leave       detach asks NAME's group process to let NAME go
//   NAME.bind-error  why NAME's group process could not serve it
//   NAME.detach      flock()ed by the running `dmu detach NAME` (name_lock.h);
//                    removed as it ends (left behind only by a kill -9)
// and one set per group G of devices served by one process (`--group G`):
//   G.group.lock     flock()ed by the group's supervisor while it lives
//   G.group.pid      the supervisor's pid (SIGHUP: re-read the members)
//   G.group.setup    serialises `dmu attach --group G`
//   G.group.log      the group process's stderr
#pragma once

#include <string>

#include "common/error.h"

namespace dmu::daemon {

std::string run_dir();
std::string state_path(const std::string& name);
std::string lock_path(const std::string& name);
std::string stats_path(const std::string& name);
std::string scratch_path(const std::string& name);
std::string log_path(const std::string& name);
std::string leave_path(const std::string& name);
std::string bind_error_path(const std::string& name);
std::string detach_lock_path(const std::string& name);
// The pseudo-name of group G's files: lock_path(group_file_name(G)) is
// G.group.lock, and so on; a device name cannot end in ".group".
std::string group_file_name(const std::string& group);
std::string group_pid_path(const std::string& group);

// Creates run_dir() (and parents) if missing.
Result<void> ensure_run_dir();

// A dm device name dmu accepts: 1..127 bytes, no '/', no whitespace or
// control characters, not "." or "..".
Result<void> check_name(const std::string& name);

// The dm-userspace key of a device: "dmu:NAME" when that fits the
// protocol's 63 characters, else a shortened name plus a hash of the whole
// (keys are unique because dm names are).
std::string key_for(const std::string& name);
// The uuid attach gives NAME's dm device: "DMU-" and its key.
std::string dm_uuid_for(const std::string& name);

}  // namespace dmu::daemon
