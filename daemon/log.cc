// Event log; see log.h.
#include "daemon/log.h"

#include <syslog.h>
#include <unistd.h>

#include <cstdio>
#include <ctime>
#include <mutex>

namespace dmu::daemon {

void log_event(LogLevel level, const std::string& device, const std::string& message) {
  static std::once_flag once;
  static bool use_syslog = false;
  std::call_once(once, [] {
    use_syslog = ::access("/dev/log", W_OK) == 0;
    if (use_syslog) ::openlog("dmu", LOG_PID, LOG_DAEMON);
  });
  const char* tag = level == LogLevel::Error ? "error: " : level == LogLevel::Warning ? "warning: " : "";
  std::time_t now = std::time(nullptr);
  char when[32];
  std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", std::gmtime(&now));
  // One fprintf per line so lines of the two threads never interleave.
  std::fprintf(stderr, "%s dmu[%d]: %s: %s%s\n", when, int(::getpid()), device.c_str(), tag,
               message.c_str());
  if (use_syslog) {
    int prio = level == LogLevel::Error ? LOG_ERR : level == LogLevel::Warning ? LOG_WARNING : LOG_INFO;
    ::syslog(prio, "%s: %s%s", device.c_str(), tag, message.c_str());
  }
}

}  // namespace dmu::daemon
