// Groups: one mapping process serving a changing set of devices, the disks
// of one Xen domain (DESIGN.md, "Mapping process").  A device belongs to
// group G when its record names G (DeviceState::group) and no NAME.leave
// marker is beside it.  The group's supervisor (`dmu serve --group G
// --supervise`) holds G.group.lock and writes G.group.pid; SIGHUP makes its
// mapping process re-read the members: new ones are bound (the process takes
// their name locks itself), leaving ones are committed and let go (their
// name locks released, which is what detach waits for).
//
// Why the member locks are the mapping process's and not the supervisor's
// (as for `serve --name`): a lock is an open file description, and one
// inherited at fork cannot be dropped by the supervisor alone when a member
// leaves.  The cost: between a kill -9 of the group process and its restart
// (a few hundred ms) the member locks are free; attach and detach of a
// member go through the group (leave marker, SIGHUP) and do not rely on them
// in that window beyond what they already tolerate for `serve --name`.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "common/error.h"
#include "daemon/name_lock.h"

namespace dmu::daemon {

// Names of the devices whose records name `group` and are not leaving, sorted.
std::vector<std::string> group_members(const std::string& group);

// NAME.leave exists: NAME is leaving its group (detach, a failed attach, the
// Xen helper's withdrawal); no process may take it up meanwhile.
bool leaving(const std::string& name);

// True when the group's supervisor (or an unsupervised `serve --group`) lives.
bool group_alive(const std::string& group);

// True while a join_group of the group runs (its setup lock is held): a
// member it is joining has no process yet, and is not for others to rebind.
bool group_joining(const std::string& group);

// Bound: the group process took NAME's lock and wrote its (live) pid into
// the record, which it clears when it lets NAME go.
bool bound(const std::string& name, const std::string& group);

// SIGHUPs the live group process: "re-read your members".  ESRCH when none.
Result<void> signal_group(const std::string& group);

// How long join_group waits by default: TCG guests are slow; a bind takes
// milliseconds.
inline constexpr std::chrono::seconds kJoinTimeout{120};

// Makes the group's process serve NAME, whose record (naming the group) is
// written: SIGHUPs the live group process, or starts `program serve --group
// G --supervise`; returns once NAME is bound, or with the reason it is not
// (ETIMEDOUT after `timeout`, waiting for another join of the group included).
Result<void> join_group(const std::string& program, const std::string& group,
                        const std::string& name,
                        std::chrono::seconds timeout = kJoinTimeout);

// The lock that serialises joins of a group (group_joining() sees it),
// waited for until `deadline`.  attach takes it before it lets NAME's own
// lock go, so no other attach finds NAME unlocked and unjoined between the
// two, and holds it across join_group_locked (and, when the join failed,
// while it writes NAME's leave marker).
Result<NameLock> lock_group_setup(const std::string& group,
                                  std::chrono::steady_clock::time_point deadline);
Result<void> join_group_locked(const std::string& program, const std::string& group,
                               const std::string& name,
                               std::chrono::steady_clock::time_point deadline,
                               const NameLock& setup);

// Before join_group of a member nobody served a moment ago (a rebind, a
// detach that gave up): clears the record's pid, which join_group waits for
// the group process to write.  Read-modify-write under NAME's lock, on the
// record as it is then: a group process that (re)bound NAME meanwhile (a
// supervisor restarting it after a kill -9) holds that lock, and its pid is
// left alone.  Returns true when the pid was cleared, false when NAME is
// served, ENOENT when the record is gone.
Result<bool> mark_unbound(const std::string& name);

// Writes / removes NAME.bind-error (the group process's answer to join_group).
void report_bind_error(const std::string& name, const std::string& message);
void clear_bind_error(const std::string& name);

}  // namespace dmu::daemon
