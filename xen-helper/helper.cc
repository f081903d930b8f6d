// The helper's events; see helper.h.
#include "xen-helper/helper.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <thread>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>

#include "common/unique_fd.h"
#include "daemon/attach.h"
#include "daemon/log.h"
#include "daemon/name_lock.h"
#include "daemon/paths.h"
#include "daemon/spawn.h"
#include "daemon/state_file.h"
#include "daemon/table_line.h"
#include "mapper/dm_device.h"

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

// The wall clock in milliseconds: block-dmu's deadline is wall-clock time
// (date +%s), and so is its wait (bash's SECONDS).
int64_t wall_clock_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
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
  removes.push_back(b + "/dmu/deadline");
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
  // started meanwhile, took it).  Its deadline is read first: block-dmu
  // writes both keys in one transaction and removes the request before the
  // deadline, so a claim that succeeds had the deadline read here (read
  // after it, a block-dmu giving up meanwhile could leave a claimed request
  // with no deadline, and the whole --attach-timeout spent on it).
  const auto deadline = xs_.read(b + "/dmu/deadline");
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
  // The disks of one `xl create` come one after another, each attach up to
  // attach_timeout: one that waited behind slow ones gets what is left of
  // its block-dmu's wait, so our answer comes while block-dmu still waits.
  // Too little left: refused now, unless the disk is attached already (libxl
  // running add twice, a helper taking over), which attach answers at once.
  auto budget = attach_budget(deadline ? parse_deadline(*deadline) : std::nullopt, wall_clock_ms(),
                              o_.attach_timeout);
  if (budget.count() == 0) {  // too late (attach_timeout is at least 1 s: main.cc)
    auto recorded = daemon::read_state(dm_name(id));
    if (!recorded || !*recorded)
      return refuse(id, target->path + ": too little of block-dmu's wait is left (under " +
                            std::to_string((kAnswerMargin + kShortestAttach).count() / 1000) +
                            " s); not attached");
    budget = std::chrono::seconds(1);
  }

  daemon::AttachOptions ao;
  ao.image = target->path;
  ao.name = dm_name(id);
  if (!target->format.empty()) ao.format = target->format;
  ao.read_only = mode == "r";
  ao.group = group_name(id.domid);
  ao.program = o_.dmu_program;
  ao.join_timeout = std::chrono::duration_cast<std::chrono::seconds>(budget);
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
// Queued: each step (now, then at every tick) runs without waiting, so the
// one event loop goes on serving other domains' adds.
void Helper::withdraw(BackendId id, const daemon::DeviceState& s, const std::string& why) {
  for (const auto& w : withdrawals_)
    if (w.name == s.name) return;  // queued already
  withdrawals_.push_back({id, s.name, why, std::chrono::steady_clock::now(), 0});
  retry_withdrawals();
}

void Helper::retry_withdrawals() {
  std::erase_if(withdrawals_, [&](Withdrawal& w) { return try_withdraw(w); });
}

