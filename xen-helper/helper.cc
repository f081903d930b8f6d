// The helper's events; see helper.h.
#include "xen-helper/helper.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <thread>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>

#include "daemon/attach.h"
#include "daemon/detach.h"
#include "daemon/log.h"
#include "daemon/name_lock.h"
#include "daemon/paths.h"
#include "daemon/state_file.h"
#include "daemon/table_line.h"
#include "mapper/dm_device.h"
#include "mapper/unique_fd.h"

namespace dmu::xenhelper {
namespace {

using namespace std::chrono_literals;
using daemon::LogLevel;
using daemon::log_event;

std::string relative(BackendId id) {
  return "backend/vbd/" + std::to_string(id.domid) + "/" + std::to_string(id.devid);
}

// stat -L -c '%t:%T': hex major:minor, what blkback parses.
Result<std::string> major_minor(const std::string& node) {
  struct stat st {};
  if (::stat(node.c_str(), &st) != 0) return fail(errno_error(node));
  char buf[32];
  std::snprintf(buf, sizeof buf, "%x:%x", ::major(st.st_rdev), ::minor(st.st_rdev));
  return std::string(buf);
}

// block-dmu's state for the backend: its `remove` detaches from it.
Result<void> write_hotplug_state(const std::string& dir, const daemon::DeviceState& st,
                                 const std::string& mode) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return fail(EIO, dir + ": " + ec.message());
  for (const auto& [file, value] :
       {std::pair<std::string, std::string>{"device", st.node()},
        {"image", st.image},
        {"mode", mode},
        {"name", st.name}}) {
    std::ofstream(dir + "/" + file) << value << "\n";
  }
  return {};
}

// A live dmu-xen-helper (not a zombie, not a reused pid of something else).
bool helper_alive(pid_t pid) {
  std::ifstream comm("/proc/" + std::to_string(pid) + "/comm");
  std::string name;
  if (!comm || !std::getline(comm, name) || name != "dmu-xen-helper") return false;
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(status, line);)
    if (line.starts_with("State:")) return line.find('Z') == std::string::npos;
  return true;
}

}  // namespace

Result<void> Helper::start() {
  DMU_TRY(xs_.watch(kVbdRoot, "vbd"));
  DMU_TRY(xs_.watch("@releaseDomain", "release"));
  DMU_TRY(xs_.write(kHelperPidKey, std::to_string(::getpid())));
  log_event(LogLevel::Info, "dmu-xen-helper", "watching " + std::string(kVbdRoot));
  clean_gone_domains();
  scan_requests();
  tick();
  return {};
}

void Helper::stop() { (void)xs_.remove(kHelperPidKey); }

void Helper::scan_requests() {
  for (const auto& dom : xs_.directory(kVbdRoot))
    for (const auto& dev : xs_.directory(std::string(kVbdRoot) + "/" + dom))
      if (auto id = parse_backend_path(std::string(kVbdRoot) + "/" + dom + "/" + dev))
        if (auto r = xs_.read(backend_path(*id) + "/dmu/request");
            r && request_claimable(*r, ::getpid(), helper_alive))
          handle_add(*id);
}

void Helper::on_watch(const std::string& path) {
  if (path == "@releaseDomain") {
    clean_gone_domains();
    return;
  }
  if (!path.ends_with("/dmu/request")) return;
  auto id = parse_backend_path(path);
  if (id && xs_.read(path) == "add") handle_add(*id);
}

// Our answer stands only while our claim does: block-dmu removes the
// request when it gives up waiting (or libxl removes the whole backend).
// The request goes with the answer, in its transaction.
Result<bool> Helper::answer(BackendId id,
                            const std::vector<std::pair<std::string, std::string>>& keys,
                            std::vector<std::string> removes) {
  const std::string b = backend_path(id);
  const std::string claim = request_claim(::getpid());
  removes.push_back(b + "/dmu/request");
  return xs_.write_if(b + "/dmu/request",
                      [&](const std::optional<std::string>& v) { return v == claim; }, keys, removes);
}

void Helper::refuse(BackendId id, const std::string& message) {
  const std::string b = backend_path(id);
  log_event(LogLevel::Error, relative(id), message);
  // Named as the script libxl ran: xl create prints this line.
  auto w = answer(id, {{b + "/hotplug-error", "block-dmu: " + message}, {b + "/hotplug-status", "error"}});
  if (!w) log_event(LogLevel::Error, relative(id), w.error().message);
}

