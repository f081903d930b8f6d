// dmu-xen-helper: serves dom0's vbd backends whose targets are images
// (qcow:, qcow2:, vmdk:, raw:, dmu:) on block-dmu's behalf; see helper.h.
// One event loop (libxenstore runs a reader thread of its own, which is
// why children are started through daemon/spawn.h, async-signal-safe up
// to exec): a poll() over the xenstore watch descriptor and a signalfd,
// with the periodic work every --interval seconds.
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>

#include <boost/program_options.hpp>

#include "common/unique_fd.h"
#include "daemon/log.h"
#include "xen-helper/helper.h"

namespace po = boost::program_options;
using dmu::daemon::LogLevel;
using dmu::daemon::log_event;

namespace {

// The dmu binary beside ours (an installed pair, or a build tree), else
// the one on PATH's usual sbin.
std::string default_dmu() {
  std::error_code ec;
  auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    auto sibling = self.parent_path() / "dmu";
    if (::access(sibling.c_str(), X_OK) == 0) return sibling;
  }
  for (const char* p : {"/usr/local/sbin/dmu", "/usr/sbin/dmu", "/usr/local/bin/dmu", "/usr/bin/dmu"})
    if (::access(p, X_OK) == 0) return p;
  return "/usr/sbin/dmu";
}

}  // namespace

int main(int argc, char** argv) {
  po::options_description options(
      "dmu-xen-helper: attaches the image disks of Xen guests (block-dmu hands them over) with one "
      "dmu mapping process per domain, keeps debugging keys beside each vbd backend, and cleans up "
      "after domains that are gone.\nUsage: dmu-xen-helper [options]\noptions");
  // clang-format off
  options.add_options()
      ("help,h", "this text")
      ("dmu", po::value<std::string>()->default_value(default_dmu()), "the dmu program")
      ("interval", po::value<unsigned>()->default_value(5),
       "seconds between ticks (counter refreshes, withdrawals retried)")
      ("attach-timeout", po::value<unsigned>()->default_value(20),
       "seconds an attach waits for the domain's mapping process to bind a disk before it is "
       "refused; less when block-dmu's wait (29 s, its dmu/deadline key) ends sooner")
      ("hotplug-state", po::value<std::string>()->default_value("/run/dmu/hotplug"),
       "block-dmu's state directory (DMU_HOTPLUG_STATE of block-dmu)");
  // clang-format on
  po::variables_map vm;
  try {
    po::store(po::parse_command_line(argc, argv, options), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    std::fprintf(stderr, "dmu-xen-helper: %s (see --help)\n", e.what());
    return 1;
  }
  if (vm.count("help")) {
    std::cout << options << "\n";
    return 0;
  }
  dmu::xenhelper::HelperOptions ho;
  ho.dmu_program = vm["dmu"].as<std::string>();
  ho.hotplug_state = vm["hotplug-state"].as<std::string>();
  ho.attach_timeout = std::chrono::seconds(std::max(1u, vm["attach-timeout"].as<unsigned>()));
  const auto interval = std::chrono::seconds(std::max(1u, vm["interval"].as<unsigned>()));

  sigset_t set;
  sigemptyset(&set);
  for (int s : {SIGTERM, SIGINT, SIGCHLD}) sigaddset(&set, s);
  ::sigprocmask(SIG_BLOCK, &set, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
  ::signal(SIGHUP, SIG_IGN);
  dmu::UniqueFd signals(::signalfd(-1, &set, SFD_CLOEXEC));
  if (!signals.valid()) {
    std::perror("dmu-xen-helper: signalfd");
    return 1;
  }
  auto xs = dmu::xenhelper::XenStore::open();
  if (!xs) return log_event(LogLevel::Error, "dmu-xen-helper", xs.error().message), 1;
  auto xc = dmu::xenhelper::XenCtrl::open();
  if (!xc) return log_event(LogLevel::Error, "dmu-xen-helper", xc.error().message), 1;
  dmu::xenhelper::Helper helper(std::move(*xs), std::move(*xc), ho);
  if (auto s = helper.start(); !s)
    return log_event(LogLevel::Error, "dmu-xen-helper", s.error().message), 1;

  auto next_tick = std::chrono::steady_clock::now() + interval;
  for (;;) {
    pollfd fds[2] = {{helper.fileno(), POLLIN, 0}, {signals.get(), POLLIN, 0}};
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        next_tick - std::chrono::steady_clock::now());
    const int n = ::poll(fds, 2, int(std::max<long>(0, left.count())));
    if (n < 0 && errno != EINTR) {
      log_event(LogLevel::Error, "dmu-xen-helper", dmu::errno_error("poll").message);
      return 1;
    }
    if (n > 0 && fds[1].revents) {
      signalfd_siginfo si{};
      if (::read(signals.get(), &si, sizeof si) == ssize_t(sizeof si) &&
          (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT)) {
        helper.stop();
        log_event(LogLevel::Info, "dmu-xen-helper", "stopping; mapping processes keep running");
        return 0;
      }
      // Supervisors we started whose group ended: no zombies.
      while (::waitpid(-1, nullptr, WNOHANG) > 0) {
      }
    }
    if (n > 0 && fds[0].revents)
      for (const auto& path : helper.xs().fired()) helper.on_watch(path);
    if (std::chrono::steady_clock::now() >= next_tick) {
      helper.tick();
      next_tick = std::chrono::steady_clock::now() + interval;
    }
  }
}
