// The supervisor; see supervise.h.
#include "daemon/supervise.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

#include "common/unique_fd.h"
#include "daemon/log.h"
#include "daemon/name_lock.h"
#include "daemon/paths.h"
#include "daemon/state_file.h"

namespace dmu::daemon {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr int kMaxQuickFailures = 10;  // deaths in a row, each within kQuick of its start
constexpr auto kQuick = 10s;
constexpr auto kMaxBackoff = 5s;

std::string describe_status(int status) {
  if (WIFSIGNALED(status)) return "killed by signal " + std::to_string(WTERMSIG(status));
  return "exited with status " + std::to_string(WEXITSTATUS(status));
}

std::string group_name(const ServeOptions& o) {
  if (!o.group.empty()) return "group " + o.group;
  std::string s;
  for (const auto& n : o.names) s += (s.empty() ? "" : ",") + n;
  return s;
}

struct Child {
  pid_t pid = -1;
  UniqueFd ready;     // its ready pipe, until it answered or closed it
  std::string text;   // what it wrote there
  bool bound = false;
  Clock::time_point started;
};

// Forks the mapping process.  The child gets the default signal mask back
// (the supervisor blocks its signals for the signalfd) and serves with the
// inherited name locks.
Result<Child> start(const ServeOptions& o, int signal_fd, std::vector<NameLock>& locks) {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) return fail(errno_error("pipe"));
  const pid_t self = ::getpid();
  UniqueFd read_end(p[0]), write_end(p[1]);
  const pid_t pid = ::fork();
  if (pid < 0) return fail(errno_error("fork the mapping process"));
  if (pid == 0) {
    // Not "dmu-supervise": detach tells the two apart by name.  SIGTERM and
    // SIGINT stay blocked until serve() has its handlers (it unblocks them),
    // or a forwarded SIGTERM would kill it before it can commit.
    ::prctl(PR_SET_NAME, "dmu");
    sigset_t keep;
    sigemptyset(&keep);
    sigaddset(&keep, SIGTERM);
    sigaddset(&keep, SIGINT);
    sigaddset(&keep, SIGHUP);  // a group's "re-read": default action would kill
    ::sigprocmask(SIG_SETMASK, &keep, nullptr);
    ::close(signal_fd);
    // A group's lock says "its supervisor lives": a mapping process that
    // outlived a killed supervisor must not keep claiming that (the next
    // attach --group then starts a new supervisor).  Closing our copy
    // leaves the supervisor's lock in place.
    if (!o.group.empty())
      for (auto& l : locks) l.release();
    // Told at once if we die (a SIGHUP only makes a group re-read its
    // members); serve() then sees its parent changed and hands over.
    if (!o.group.empty()) ::prctl(PR_SET_PDEATHSIG, SIGHUP);
    if (o.ready_fd >= 0) ::close(o.ready_fd);  // attach's pipe is the supervisor's to answer
    read_end.reset();
    ServeOptions c = o;
    c.ready_fd = write_end.get();
    c.supervised = true;
    c.supervisor = self;
    ::_exit(serve(c));
  }
  Child c;
  c.pid = pid;
  c.ready = std::move(read_end);
  c.started = Clock::now();
  return c;
}

// Reads what the child wrote to its ready pipe; closes the pipe at EOF or
// once it said "ready".
void read_ready(Child& c) {
  char buf[512];
  ssize_t n = ::read(c.ready.get(), buf, sizeof buf);
  if (n < 0 && errno == EINTR) return;
  if (n > 0) c.text.append(buf, size_t(n));
  if (c.text.rfind("ready\n", 0) == 0) c.bound = true;
  if (n <= 0 || c.bound) c.ready.reset();
}

}  // namespace