// One step; true when done with it (detached, kept, or given up).  The
// check of physical-device, the removal of block-dmu's state and the leave
// marker happen under block-dmu's lock, which its adds and removes hold
// while they look at both; the marker makes a block-dmu add falling back
// meanwhile wait for the detach and attach anew (dmu attach), instead of
// taking the device as served and connecting it.  All three are done again
// on every attempt: a detach that found the device opened after its check
// serves it again and removes the marker.  The detach itself is a `dmu
// detach` process of its own (its log: NAME's), looked at on the next
// ticks: it may wait a minute for a slow group, and no other domain's add
// may wait for that.
bool Helper::try_withdraw(Withdrawal& w) {
  // udev's blkid holds a new device open for a moment; block-dmu holds its
  // lock across a whole attach (up to ~36 s).  Past this the domain's end
  // detaches what is left.
  constexpr auto kGiveUp = std::chrono::minutes(2);
  const std::string where = relative(w.id);
  const std::string log = daemon::log_path(w.name);
  const bool late = std::chrono::steady_clock::now() - w.since >= kGiveUp;
  auto give_up = [&](const std::string& what) {
    log_event(LogLevel::Warning, where,
              w.why + "; " + w.name + " is left for the domain's end (" + what + ")");
    return true;
  };
  auto record = daemon::read_state(w.name);
  const bool gone = record && !*record;
  if (w.detaching > 0) {
    // Still at it (main.cc reaps it; past the limit a pid reused since
    // would keep us here for ever).
    if (!gone && !late && ::kill(w.detaching, 0) == 0) return false;
    w.detaching = 0;
    if (gone) {
      log_event(LogLevel::Warning, where, w.why + "; detached " + w.name);
      return true;
    }
    if (late) return give_up("dmu detach failed or still runs; see " + log);
    log_event(LogLevel::Info, where,
              w.name + ": still attached after dmu detach (in use? see " + log +
                  "); withdrawal retried at the next tick");
    return false;
  }
  if (gone) return true;  // detached meanwhile (block-dmu's remove, the domain's end)
  {
    const std::string lock_file = o_.hotplug_state + "/lock";
    UniqueFd lock(::open(lock_file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
    if (!lock.valid()) return give_up(errno_error(lock_file).message);
    if (::flock(lock.get(), LOCK_EX | LOCK_NB) != 0)
      return late ? give_up(lock_file + " stayed busy") : false;
    if (xs_.read(backend_path(w.id) + "/physical-device")) {
      log_event(LogLevel::Warning, where, w.why + "; " + w.name + " stays: an add connected it");
      return true;
    }
    std::error_code ec;
    std::filesystem::remove_all(hotplug_state_dir(o_.hotplug_state, w.id), ec);
    if (auto m = daemon::write_file_atomic(daemon::leave_path(w.name), "withdrawn\n"); !m)
      log_event(LogLevel::Warning, where, m.error().message);
  }
  auto pid = daemon::spawn_dmu(o_.dmu_program, {"detach", w.name}, log);
  if (!pid) return give_up(pid.error().message);
  w.detaching = *pid;
  return false;
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
  if (auto lines = mapper::dm_status(name)) {
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
  retry_withdrawals();
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
  finish_gone_detaches(*live);
  const auto now = std::chrono::steady_clock::now();
  std::vector<std::string> problems;
  std::set<uint32_t> waiting;  // gone domains with devices left
  for (const auto& st : daemon::list_states(problems)) {
    auto id = parse_dm_name(st.name);
    if (!id || live->count(id->domid)) continue;
    waiting.insert(id->domid);
    auto since = gone_since_.try_emplace(id->domid, now).first;
    // libxl runs block-dmu remove (dmu detach) itself when a domain ends;
    // we step in when it is done with the backend or has not come.
    if (xs_.read(backend_path(*id) + "/params") && now - since->second < o_.gone_grace) continue;
    GoneDetach& job =
        gone_detaches_.try_emplace(st.name, GoneDetach{*id, st.image, 0, now, 0, now}).first->second;
    const std::string log = daemon::log_path(st.name);
    if (job.pid > 0) {
      // Still at it (main.cc reaps it).  A detach ends within a few
      // minutes (detach.cc's longest waits); past that, a live pid is one
      // reused since, and a new detach is started.
      if (now - job.started < std::chrono::minutes(5) && ::kill(job.pid, 0) == 0) continue;
      // Ended, and the record is still there (finish_gone_detaches would
      // have taken the job): it failed.
      job.pid = 0;
      const auto delay = gone_detach_retry_delay(++job.failures);
      job.next_try = now + delay;
      log_event(LogLevel::Warning, relative(*id),
                st.image + ": domain " + std::to_string(id->domid) + " is gone; dmu detach " +
                    st.name + " failed (again in " + std::to_string(delay.count()) + " s; see " +
                    log + ")");
    }
    if (now < job.next_try) continue;
    auto pid = daemon::spawn_dmu(o_.dmu_program, {"detach", st.name}, log);
    if (!pid) {
      log_event(LogLevel::Warning, relative(*id), st.name + ": " + pid.error().message);
      job.pid = 0;
      continue;
    }
    job.pid = *pid;
    job.started = now;
  }
  for (auto it = gone_since_.begin(); it != gone_since_.end();)
    it = waiting.count(it->first) ? std::next(it) : gone_since_.erase(it);
}

// A gone domain's device whose record went (our detach, or libxl's remove
// that came after all): its keys and block-dmu's state go too.  One of a
// domain id that lives again (libxl may reuse ids) is no longer ours.
void Helper::finish_gone_detaches(const std::set<uint32_t>& live) {
  for (auto it = gone_detaches_.begin(); it != gone_detaches_.end();) {
    if (live.count(it->second.id.domid)) {
      it = gone_detaches_.erase(it);
      continue;
    }
    auto record = daemon::read_state(it->first);
    if (!record || *record) {
      ++it;
      continue;
    }
    const GoneDetach& job = it->second;
    (void)xs_.remove(backend_path(job.id) + "/dmu");
    std::error_code ec;
    std::filesystem::remove_all(hotplug_state_dir(o_.hotplug_state, job.id), ec);
    log_event(LogLevel::Info, relative(job.id),
              job.image + ": domain " + std::to_string(job.id.domid) + " is gone; detached " +
                  it->first);
    it = gone_detaches_.erase(it);
  }
}

}  // namespace dmu::xenhelper
