// Where a device's runtime record lives (DESIGN.md, "Mapping process": what
// must outlive the mapping process).  Everything sits in one directory,
// /run/dmu unless DMU_RUN_DIR says otherwise (unit tests, a second
// instance), one set of files per dm device name:
//   NAME.json        the state record (state_file.h), written atomically
//   NAME.lock        flock()ed by the live mapping process
//   NAME.stats.json  the mapping process's own counters
//   NAME.scratch     the scratch store (decompressed clusters)
//   NAME.log         the background mapping process's stderr
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

// Creates run_dir() (and parents) if missing.
Result<void> ensure_run_dir();

// A dm device name dmu accepts: 1..127 bytes, no '/', no whitespace or
// control characters, not "." or "..".
Result<void> check_name(const std::string& name);

// The dm-userspace key of a device: "dmu:NAME" when that fits the
// protocol's 63 characters, else a shortened name plus a hash of the whole
// (keys are unique because dm names are).
std::string key_for(const std::string& name);

}  // namespace dmu::daemon
