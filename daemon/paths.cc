// Runtime paths and name rules; see paths.h.
#include "daemon/paths.h"

#include <linux/dm-userspace.h>
#include <sys/stat.h>

#include <cstdlib>
#include <functional>

namespace dmu::daemon {

std::string run_dir() {
  if (const char* d = std::getenv("DMU_RUN_DIR"); d && *d) return d;
  return "/run/dmu";
}

std::string state_path(const std::string& name) { return run_dir() + "/" + name + ".json"; }
std::string lock_path(const std::string& name) { return run_dir() + "/" + name + ".lock"; }
std::string stats_path(const std::string& name) { return run_dir() + "/" + name + ".stats.json"; }
std::string scratch_path(const std::string& name) { return run_dir() + "/" + name + ".scratch"; }
std::string log_path(const std::string& name) { return run_dir() + "/" + name + ".log"; }
std::string leave_path(const std::string& name) { return run_dir() + "/" + name + ".leave"; }
std::string bind_error_path(const std::string& name) {
  return run_dir() + "/" + name + ".bind-error";
}
std::string detach_lock_path(const std::string& name) {
  return run_dir() + "/" + name + ".detach";
}
std::string group_file_name(const std::string& group) { return group + ".group"; }
std::string group_pid_path(const std::string& group) {
  return run_dir() + "/" + group_file_name(group) + ".pid";
}

Result<void> ensure_run_dir() {
  const std::string dir = run_dir();
  // mkdir -p: each prefix in turn; EEXIST is fine.
  for (size_t pos = 1; pos != std::string::npos;) {
    pos = dir.find('/', pos + 1);
    const std::string prefix = dir.substr(0, pos);
    if (::mkdir(prefix.c_str(), 0700) != 0 && errno != EEXIST)
      return fail(errno_error(prefix + ": create runtime directory"));
  }
  return {};
}

Result<void> check_name(const std::string& name) {
  // dm-ioctl.h: DM_NAME_LEN is 128 including the NUL.
  if (name.empty() || name.size() > 127)
    return fail(EINVAL, "device name '" + name + "' must be 1..127 characters");
  if (name == "." || name == "..")
    return fail(EINVAL, "device name '" + name + "' is not allowed");
  // NAME.stats.json is NAME's stats file: a device called x.stats would
  // have its record there.
  if (name.ends_with(".stats"))
    return fail(EINVAL, "device name '" + name + "' must not end in '.stats'");
  // G.group.lock is group G's lock (paths.h).
  if (name.ends_with(".group"))
    return fail(EINVAL, "device name '" + name + "' must not end in '.group'");
  for (unsigned char c : name)
    if (c == '/' || c <= ' ' || c == 0x7f)
      return fail(EINVAL, "device name '" + name +
                              "' must not contain '/', spaces or control characters");
  return {};
}

std::string dm_uuid_for(const std::string& name) {
  return "DMU-" + key_for(name);
}

std::string key_for(const std::string& name) {
  std::string key = "dmu:" + name;
  if (key.size() < DMU_KEY_LEN) return key;
  // FNV-1a, not std::hash: the key must be the same for every build of dmu
  // that rebinds this device (an upgrade under a running guest).
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : name) h = (h ^ c) * 0x100000001b3ull;
  char hash[17];
  std::snprintf(hash, sizeof hash, "%016llx", static_cast<unsigned long long>(h));
  // 4 + 40 + 1 + 16 = 61 characters.
  return "dmu:" + name.substr(0, 40) + "-" + hash;
}

}  // namespace dmu::daemon
