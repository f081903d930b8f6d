// One line per event, naming the device (DESIGN.md, "Logs"): to stderr
// always, and to syslog as well when a syslog daemon listens on /dev/log (a
// minimal system has none; then stderr, which the background mapping process
// has redirected to /run/dmu/NAME.log, is the log).
#pragma once

#include <string>

namespace dmu::daemon {

enum class LogLevel { Info, Warning, Error };

// "dmu[pid]: NAME: message" on stderr (+ syslog).
void log_event(LogLevel level, const std::string& device, const std::string& message);

}  // namespace dmu::daemon
