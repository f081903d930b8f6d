// The mapping process's main loop; see serve.h.
#include "daemon/serve.h"

#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <fcntl.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>
#include <csignal>
#include <memory>

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

void on_signal(int) { g_stop = 1; }

void install_signals() {
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: poll() returns EINTR and the loop notices
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);  // attach may stop listening on the ready pipe
  signal(SIGHUP, SIG_IGN);
  // A supervised process starts with them blocked (supervise.cc).
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
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
  NameLock lock;
  std::unique_ptr<ServedDevice> device;
  std::string node;
  bool read_only = false;
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

// Everything one device needs before the loop starts: its lock, its record,
// the dm device, the served device, and the record's pid.
Result<Member> set_up(const std::string& name, bool supervised) {
  Member m;
  // A supervised process inherited its supervisor's lock (one open file
  // description: a second flock() of ours would conflict with it).
  if (!supervised) {
    DMU_ASSIGN_OR_RETURN(m.lock, NameLock::try_acquire(name));
  }
  DMU_ASSIGN_OR_RETURN(auto state, read_state(name));
  if (!state) return fail(ENOENT, name + ": not attached (no record " + state_path(name) + ")");
  DMU_ASSIGN_OR_RETURN(DmInfo info, dm_device_info(name));
  if (!info.exists)
    return fail(ENXIO, name + ": the dm device is gone; run dmu detach " + name + " to clean up");
  DMU_TRY(restore_metadata_loops(*state));
  DMU_ASSIGN_OR_RETURN(m.device, ServedDevice::open(*state));
  m.node = state->node();
  m.read_only = state->read_only;
  state->pid = ::getpid();
  state->supervisor = supervised ? ::getppid() : 0;
  DMU_TRY(write_state(*state));
  return m;
}

}  // namespace

int serve(const ServeOptions& options) {
  install_signals();
  std::vector<Member> members;
  for (const auto& name : options.names) {
    auto m = set_up(name, options.supervised);
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

  std::vector<pollfd> fds(members.size());
  for (size_t i = 0; i < members.size(); ++i) fds[i] = {members[i].device->fd(), POLLIN, 0};
  int rc = 0;
  auto last_stats = std::chrono::steady_clock::now();
  bool pushing = true;  // until every device's push is over
  std::vector<std::unique_ptr<StopFlush>> flushes;
  std::chrono::steady_clock::time_point flush_deadline;
  auto flushed = [&] {
    for (auto& f : flushes)
      if (!f->done()) return false;
    return true;
  };
  for (;;) {
    if (rc != 0) break;
    if (g_stop && flushes.empty()) {
      // Serve on until each device's flush has been committed (bounded).
      for (auto& m : members)
        if (!m.read_only) flushes.push_back(std::make_unique<StopFlush>(m.node));
      flush_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    }
    if (g_stop && (flushed() || std::chrono::steady_clock::now() >= flush_deadline)) break;
    // While a push is under way, poll only for what is waiting.
    int n = ::poll(fds.data(), fds.size(), pushing ? 0 : g_stop ? 50 : 500);
    if (n < 0 && errno != EINTR) {
      log_event(LogLevel::Error, "serve", errno_error("poll").message);
      rc = 1;
      break;
    }
    for (size_t i = 0; n > 0 && i < fds.size(); ++i) {
      if (!fds[i].revents) continue;
      // Drain what is queued now; new requests wake poll() again.
      for (;;) {
        auto r = members[i].device->serve_batch();
        if (!r) {
          log_event(LogLevel::Error, members[i].device->name(), r.error().message);
          rc = 1;
          break;
        }
        if (*r == 0) break;
      }
    }
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
