// State record: JSON form and atomic file handling; see state_file.h.
#include "daemon/state_file.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <sstream>
#include <vector>

#include "common/unique_fd.h"
#include "daemon/paths.h"
#include "fileio/file.h"

namespace dmu::daemon {

using nlohmann::json;

json to_json(const DeviceState& s) {
  json devices = json::array();
  for (const auto& d : s.devices)
    devices.push_back({{"file", d.file}, {"loop", d.loop}, {"writable", d.writable}});
  json j{
      {"version", s.version()},
      {"name", s.name},
      {"node", s.node()},
      {"image", s.image},
      {"format", s.format},
      {"chain", s.chain},
      {"key", s.key},
      {"read-only", s.read_only},
      {"block-sectors", s.block_sectors},
      {"target-sectors", s.target_sectors},
      {"devices", devices},
      {"scratch", s.scratch},
      {"pid", s.pid},
      {"supervisor", s.supervisor}};
  if (!s.metadata_loops.empty()) {
    json loops = json::array();
    for (const auto& m : s.metadata_loops)
      loops.push_back(
          {{"file", m.file}, {"loop", m.loop}, {"lock", m.writer ? "writer" : "reader"}});
    j["metadata-loops"] = loops;
  }
  if (!s.group.empty()) j["group"] = s.group;
  // Older dmu versions ignore it, so it needs no new record version.
  if (!s.attach_id.empty()) j["attach-id"] = s.attach_id;
  return j;
}

namespace {

// Reads field `key` of object `j` as T, or fails naming it.
template <class T>
Result<T> field(const json& j, const char* key, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end()) return fail(EINVAL, where + ": missing field '" + key + "'");
  try {
    return it->get<T>();
  } catch (const json::exception&) {
    return fail(EINVAL, where + ": field '" + key + "' has the wrong type");
  }
}

}  // namespace

Result<DeviceState> state_from_json(const json& j, const std::string& where) {
  if (!j.is_object()) return fail(EINVAL, where + ": not a JSON object");
  DMU_ASSIGN_OR_RETURN(int version, field<int>(j, "version", where));
  if (version < DeviceState::kOldestVersion || version > DeviceState::kVersion)
    return fail(EINVAL, where + ": state version " + std::to_string(version) + ", expected " +
                            std::to_string(DeviceState::kOldestVersion) + " to " +
                            std::to_string(DeviceState::kVersion));
  DeviceState s;
  DMU_ASSIGN_OR_RETURN(s.name, field<std::string>(j, "name", where));
  DMU_ASSIGN_OR_RETURN(s.image, field<std::string>(j, "image", where));
  DMU_ASSIGN_OR_RETURN(s.format, field<std::string>(j, "format", where));
  DMU_ASSIGN_OR_RETURN(s.chain, field<std::vector<std::string>>(j, "chain", where));
  DMU_ASSIGN_OR_RETURN(s.key, field<std::string>(j, "key", where));
  DMU_ASSIGN_OR_RETURN(s.read_only, field<bool>(j, "read-only", where));
  DMU_ASSIGN_OR_RETURN(s.block_sectors, field<uint32_t>(j, "block-sectors", where));
  DMU_ASSIGN_OR_RETURN(s.target_sectors, field<uint64_t>(j, "target-sectors", where));
  DMU_ASSIGN_OR_RETURN(s.scratch, field<std::string>(j, "scratch", where));
  DMU_ASSIGN_OR_RETURN(s.pid, field<pid_t>(j, "pid", where));
  // Absent in records written before supervision existed.
  if (j.contains("supervisor")) {
    DMU_ASSIGN_OR_RETURN(s.supervisor, field<pid_t>(j, "supervisor", where));
  }
  DMU_ASSIGN_OR_RETURN(json devices, field<json>(j, "devices", where));
  if (!devices.is_array()) return fail(EINVAL, where + ": field 'devices' is not an array");
  for (const json& d : devices) {
    const std::string at = where + ": devices[" + std::to_string(s.devices.size()) + "]";
    DataDevice dev;
    DMU_ASSIGN_OR_RETURN(dev.file, field<std::string>(d, "file", at));
    DMU_ASSIGN_OR_RETURN(dev.loop, field<std::string>(d, "loop", at));
    DMU_ASSIGN_OR_RETURN(dev.writable, field<bool>(d, "writable", at));
    s.devices.push_back(std::move(dev));
  }
  if (j.contains("metadata-loops")) {
    DMU_ASSIGN_OR_RETURN(json loops, field<json>(j, "metadata-loops", where));
    if (!loops.is_array()) return fail(EINVAL, where + ": field 'metadata-loops' is not an array");
    for (const json& m : loops) {
      const std::string at =
          where + ": metadata-loops[" + std::to_string(s.metadata_loops.size()) + "]";
      MetadataLoop ml;
      DMU_ASSIGN_OR_RETURN(ml.file, field<std::string>(m, "file", at));
      DMU_ASSIGN_OR_RETURN(ml.loop, field<std::string>(m, "loop", at));
      DMU_ASSIGN_OR_RETURN(std::string lock, field<std::string>(m, "lock", at));
      if (lock != "writer" && lock != "reader")
        return fail(EINVAL, at + ": field 'lock' is '" + lock + "', not 'writer' or 'reader'");
      ml.writer = lock == "writer";
      s.metadata_loops.push_back(std::move(ml));
    }
  }
  if (j.contains("group")) {
    DMU_ASSIGN_OR_RETURN(s.group, field<std::string>(j, "group", where));
  }
  if (j.contains("attach-id")) {
    DMU_ASSIGN_OR_RETURN(s.attach_id, field<std::string>(j, "attach-id", where));
  }
  if (s.name.empty() || s.key.empty() || s.devices.empty() || s.block_sectors == 0)
    return fail(EINVAL, where + ": incomplete record (name, key, devices, block-sectors)");
  return s;
}

