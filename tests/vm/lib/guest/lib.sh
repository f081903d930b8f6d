# Helpers a test case may source in the guest: . /usr/lib/dmu-test/lib.sh
# Plain POSIX sh (the guest's /bin/sh is dash).

# What in the kernel log is a problem whatever the case: an oops, a warning,
# a BUG (check_dmesg in tests/kmod/vm-lib.sh, and guest/run-cases.sh).
# shellcheck disable=SC2034  # used by the scripts that source this
KERNEL_PROBLEMS="Oops|WARNING:|BUG[: ]|general protection|Call Trace|kernel BUG"

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
