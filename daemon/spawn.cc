// Background dmu processes; see spawn.h.
#include "daemon/spawn.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

#include "mapper/unique_fd.h"

namespace dmu::daemon {

Result<pid_t> spawn_dmu(const std::string& program, const std::vector<std::string>& args,
                        const std::string& log, int ready_fd) {
  int log_fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (log_fd < 0) return fail(errno_error(log + ": open log"));
  UniqueFd log_file(log_fd);
  int null_fd = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null_fd < 0) return fail(errno_error("/dev/null"));
  UniqueFd dev_null(null_fd);
  // Built before fork: the child may only make async-signal-safe calls.
  std::vector<const char*> argv{"dmu"};
  for (const auto& a : args) argv.push_back(a.c_str());
  argv.push_back(nullptr);
  const long open_max = ::sysconf(_SC_OPEN_MAX);
  const int kept = ready_fd >= 0 ? 4 : 3;

  const pid_t pid = ::fork();
  if (pid < 0) return fail(errno_error("fork " + program));
  if (pid > 0) return pid;
  // The child: its own session (no terminal, no signals of the caller's
  // process group), stdout off the caller's pipes so $(dmu attach) ends.
  ::setsid();
  // Whatever the caller blocked or ignored (dmu-xen-helper blocks SIGTERM
  // and SIGCHLD for its signalfd) is not the new process's business.
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  ::signal(SIGHUP, SIG_DFL);
  // Copies above the wanted slots first (a caller started with stdin
  // closed has our log on 0), then into place (dup2 clears close-on-exec),
  // then everything else closed: the caller's other descriptors must not
  // leak into a process that may live for the guest's lifetime
  // (dmu-xen-helper's libxenstore (4.17) opens its watch pipe without
  // O_CLOEXEC; block-dmu holds its flock on an inherited descriptor).
  const int wanted[4] = {dev_null.get(), dev_null.get(), log_file.get(), ready_fd};
  int high[4];
  for (int i = 0; i < kept; ++i) {
    high[i] = ::fcntl(wanted[i], F_DUPFD, 4);
    if (high[i] < 0) ::_exit(127);
  }
  for (int i = 0; i < kept; ++i)
    if (::dup2(high[i], i) < 0) ::_exit(127);
  if (::close_range(unsigned(kept), ~0U, 0) != 0)  // ENOSYS before Linux 5.9
    for (int fd = kept; fd < open_max; ++fd) ::close(fd);
  ::execv(program.c_str(), const_cast<char* const*>(argv.data()));
  dprintf(kept == 4 ? 3 : 2, "error: exec %s: %s\n", program.c_str(), strerror(errno));
  ::_exit(127);
}

}  // namespace dmu::daemon