int supervise(const ServeOptions& options) {
  const std::string group = group_name(options);
  int ready_fd = options.ready_fd;
  std::vector<NameLock> locks;
  // A group's supervisor holds the group's lock and says where it is; its
  // mapping process takes the members' locks (group.h).
  std::vector<std::string> lock_names = options.names;
  if (!options.group.empty()) lock_names = {group_file_name(options.group)};
  for (const auto& name : lock_names) {
    auto l = NameLock::try_acquire(name);
    if (!l) {
      log_event(LogLevel::Error, name, l.error().message);
      tell_ready(ready_fd, "error: " + l.error().message + "\n");
      return 1;
    }
    locks.push_back(std::move(*l));
  }

  sigset_t set;
  sigemptyset(&set);
  for (int s : {SIGTERM, SIGINT, SIGCHLD, SIGHUP}) sigaddset(&set, s);
  ::sigprocmask(SIG_BLOCK, &set, nullptr);
  ::signal(SIGPIPE, SIG_IGN);  // attach may stop listening on the ready pipe
  int sfd = ::signalfd(-1, &set, SFD_CLOEXEC);
  if (sfd < 0) {
    const std::string e = errno_error("signalfd").message;
    log_event(LogLevel::Error, group, e);
    tell_ready(ready_fd, "error: " + e + "\n");
    return 1;
  }
  UniqueFd signals(sfd);
  ::prctl(PR_SET_NAME, "dmu-supervise");
  if (!options.group.empty()) {
    if (auto w = write_file_atomic(group_pid_path(options.group), std::to_string(::getpid()) + "\n");
        !w) {
      log_event(LogLevel::Error, group, w.error().message);
      tell_ready(ready_fd, "error: " + w.error().message + "\n");
      return 1;
    }
  }

  bool stopping = false;
  int quick_failures = 0;
  for (;;) {
    auto started = start(options, signals.get(), locks);
    if (!started) {
      log_event(LogLevel::Error, group, started.error().message);
      tell_ready(ready_fd, "error: " + started.error().message + "\n");
      return 1;
    }
    Child child = std::move(*started);

    int status = 0;
    for (bool running = true; running;) {
      pollfd fds[2] = {{signals.get(), POLLIN, 0}, {child.ready.get(), POLLIN, 0}};
      const nfds_t n = child.ready.valid() ? 2 : 1;
      if (::poll(fds, n, -1) < 0 && errno != EINTR) {
        log_event(LogLevel::Error, group, errno_error("poll").message);
        return 1;
      }
      if (n == 2 && fds[1].revents) {
        read_ready(child);
        if (child.bound && ready_fd >= 0) {
          tell_ready(ready_fd, "ready\n");
          ::close(ready_fd);
          ready_fd = -1;
        }
      }
      if (!fds[0].revents) continue;
      signalfd_siginfo si{};
      if (::read(signals.get(), &si, sizeof si) != ssize_t(sizeof si)) continue;
      if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) {
        stopping = true;
        ::kill(child.pid, SIGTERM);  // it commits and exits 0
        ::kill(child.pid, SIGCONT);  // even if someone stopped it
      } else if (si.ssi_signo == SIGHUP) {
        // A group's members changed; a child started later reads them anyway.
        if (!options.group.empty()) ::kill(child.pid, SIGHUP);
      } else if (si.ssi_signo == SIGCHLD) {
        // SIGCHLDs coalesce: ask for our child whatever this one said.
        if (::waitpid(child.pid, &status, WNOHANG) == child.pid) running = false;
      }
    }
    while (child.ready.valid()) read_ready(child);  // whatever it wrote before dying

    const bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (clean || stopping) return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
    if (ready_fd >= 0) {
      // The first start failed: attach shows the child's own message.
      std::string why = child.text;
      if (why.rfind("error: ", 0) != 0)
        why = "error: the mapping process " + describe_status(status) + " before it was bound\n";
      tell_ready(ready_fd, why);
      return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
    }

    // A crash soon after starting may well happen again: back off.  A
    // SIGKILL after the process was bound comes from outside (an
    // administrator, the OOM killer under load) and says nothing about the
    // next start: it neither counts, nor delays the restart, nor clears the
    // count.  Killed before it was bound, it counts (an OOM kill at every
    // start would otherwise restart it in a tight loop).
    const bool killed_serving = child.bound && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
    const bool quick = Clock::now() - child.started < kQuick;
    if (!killed_serving) quick_failures = quick ? quick_failures + 1 : 0;
    if (quick_failures >= kMaxQuickFailures) {
      log_event(LogLevel::Error, group,
                "the mapping process died " + std::to_string(quick_failures) +
                    " times in a row soon after starting; giving up (dmu attach --name NAME "
                    "IMAGE starts it again)");
      return 1;
    }
    // The first restart is immediate: the guest's I/O is waiting.
    const auto backoff = quick_failures <= 1
                             ? 0ms
                             : std::min<std::chrono::milliseconds>(
                                   100ms * (1 << std::min(quick_failures - 2, 6)), kMaxBackoff);
    log_event(LogLevel::Warning, group,
              "mapping process pid " + std::to_string(child.pid) + " " + describe_status(status) +
                  "; starting a new one" +
                  (backoff.count() ? " in " + std::to_string(backoff.count()) + " ms" : ""));
    if (backoff.count()) {
      pollfd p{signals.get(), POLLIN, 0};
      const auto until = Clock::now() + backoff;
      while (!stopping && Clock::now() < until) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now());
        if (::poll(&p, 1, int(left.count()) + 1) <= 0) continue;
        signalfd_siginfo si{};
        if (::read(signals.get(), &si, sizeof si) == ssize_t(sizeof si) &&
            (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT))
          stopping = true;
      }
      if (stopping) return 0;  // nothing runs; the device waits for a rebind
    }
  }
}

}  // namespace dmu::daemon