void Helper::handle_add(BackendId id) {
  const std::string b = backend_path(id);
  // Claimed first, in one transaction with the check: block-dmu may have
  // given up on a request that waited behind others (or another helper,
  // started meanwhile, took it).
  auto claimed = xs_.write_if(
      b + "/dmu/request",
      [](const std::optional<std::string>& v) { return v && request_claimable(*v, ::getpid(), helper_alive); },
      {{b + "/dmu/request", request_claim(::getpid())}});
  if (!claimed || !*claimed) {
    if (!claimed) log_event(LogLevel::Error, relative(id), claimed.error().message);
    return;
  }
  const auto params = xs_.read(b + "/params");
  if (!params) return;  // gone meanwhile
  const std::string mode = xs_.read(b + "/mode").value_or("w");
  auto target = parse_target(*params);
  if (!target) return refuse(id, target.error().message);
  struct stat st {};
  if (::stat(target->path.c_str(), &st) != 0)
    return refuse(id, target->path + ": no such image file");
  if (!S_ISREG(st.st_mode)) return refuse(id, target->path + ": not a regular file");

  daemon::AttachOptions ao;
  ao.image = target->path;
  ao.name = dm_name(id);
  if (!target->format.empty()) ao.format = target->format;
  ao.read_only = mode == "r";
  ao.group = group_name(id.domid);
  ao.program = o_.dmu_program;
  ao.join_timeout = o_.attach_timeout;
  // add again (libxl retries, a helper restarted mid-add, block-dmu falling
  // back at the same time): attach succeeds on the device served as asked.
  auto attached = daemon::attach(ao);
  if (!attached) {
    std::string why = attached.error().message;
    if (why.find(target->path) == std::string::npos) why = target->path + ": " + why;
    return refuse(id, why);
  }
  auto record = daemon::read_state(*ao.name);
  if (!record || !*record) return refuse(id, target->path + ": attached, but its record is gone");
  const daemon::DeviceState& s = **record;
  // Attached but not answered: it goes (unless an add connected it).
  auto give_up = [&](const std::string& why) {
    refuse(id, why);  // first: block-dmu waits for it, not for the withdrawal
    withdraw(id, s, why);
  };
  if (auto w = write_hotplug_state(hotplug_state_dir(o_.hotplug_state, id), s, mode); !w)
    return give_up(w.error().message);
  auto mm = major_minor(s.node());
  if (!mm) return give_up(mm.error().message);
  std::vector<std::pair<std::string, std::string>> keys = {
      {b + "/physical-device", *mm},
      {b + "/physical-device-path", s.node()},
      {b + "/dmu/image", s.image},
      {b + "/dmu/format", s.format},
      {b + "/dmu/device", s.node()},
      {b + "/dmu/dm-name", s.name},
      {b + "/dmu/group", s.group},
      {b + "/dmu/read-only", s.read_only ? "1" : "0"},
      {b + "/dmu/served-by", "dmu-xen-helper"}};
  std::string chain;
  for (const auto& c : s.chain) chain += (chain.empty() ? "" : " ") + c;
  keys.push_back({b + "/dmu/chain", chain});
  for (auto& k : changing_keys(id)) keys.push_back(std::move(k));
  keys.push_back({b + "/hotplug-status", "connected"});
  // All at once: blkback opens the device when physical-device appears,
  // libxl goes on at hotplug-status; neither may see one without the other.
  auto w = answer(id, keys, {b + "/hotplug-error"});
  if (!w) {
    const std::string why = w.error().message;
    withdraw(id, s, why);
    return refuse(id, target->path + ": " + why);  // if our claim still stands
  }
  if (!*w) return withdraw(id, s, "block-dmu gave up waiting before our answer");
  log_event(LogLevel::Info, relative(id),
            s.image + " (" + s.format + (s.read_only ? ", read-only" : "") + ") -> " + s.node() +
                ", group " + s.group + ", mapping process " + std::to_string(s.pid));
}

