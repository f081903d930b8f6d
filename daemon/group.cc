// Groups; see group.h.
#include "daemon/group.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <thread>

#include "daemon/attach.h"
#include "daemon/name_lock.h"
#include "daemon/paths.h"
#include "daemon/serve_process.h"
#include "daemon/state_file.h"

namespace dmu::daemon {
namespace {

using namespace std::chrono_literals;

bool exists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }

pid_t group_pid(const std::string& group) {
  std::ifstream in(group_pid_path(group));
  long pid = 0;
  if (!(in >> pid)) return 0;
  return serves_group(pid_t(pid), group) ? pid_t(pid) : 0;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::string line, text;
  while (std::getline(in, line)) text += (text.empty() ? "" : " ") + line;
  return text;
}

std::string setup_lock_name(const std::string& group) { return group_file_name(group) + ".setup"; }

}  // namespace

// Serialises joins of one group (two block-dmu runs for two disks of a
// domain starting its group process at once), waiting until `deadline`.
Result<NameLock> lock_group_setup(const std::string& group,
                                  std::chrono::steady_clock::time_point deadline) {
  for (;;) {
    auto l = NameLock::try_acquire(setup_lock_name(group));
    if (l || l.error().code != EWOULDBLOCK) return l;
    if (std::chrono::steady_clock::now() >= deadline)
      return fail(ETIMEDOUT, "group " + group + ": another attach to the group (or its " +
                                 "hand-over) did not finish in time");
    std::this_thread::sleep_for(20ms);
  }
}

// The pid must be a live process of the group: a record a rebind found
// served by the restarted process (mark_unbound left it alone) may still
// name the killed one while the new one is setting NAME up.
bool bound(const std::string& name, const std::string& group) {
  auto st = read_state(name);
  return st && *st && serves_group((*st)->pid, group) && lock_held(name);
}

std::vector<std::string> group_members(const std::string& group) {
  std::vector<std::string> problems, out;
  for (const auto& st : list_states(problems))
    if (st.group == group && !leaving(st.name)) out.push_back(st.name);
  return out;  // list_states sorts by name
}

bool leaving(const std::string& name) { return exists(leave_path(name)); }

bool group_alive(const std::string& group) { return lock_held(group_file_name(group)); }

bool group_joining(const std::string& group) { return lock_held(setup_lock_name(group)); }

Result<void> signal_group(const std::string& group) {
  const pid_t pid = group_pid(group);
  if (pid <= 0 || !group_alive(group))
    return fail(ESRCH, "group " + group + ": no live mapping process");
  if (::kill(pid, SIGHUP) != 0) return fail(errno_error("group " + group + ": signal pid " +
                                                        std::to_string(pid)));
  return {};
}

Result<bool> mark_unbound(const std::string& name) {
  auto lock = NameLock::try_acquire(name);
  if (!lock) {
    if (lock.error().code == EWOULDBLOCK) return false;  // served: its pid stands
    return fail(lock.error());
  }
  DMU_ASSIGN_OR_RETURN(auto st, read_state(name));
  if (!st) return fail(ENOENT, name + ": not attached (no record " + state_path(name) + ")");
  if (st->pid == 0) return true;
  st->pid = 0;
  DMU_TRY(write_state(*st));
  return true;
}

void report_bind_error(const std::string& name, const std::string& message) {
  (void)write_file_atomic(bind_error_path(name), message + "\n");
}

void clear_bind_error(const std::string& name) { (void)::unlink(bind_error_path(name).c_str()); }

Result<void> join_group(const std::string& program, const std::string& group,
                        const std::string& name, std::chrono::seconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  DMU_ASSIGN_OR_RETURN(NameLock setup, lock_group_setup(group, deadline));
  return join_group_locked(program, group, name, deadline, setup);
}

Result<void> join_group_locked(const std::string& program, const std::string& group,
                               const std::string& name,
                               std::chrono::steady_clock::time_point deadline,
                               const NameLock& setup) {
  (void)setup;  // the caller's, held while we run
  const auto left = [&] {
    return std::max(std::chrono::duration_cast<std::chrono::milliseconds>(
                        deadline - std::chrono::steady_clock::now()),
                    std::chrono::milliseconds(1000));
  };
  clear_bind_error(name);
  bool started = false;
  for (;;) {
    if (bound(name, group)) return {};
    // Its attach failed meanwhile (another attach of the same name that
    // found it unserved for a moment waits here too) and took it away.
    if (auto st = read_state(name); st && !*st)
      return fail(ENOENT, name + ": its record is gone (the attach that set it up failed?)");
    // Being detached meanwhile: the group will not take it up.
    if (leaving(name))
      return fail(ECANCELED, name + ": leaving its group (" + leave_path(name) + ")");
    if (exists(bind_error_path(name))) {
      std::string why = read_text(bind_error_path(name));
      clear_bind_error(name);
      return fail(EIO, why.empty() ? name + ": group " + group + " could not serve it" : why);
    }
    if (std::chrono::steady_clock::now() >= deadline)
      return fail(ETIMEDOUT, name + ": group " + group + "'s mapping process did not bind it in " +
                                 "time; see " +
                                 log_path(group_file_name(group)));
    if (!started) {
      // A group that is shrinking to nothing may exit after our SIGHUP
      // without having seen us: then we start it (once).
      if (signal_group(group)) {
        started = true;  // signalled; wait for the answer
      } else {
        DMU_TRY(start_serve_process(program, {"--group", group}, group_file_name(group), left()));
        started = true;
      }
    } else if (!group_alive(group) && !bound(name, group)) {
      // It exited after our signal without binding us (it had decided to
      // end): start it; it reads the members afresh.
      DMU_TRY(start_serve_process(program, {"--group", group}, group_file_name(group), left()));
    }
    std::this_thread::sleep_for(20ms);
  }
}

}  // namespace dmu::daemon
