// Background dmu processes; see spawn.h.
#include "daemon/spawn.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <string>

#include "common/unique_fd.h"

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
  const std::string exec_error = "error: exec " + program + " failed (errno ";
  const int kept = ready_fd >= 0 ? 4 : 3;

  const pid_t pid = ::fork();
  if (pid < 0) return fail(errno_error("fork " + program));
  if (pid > 0) return pid;
  // The child: its own session (no terminal, no signals of the caller's
  // process group), stdout off the caller's pipes so $(dmu attach) ends.
  ::setsid();
  // Whatever the caller blocked or ignored (dmu-xen-helper blocks SIGTERM
  // and SIGCHLD for its signalfd) is not the new process's business: a
  // supervisor with SIGCHLD ignored would never learn its child died.
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig)
    if (sig != SIGKILL && sig != SIGSTOP) (void)::sigaction(sig, &dfl, nullptr);
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
  // Only write() from here: the caller may have threads (libxenstore's),
  // so nothing that may take a lock (stdio, strerror's locale).
  const int err = errno;
  char digits[16];
  int n = 0;
  for (int e = err > 0 ? err : 0; n == 0 || e > 0; e /= 10) digits[n++] = char('0' + e % 10);
  const int out = kept == 4 ? 3 : 2;  // attach reads the ready pipe for "error: "
  (void)!::write(out, exec_error.data(), exec_error.size());
  while (n > 0) (void)!::write(out, &digits[--n], 1);
  (void)!::write(out, ")\n", 2);
  ::_exit(127);
}

}  // namespace dmu::daemon
