# Helpers a test case may source in the guest: . /usr/lib/dmu-test/lib.sh
# Plain POSIX sh (the guest's /bin/sh is dash).

# now_ms: milliseconds since boot (busybox date has no %N).
now_ms() {
  awk '/^now at/{print int($3/1e6); exit}' /proc/timer_list
}

# step MSG: a progress line with the time since boot, so slow steps stand out.
step() {
  echo "--- [$(cut -d' ' -f1 /proc/uptime)s] $*"
}

# fail MSG: report and end the case with status 1.
fail() {
  echo "FAIL: $*"
  exit 1
}

# expect_eq WHAT EXPECTED ACTUAL
expect_eq() {
  [ "$2" = "$3" ] || fail "$1: expected '$2', got '$3'"
}