std::string new_attach_id() {
  uint64_t v = 0;
  if (::getrandom(&v, sizeof v, 0) != sizeof v)  // no entropy yet: still unique enough
    v = uint64_t(std::chrono::system_clock::now().time_since_epoch().count()) ^
        (uint64_t(::getpid()) << 40);
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(v));
  return hex;
}

namespace {

// PATH.tmp.PID: write_file_atomic's temporary, by the writer's pid.
std::string temporary_prefix(const std::string& path) { return path + ".tmp."; }

}  // namespace

Result<void> write_file_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = temporary_prefix(path) + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return fail(errno_error(tmp + ": create"));
  UniqueFd file(fd);
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = ::write(file.get(), text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      Error e = errno_error(tmp + ": write");
      ::unlink(tmp.c_str());
      return fail(e);
    }
    done += size_t(n);
  }
  if (::fsync(file.get()) != 0) {
    Error e = errno_error(tmp + ": fsync");
    ::unlink(tmp.c_str());
    return fail(e);
  }
  file.reset();
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    Error e = errno_error(path + ": rename from " + tmp);
    ::unlink(tmp.c_str());
    return fail(e);
  }
  // The rename itself must survive a crash of the host too (best effort:
  // the record is already in place for everybody on this boot).
  (void)sync_parent_directory(path);
  return {};
}

Result<void> write_state(const DeviceState& s) {
  DMU_TRY(ensure_run_dir());
  return write_file_atomic(state_path(s.name), to_json(s).dump(2) + "\n");
}

Result<std::optional<DeviceState>> read_state(const std::string& name) {
  const std::string path = state_path(name);
  std::ifstream in(path);
  if (!in) {
    if (errno == ENOENT) return std::optional<DeviceState>();
    return fail(errno_error(path + ": open"));
  }
  std::stringstream text;
  text << in.rdbuf();
  json j = json::parse(text.str(), nullptr, false);
  if (j.is_discarded()) return fail(EINVAL, path + ": not valid JSON");
  DMU_ASSIGN_OR_RETURN(DeviceState s, state_from_json(j, path));
  if (s.name != name) return fail(EINVAL, path + ": record names device '" + s.name + "'");
  return std::optional<DeviceState>(std::move(s));
}

std::vector<DeviceState> list_states(std::vector<std::string>& problems) {
  std::vector<DeviceState> out;
  DIR* dir = ::opendir(run_dir().c_str());
  if (!dir) return out;
  std::vector<std::string> names;
  while (dirent* e = ::readdir(dir)) {
    std::string f = e->d_name;
    const std::string suffix = ".json";
    if (f.size() <= suffix.size() || f.compare(f.size() - suffix.size(), suffix.size(), suffix))
      continue;
    f.resize(f.size() - suffix.size());
    if (f.size() > 6 && f.compare(f.size() - 6, 6, ".stats") == 0) continue;
    names.push_back(f);
  }
  ::closedir(dir);
  std::sort(names.begin(), names.end());
  for (const auto& n : names) {
    auto s = read_state(n);
    if (!s)
      problems.push_back(s.error().message);
    else if (*s)
      out.push_back(std::move(**s));
  }
  return out;
}

namespace {

// Temporaries of write_file_atomic (PATH.tmp.PID) that a killed writer left
// for one of `paths`: no process has that pid, and the file is over a
// minute old (a writer in another pid namespace sharing the directory has a
// pid we cannot see, but writes for a moment only).  A living writer's stay.
void remove_dead_temporaries(const std::vector<std::string>& paths) {
  const std::string dir_path = run_dir();
  DIR* dir = ::opendir(dir_path.c_str());
  if (!dir) return;
  std::vector<std::string> dead;
  const time_t now = ::time(nullptr);
  while (dirent* e = ::readdir(dir)) {
    const std::string f = dir_path + "/" + e->d_name;
    for (const auto& p : paths) {
      const std::string prefix = temporary_prefix(p);
      if (f.size() <= prefix.size() || f.compare(0, prefix.size(), prefix) != 0) continue;
      const std::string digits = f.substr(prefix.size());
      // A pid is at most 7 digits (pid_max <= 2^22); more is not ours.
      if (digits.size() > 7 || digits.find_first_not_of("0123456789") != std::string::npos) continue;
      const pid_t pid = pid_t(std::stol(digits));
      struct stat st {};
      if (pid > 0 && ::kill(pid, 0) != 0 && errno == ESRCH && ::stat(f.c_str(), &st) == 0 &&
          now - st.st_mtime >= 60)
        dead.push_back(f);
    }
  }
  ::closedir(dir);
  for (const auto& f : dead) (void)::unlink(f.c_str());
}

}  // namespace

void remove_state_files(const std::string& name, bool keep_log, bool keep_lock) {
  const std::vector<std::string> written = {stats_path(name), state_path(name), leave_path(name),
                                            bind_error_path(name)};
  for (const std::string& p : written) (void)::unlink(p.c_str());
  (void)::unlink(scratch_path(name).c_str());
  remove_dead_temporaries(written);
  if (!keep_lock) (void)::unlink(lock_path(name).c_str());
  if (!keep_log) (void)::unlink(log_path(name).c_str());
}

}  // namespace dmu::daemon
