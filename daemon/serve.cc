// The mapping process's main loop; see serve.h.
#include "daemon/serve.h"

#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <fcntl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>
#include <csignal>
#include <cstdlib>
#include <memory>

#include "daemon/group.h"
#include "daemon/log.h"
#include "daemon/metadata_loops.h"
#include "daemon/name_lock.h"
#include "daemon/paths.h"
#include "daemon/served_device.h"
#include "daemon/state_file.h"
#include "mapper/dm_device.h"

namespace dmu::daemon {
namespace {

volatile std::sig_atomic_t g_stop = 0;
volatile std::sig_atomic_t g_reload = 0;

void on_signal(int) { g_stop = 1; }
void on_reload(int) { g_reload = 1; }

void install_signals(bool grouped) {
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: poll() returns EINTR and the loop notices
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);  // attach may stop listening on the ready pipe
  struct sigaction hup {};
  hup.sa_handler = grouped ? on_reload : SIG_IGN;
  sigemptyset(&hup.sa_mask);
  sigaction(SIGHUP, &hup, nullptr);
  // A supervised process starts with them blocked (supervise.cc); one that
  // arrived meanwhile is delivered now.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGHUP);
  sigprocmask(SIG_UNBLOCK, &stop, nullptr);
}

}  // namespace

void tell_ready(int fd, const std::string& text) {
  if (fd < 0) return;
  const char* p = text.data();
  size_t left = text.size();
  while (left) {
    ssize_t n = ::write(fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    p += n;
    left -= size_t(n);
  }
}

namespace {

struct Member {
  std::string name;
  NameLock lock;
  std::unique_ptr<ServedDevice> device;
  std::string node;
  bool read_only = false;
  DeviceState record;  // as set_up wrote it
  // Set when a rebind brought it back (see Rebind): the backoff that rebind
  // waited, and when it was bound, so a member failing again soon after
  // waits longer each time instead of 1 s forever.
  std::chrono::seconds rebind_backoff{0};
  std::chrono::steady_clock::time_point bound_at = std::chrono::steady_clock::now();
};

// Before a clean exit: a flush through the device while the loop still
// answers.  The kernel then sends a COMMIT covering every DONE so far, and
// once it is answered it forgets those allocation records, so the next
// mapping process has nothing to adopt unless the guest kept writing.
class StopFlush {
 public:
  explicit StopFlush(const std::string& node) : state_(std::make_shared<State>()) {
    // The thread owns a share of the state: a flush stuck past the deadline
    // is left behind (detached) without dangling.
    thread_ = std::thread([state = state_, node] {
      int fd = ::open(node.c_str(), O_RDONLY | O_CLOEXEC);
      std::string error;
      if (fd >= 0) {
        if (::fsync(fd) != 0) error = errno_error(node + ": flush before exit").message;
        ::close(fd);
      } else {
        error = errno_error(node + ": open to flush before exit").message;
      }
      std::lock_guard lock(state->mu);
      state->error = error;
      state->done = true;
    });
  }
  ~StopFlush() {
    if (done())
      thread_.join();
    else
      thread_.detach();
  }
  bool done() const {
    std::lock_guard lock(state_->mu);
    return state_->done;
  }
  std::string error() const {
    std::lock_guard lock(state_->mu);
    return state_->error;
  }

 private:
  struct State {
    std::mutex mu;
    bool done = false;
    std::string error;
  };
  std::shared_ptr<State> state_;
  std::thread thread_;
};

// A test seam (vm attach-group), live only with DMU_TEST_SEAMS set:
// DMU_TEST_SET_UP_DELAY_MS makes a device's set-up take that long with its
// lock held (its own or its supervisor's): the slow bind an attach's
// --timeout must survive.
void slow_set_up_seam() {
  if (!std::getenv("DMU_TEST_SEAMS")) return;
  if (const char* ms = std::getenv("DMU_TEST_SET_UP_DELAY_MS"))
    std::this_thread::sleep_for(std::chrono::milliseconds(std::atoi(ms)));
}

// Everything one device needs before the loop starts: its lock, its record,
// the dm device, the served device, and the record's pid.
Result<Member> set_up(const std::string& name, bool own_lock, bool supervised) {
  Member m;
  m.name = name;
  // A supervised `serve --name` inherited its supervisor's lock (one open
  // file description: a second flock() of ours would conflict with it); a
  // group process takes its members' locks itself (group.h says why).
  if (own_lock) {
    DMU_ASSIGN_OR_RETURN(m.lock, NameLock::try_acquire(name));
    // Checked again under the lock: a detach that wrote the marker after
    // our caller read the members waits for this lock, and must get it.
    if (leaving(name))
      return fail(ECANCELED, name + ": leaving its group (detach)");
  }
  slow_set_up_seam();
  DMU_ASSIGN_OR_RETURN(auto state, read_state(name));
  if (!state) return fail(ENOENT, name + ": not attached (no record " + state_path(name) + ")");
  DMU_ASSIGN_OR_RETURN(mapper::DmInfo info, mapper::dm_device_info(name));
  if (!info.exists)
    return fail(ENXIO, name + ": the dm device is gone; run dmu detach " + name + " to clean up");
  DMU_TRY(restore_metadata_loops(*state));
  DMU_ASSIGN_OR_RETURN(m.device, ServedDevice::open(*state));
  m.node = state->node();
  m.read_only = state->read_only;
  state->pid = ::getpid();
  state->supervisor = supervised ? ::getppid() : 0;
  DMU_TRY(write_state(*state));
  m.record = *state;
  return m;
}

// Lets a member go: it answers the COMMITs queued and commits (detach has
// flushed the device already), then its lock is released with it.  The
// record's pid is cleared first, under that lock: join_group takes a live
// group pid in the record as "bound", and this process lives on.  Only the
// record set_up wrote: an attach that found the device gone may have
// replaced it (and the lock file) without our lock.
void release(Member& m, const std::string& why) {
  if (auto s = m.device->shutdown(); !s) log_event(LogLevel::Error, m.name, s.error().message);
  m.device->write_stats(true);
  if (auto st = read_state(m.name); st && *st && **st == m.record) {
    (*st)->pid = 0;
    if (auto w = write_state(**st); !w) log_event(LogLevel::Warning, m.name, w.error().message);
  }
  log_event(LogLevel::Info, m.name, why);
}

// A group member that cannot be served is told (NAME.bind-error, for the
// attach waiting on it; not on a rebind, which no attach waits for) and
// skipped: the domain's other disks go on.  Returns whether it is served.
bool add_member(const std::string& group, const std::string& name, bool supervised,
                std::vector<Member>& members, std::string* first_error,
                bool report = true) {
  auto m = set_up(name, /*own_lock=*/true, supervised);
  if (!m && m.error().code == ECANCELED) {
    // Not an error of ours; but an attach racing the detach waits for an
    // answer (join_group), and gets this one rather than its timeout.
    log_event(LogLevel::Info, name, m.error().message);
    if (report) report_bind_error(name, m.error().message);
    return false;
  }
  if (!m) {
    log_event(LogLevel::Error, name, m.error().message);
    if (report) report_bind_error(name, m.error().message);
    if (first_error && first_error->empty()) *first_error = m.error().message;
    return false;
  }
  clear_bind_error(name);
  m->device->write_stats(true);
  log_event(LogLevel::Info, name, "served by group " + group + "'s mapping process");
  members.push_back(std::move(*m));
  return true;
}

// A group member whose channel failed is released alone and bound again
// after a backoff, doubling up to a limit, for as long as it stays in the
// group: exiting would take the domain's other disks down with it, and a
// member that fails again would do so on every restart.
struct Rebind {
  std::string name;
  std::chrono::steady_clock::time_point at;
  std::chrono::seconds backoff;
};
constexpr std::chrono::seconds kFirstRebind{1};
// Well inside the kernel's default daemon_timeout (30 s): a member whose bind
// fails at first (1+2+4 s) still gets attempts before its guest sees EIO.
constexpr std::chrono::seconds kMaxRebind{8};
// A member that fails within this long of a rebind keeps its backoff growing.
constexpr std::chrono::seconds kRebindSettled{60};

// The rebind for a member released now after a channel error.
Rebind rebind_after_failure(const Member& m) {
  const auto now = std::chrono::steady_clock::now();
  auto backoff = kFirstRebind;
  if (m.rebind_backoff.count() > 0 && now - m.bound_at < kRebindSettled)
    backoff = std::min(m.rebind_backoff * 2, kMaxRebind);
  return {m.name, now + backoff, backoff};
}

bool in(const std::vector<std::string>& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

bool serving(const std::vector<Member>& members, const std::string& name) {
  return std::any_of(members.begin(), members.end(), [&](const Member& m) { return m.name == name; });
}

void drop_rebinds_not_in(const std::vector<std::string>& wanted, std::vector<Rebind>& rebinds) {
  std::erase_if(rebinds, [&](const Rebind& r) { return !in(wanted, r.name); });
}

void rebind_due(const ServeOptions& o, std::vector<Member>& members,
                std::vector<Rebind>& rebinds) {
  const auto now = std::chrono::steady_clock::now();
  for (auto it = rebinds.begin(); it != rebinds.end();) {
    const bool served = serving(members, it->name);
    if (it->at > now && !served) {
      ++it;
      continue;
    }
    if (served || !in(group_members(o.group), it->name)) {
      it = rebinds.erase(it);  // bound again by a reload, or left the group
    } else if (add_member(o.group, it->name, o.supervised, members, nullptr, /*report=*/false)) {
      members.back().rebind_backoff = it->backoff;
      it = rebinds.erase(it);
    } else {
      it->backoff = std::min(it->backoff * 2, kMaxRebind);
      it->at = now + it->backoff;
      log_event(LogLevel::Info, it->name,
                "binding again in " + std::to_string(it->backoff.count()) + " s");
      ++it;
    }
  }
}

// SIGHUP: the group's members now.  Returns false when none is left, served
// or waiting to be bound again.
bool reload(const ServeOptions& o, std::vector<Member>& members, std::vector<Rebind>& rebinds) {
  const std::vector<std::string> wanted = group_members(o.group);
  drop_rebinds_not_in(wanted, rebinds);
  for (auto it = members.begin(); it != members.end();) {
    if (!in(wanted, it->name)) {
      release(*it, "left group " + o.group);
      it = members.erase(it);
    } else {
      ++it;
    }
  }
  for (const auto& name : wanted) {
    auto waiting = [&](const Rebind& r) { return r.name == name; };
    // One waiting for its rebind is left to it: binding here would skip
    // its backoff and stall the loop on a bind that just failed.
    if (!serving(members, name) && std::none_of(rebinds.begin(), rebinds.end(), waiting))
      add_member(o.group, name, o.supervised, members, nullptr);
  }
  return !members.empty() || !rebinds.empty();
}

// A test seam (vm attach-group), live only with DMU_TEST_SEAMS set in the
// environment: NAME.test-channel-error in the run directory makes NAME's
// next round fail as a broken channel would, once; NAME.test-channel-error-
// on-stop the same, once the process is stopping and its flushes started.
// The channel of a target whose device stays breaks only on kernel errors a
// test cannot cause.
bool injected_channel_error(const std::string& name, bool stopping) {
  static const bool enabled = std::getenv("DMU_TEST_SEAMS") != nullptr;
  if (!enabled) return false;
  const std::string seam = run_dir() + "/" + name + ".test-channel-error";
  return ::unlink(seam.c_str()) == 0 || (stopping && ::unlink((seam + "-on-stop").c_str()) == 0);
}

// A group's supervisor died (kill -9) while this process lives on with the
// members' locks.  Left so, the group's lock is free: the next attach
// --group would start a second supervisor and process beside us, detach
// would signal that one, and nobody would restart us when we die.  So the
// members are committed and let go, and the group is served again by a
// supervised process (join_group starts one, or signals the one an attach
// started meanwhile): the restart a kill -9 of the mapping process costs.
// This process exits after.
void hand_over_group(const ServeOptions& o, std::vector<Member>& members,
                     std::vector<Rebind>& rebinds) {
  log_event(LogLevel::Warning, "group " + o.group,
            "supervisor pid " + std::to_string(o.supervisor) +
                " is gone; handing the members over to a new supervised process");
  std::vector<std::string> names;
  for (auto& m : members) {
    release(m, "handed over to group " + o.group + "'s new process");
    names.push_back(m.name);
  }
  for (const auto& r : rebinds) names.push_back(r.name);  // bound anew there
  members.clear();  // their locks go with them
  rebinds.clear();
  for (const auto& name : names)
    if (auto j = join_group("/proc/self/exe", o.group, name); !j)
      log_event(LogLevel::Error, name, "hand-over: " + j.error().message);
}

}  // namespace

int serve(const ServeOptions& options) {
  const bool grouped = !options.group.empty();
  install_signals(grouped);
  std::vector<Member> members;
  if (grouped) {
    std::string first_error;
    for (const auto& name : group_members(options.group))
      add_member(options.group, name, options.supervised, members, &first_error);
    if (members.empty()) {
      const std::string why = first_error.empty()
                                  ? "group " + options.group + " has no members"
                                  : first_error;
      log_event(LogLevel::Error, "group " + options.group, why);
      tell_ready(options.ready_fd, "error: " + why + "\n");
      return first_error.empty() ? 0 : 1;
    }
  }
  for (const auto& name : options.names) {
    auto m = set_up(name, !options.supervised, options.supervised);
    if (!m) {
      log_event(LogLevel::Error, name, m.error().message);
      tell_ready(options.ready_fd, "error: " + m.error().message + "\n");
      return 1;
    }
    members.push_back(std::move(*m));
  }
  for (auto& m : members) m.device->write_stats(true);
  tell_ready(options.ready_fd, "ready\n");
  if (options.ready_fd >= 0) ::close(options.ready_fd);

  std::vector<pollfd> fds;
  std::vector<Rebind> rebinds;       // grouped: members released after an error
  std::vector<size_t> failed;        // members whose channel failed this round
  int rc = 0;
  auto last_stats = std::chrono::steady_clock::now();
  bool pushing = true;  // until every device's push is over
  std::vector<std::unique_ptr<StopFlush>> flushes;
  std::chrono::steady_clock::time_point flush_deadline;
  bool flushing = false;  // stopping, the flushes started
  auto flushed = [&] {
    for (auto& f : flushes)
      if (!f->done()) return false;
    return true;
  };
  // A group's supervisor that dies sends us SIGHUP (PDEATHSIG, set in
  // supervise.cc's fork), so the parent is looked at only then -- and once
  // at the start, in case it died before that was set -- not on every pass.
  bool check_parent = true;
  for (;;) {
    if (rc != 0) break;
    if (grouped && options.supervisor > 0 && !g_stop && (check_parent || g_reload)) {
      check_parent = false;
      if (::getppid() != options.supervisor) {
        hand_over_group(options, members, rebinds);
        break;
      }
    }
    if (grouped && g_reload && !g_stop) {
      g_reload = 0;
      if (!reload(options, members, rebinds)) {
        log_event(LogLevel::Info, "group " + options.group, "no members left; exiting");
        break;
      }
      pushing = true;  // a new member pushes its mappings
    }
    // Also while stopping: a member released then has its stop flush waiting
    // in the kernel for a process to serve it (and, past the kernel's
    // daemon_timeout, its guest's writes would fail).
    if (grouped && !rebinds.empty()) {
      const size_t before = members.size();
      rebind_due(options, members, rebinds);
      if (members.size() > before) pushing = true;
      // The last one waiting has left the group (a detach of a member nobody
      // served sends no SIGHUP): nothing is left to serve.
      if (members.empty() && rebinds.empty()) {
        log_event(LogLevel::Info, "group " + options.group, "no members left; exiting");
        break;
      }
    }
    fds.resize(members.size());
    for (size_t i = 0; i < members.size(); ++i) fds[i] = {members[i].device->fd(), POLLIN, 0};
    if (g_stop && flushes.empty()) {
      // Serve on until each device's flush has been committed (bounded).
      for (auto& m : members)
        if (!m.read_only) flushes.push_back(std::make_unique<StopFlush>(m.node));
      flush_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
      log_event(LogLevel::Info, grouped ? "group " + options.group : "serve",
                "stopping: flushing " + std::to_string(flushes.size()) + " devices, then exiting");
      flushing = true;
    }
    if (g_stop && (flushed() || std::chrono::steady_clock::now() >= flush_deadline)) break;
    // While a push is under way, poll only for what is waiting.
    int n = ::poll(fds.data(), fds.size(), pushing ? 0 : g_stop ? 50 : 500);
    if (n < 0 && errno != EINTR) {
      log_event(LogLevel::Error, "serve", errno_error("poll").message);
      rc = 1;
      break;
    }
    for (size_t i = 0; i < fds.size(); ++i) {
      if (grouped && injected_channel_error(members[i].name, flushing)) {
        log_event(LogLevel::Error, members[i].name, "test seam: channel error injected");
        failed.push_back(i);
        continue;
      }
      if (n <= 0 || !fds[i].revents) continue;
      // Drain what is queued now; new requests wake poll() again.
      for (;;) {
        auto r = members[i].device->serve_batch();
        if (!r) {
          log_event(LogLevel::Error, members[i].device->name(), r.error().message);
          if (grouped)
            failed.push_back(i);
          else
            rc = 1;
          break;
        }
        if (*r == 0) break;
      }
    }
    // From the back, so the indices of the others stay valid.
    for (auto it = failed.rbegin(); it != failed.rend(); ++it) {
      Member& m = members[*it];
      release(m, "released after a channel error; the group's other members go on");
      rebinds.push_back(rebind_after_failure(m));
      members.erase(members.begin() + std::ptrdiff_t(*it));
    }
    failed.clear();
    pushing = false;
    if (!g_stop)
      for (auto& m : members) pushing = m.device->push_some() || pushing;
    if (std::chrono::steady_clock::now() - last_stats >= std::chrono::seconds(1)) {
      for (auto& m : members) m.device->write_stats(false);
      last_stats = std::chrono::steady_clock::now();
    }
  }
  for (auto& f : flushes)
    if (f->done() && !f->error().empty()) log_event(LogLevel::Warning, "serve", f->error());
  if (!flushed()) log_event(LogLevel::Warning, "serve", "flush before exit did not finish in 30 s");
  for (auto& m : members) {
    if (auto s = m.device->shutdown(); !s) {
      log_event(LogLevel::Error, m.device->name(), s.error().message);
      rc = 1;
    }
    m.device->write_stats(true);
    log_event(LogLevel::Info, m.device->name(),
              g_stop ? "stopped by signal; the device waits for the next mapping process"
                     : "stopped after an error");
  }
  return rc;
}

}  // namespace dmu::daemon
