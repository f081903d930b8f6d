// Is this pid a mapping process of ours; see serve_process.h.
#include "daemon/serve_process.h"

#include <fstream>
#include <vector>

#include "daemon/name_lock.h"

namespace dmu::daemon {
namespace {

// The arguments of pid's command line; empty when it has none (exited).
std::vector<std::string> cmdline(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline");
  std::vector<std::string> args;
  for (std::string a; std::getline(in, a, '\0');) args.push_back(a);
  return args;
}

// `dmu serve ... OPTION VALUE ...`.
bool serve_with(const std::vector<std::string>& args, const std::string& option,
                const std::string& value) {
  if (args.size() < 2 || args[1] != "serve") return false;
  for (size_t i = 2; i + 1 < args.size(); ++i)
    if (args[i] == option && args[i + 1] == value) return true;
  return false;
}

}  // namespace

bool serves_group(pid_t pid, const std::string& group) {
  return pid > 0 && serve_with(cmdline(pid), "--group", group);
}

bool serves_device(pid_t pid, const DeviceState& st, bool supervisor) {
  if (pid <= 0) return false;
  std::ifstream comm("/proc/" + std::to_string(pid) + "/comm");
  std::string comm_name;
  if (!comm || !std::getline(comm, comm_name)) return false;
  if ((comm_name == "dmu-supervise") != supervisor) return false;
  const auto args = cmdline(pid);
  return serve_with(args, "--name", st.name) ||
         (!st.group.empty() && serve_with(args, "--group", st.group));
}

bool served(const DeviceState& st) {
  return lock_held(st.name) && serves_device(st.pid, st, /*supervisor=*/false);
}

}  // namespace dmu::daemon