// Our answer did not go out (block-dmu gave up, the backend went, a step
// after the attach failed): the device is nobody's, so it goes now rather
// than when the domain ends -- unless an add that completed connected it
// (block-dmu's own fallback, an earlier add), which physical-device says.
// That check, the removal of block-dmu's state and the leave marker happen
// under block-dmu's lock, which its adds and removes hold while they look
// at both; the marker makes a block-dmu add falling back meanwhile wait for
// the detach and attach anew (dmu attach), instead of taking the device as
// served and connecting it.  The detach (which may take long) runs after
// the lock, so no block-dmu of any domain waits for it.
void Helper::withdraw(BackendId id, const daemon::DeviceState& s, const std::string& why) {
  {
    const std::string lock_file = o_.hotplug_state + "/lock";
    UniqueFd lock(::open(lock_file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
    int tries = 0;
    while (lock.valid() && ::flock(lock.get(), LOCK_EX | LOCK_NB) != 0 && ++tries < 100)
      std::this_thread::sleep_for(100ms);  // block-dmu holds it for seconds at most
    if (!lock.valid() || tries >= 100) {
      log_event(LogLevel::Warning, relative(id),
                why + "; " + s.name + " is left for the domain's end (" + lock_file + " is busy)");
      return;
    }
    if (xs_.read(backend_path(id) + "/physical-device")) {
      log_event(LogLevel::Warning, relative(id), why + "; " + s.name + " stays: an add connected it");
      return;
    }
    std::error_code ec;
    std::filesystem::remove_all(hotplug_state_dir(o_.hotplug_state, id), ec);
    if (auto m = daemon::write_file_atomic(daemon::leave_path(s.name), "withdrawn\n"); !m)
      log_event(LogLevel::Warning, relative(id), m.error().message);
  }
  daemon::DetachOptions d;
  d.name = s.name;
  d.program = o_.dmu_program;
  // Retried while something (udev's blkid) still has it open, as block-dmu's
  // remove does.
  auto r = daemon::detach(d);
  for (int i = 0; !r && r.error().code == EBUSY && i < 100; ++i) {
    std::this_thread::sleep_for(200ms);
    r = daemon::detach(d);
  }
  if (!r) {
    log_event(LogLevel::Error, relative(id), why + "; detach " + s.name + " failed: " + r.error().message);
    return;
  }
  log_event(LogLevel::Warning, relative(id), why + "; detached " + s.name);
}

// The debugging keys that change: who serves the device, and the counters.
std::vector<std::pair<std::string, std::string>> Helper::changing_keys(BackendId id) {
  const std::string b = backend_path(id);
  const std::string name = dm_name(id);
  auto record = daemon::read_state(name);
  if (!record || !*record) return {};
  std::vector<std::pair<std::string, std::string>> keys = {
      {b + "/dmu/pid", std::to_string((*record)->pid)},
      {b + "/dmu/supervisor", std::to_string((*record)->supervisor)},
      {b + "/dmu/served", daemon::lock_held(name) ? "1" : "0"}};
  if (auto lines = dm_status(name)) {
    for (const auto& l : *lines) {
      if (l.type != "userspace") continue;
      if (auto fields = daemon::parse_status(l.params))
        for (const auto& f : *fields) keys.push_back({b + "/dmu/stats/" + f.name, f.value});
    }
  }
  return keys;
}

void Helper::publish(BackendId id) {
  auto keys = changing_keys(id);
  if (keys.empty()) return;
  // Only under a backend that shows our keys (not one being torn down).
  (void)xs_.write_if_exists(backend_path(id) + "/dmu/image", keys);
}

void Helper::tick() {
  std::vector<std::string> problems;
  for (const auto& st : daemon::list_states(problems))
    if (auto id = parse_dm_name(st.name)) publish(*id);
  clean_gone_domains();
}

void Helper::clean_gone_domains() {
  auto live = xc_.domains();
  if (!live) {
    log_event(LogLevel::Error, "dmu-xen-helper", live.error().message);
    return;
  }
  const auto now = std::chrono::steady_clock::now();
  std::vector<std::string> problems;
  std::set<uint32_t> waiting;  // gone domains with devices left
  for (const auto& st : daemon::list_states(problems)) {
    auto id = parse_dm_name(st.name);
    if (!id || live->count(id->domid)) continue;
    waiting.insert(id->domid);
    auto since = gone_since_.try_emplace(id->domid, now).first;
    const std::string b = backend_path(*id);
    // libxl runs block-dmu remove (dmu detach) itself when a domain ends;
    // we step in when it is done with the backend or has not come.
    if (xs_.read(b + "/params") && now - since->second < o_.gone_grace) continue;
    daemon::DetachOptions d;
    d.name = st.name;
    d.program = o_.dmu_program;
    auto r = daemon::detach(d);
    if (!r) {
      log_event(LogLevel::Warning, relative(*id),
                st.image + ": domain " + std::to_string(id->domid) + " is gone; detach " +
                    st.name + " failed (retrying): " + r.error().message);
      continue;
    }
    (void)xs_.remove(b + "/dmu");
    std::error_code ec;
    std::filesystem::remove_all(hotplug_state_dir(o_.hotplug_state, *id), ec);
    log_event(LogLevel::Info, relative(*id),
              st.image + ": domain " + std::to_string(id->domid) + " is gone; detached " + st.name);
  }
  for (auto it = gone_since_.begin(); it != gone_since_.end();)
    it = waiting.count(it->first) ? std::next(it) : gone_since_.erase(it);
}

}  // namespace dmu::xenhelper
