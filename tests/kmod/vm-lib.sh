# Helpers shared by the kernel target's VM cases (tests/vm/cases/kmod-*.sh),
# sourced in the guest as . /src/tests/kmod/vm-lib.sh.  POSIX sh (dash).
. /usr/lib/dmu-test/lib.sh

# data_fs: ext4 on /dev/vda at /data.  Loop files live there because the
# guest's /tmp is tmpfs, which has no O_DIRECT on 6.1.
data_fs() {
  mkfs.ext4 -q -F -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 /dev/vda ||
    fail "mkfs.ext4 /dev/vda"
  mkdir -p /data
  mount -t ext4 /dev/vda /data || fail "mount /dev/vda /data"
}

# make_file PATH MIB [SOURCE]: MIB MiB copied from SOURCE (default zeros).
make_file() {
  dd if="${3:-/dev/zero}" of="$1" bs=1M count="$2" status=none || fail "create $1"
}

# loop_dio FILE: attaches FILE with direct I/O, prints /dev/loopN.
loop_dio() {
  _dev=$(losetup --direct-io=on -f --show "$1") || fail "losetup $1"
  [ "$(cat "/sys/block/${_dev#/dev/}/loop/dio")" = 1 ] || fail "$_dev: direct I/O is not in effect"
  echo "$_dev"
}

# loop_reads DEV: reads completed by /dev/loopN (field 1 of its stat).
loop_reads() {
  awk '{print $1}' "/sys/block/${1#/dev/}/stat"
}

# dmu_create NAME KEY BLOCK_SECTORS "OPTS" DEV...: the userspace target over
# DEV... with the size of the first one; OPTS is "" or "<n> <args>".
dmu_create() {
  _name=$1 _key=$2 _bs=$3 _opts=$4
  shift 4
  _sectors=$(blockdev --getsz "$1")
  _table="0 $_sectors userspace $_key $_bs $# $* $_opts"
  echo "$_table" | dmsetup create "$_name" || fail "dmsetup create $_name: $_table"
  dmsetup mknodes
  [ -b "/dev/mapper/$_name" ] || fail "no /dev/mapper/$_name"
}

# dmu_stat NAME FIELD: one key=value field of the target's status line.
dmu_stat() {
  dmsetup status "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"
}

# daemon_start LOG ARGS...: runs dmu-test-daemon ARGS in the background
# (stderr to LOG), sets DAEMON_PID, waits until it is serving.
daemon_start() {
  _log=$1
  shift
  touch "$_log"
  dmu-test-daemon "$@" 2>>"$_log" &
  DAEMON_PID=$!
  _i=0
  while ! grep -q "event=ready pid=$DAEMON_PID\$" "$_log"; do
    if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
      cat "$_log"
      fail "dmu-test-daemon $* exited before it was ready"
    fi
    _i=$((_i + 1))
    [ $_i -lt 600 ] || fail "dmu-test-daemon $* not ready after 60 s"
    sleep 0.1
  done
}

# daemon_stop LOG: SIGTERM; the daemon must exit 0 after printing counters.
daemon_stop() {
  kill -TERM "$DAEMON_PID"
  wait "$DAEMON_PID"
  _rc=$?
  [ $_rc = 0 ] || { tail -20 "$1"; fail "dmu-test-daemon exited with $_rc"; }
  grep -q "event=exit rc=0" "$1" || fail "dmu-test-daemon did not log a clean exit"
}

# daemon_report LOG: SIGUSR1; waits for the counters and extents lines.
daemon_report() {
  _n=$(grep -c "event=extents" "$1")
  kill -USR1 "$DAEMON_PID"
  _i=0
  while [ "$(grep -c "event=extents" "$1")" -le "$_n" ]; do
    _i=$((_i + 1))
    [ $_i -lt 300 ] || fail "dmu-test-daemon did not report"
    sleep 0.1
  done
}

# daemon_value LOG EVENT FIELD: FIELD of the last event=EVENT line.
daemon_value() {
  grep "event=$2 " "$1" | tail -1 | tr ' ' '\n' | sed -n "s/^$3=//p"
}

# expect_ge WHAT MIN ACTUAL / expect_gt WHAT BOUND ACTUAL
expect_ge() {
  [ -n "$3" ] && [ "$3" -ge "$2" ] || fail "$1: expected >= $2, got '$3'"
}
expect_gt() {
  [ -n "$3" ] && [ "$3" -gt "$2" ] || fail "$1: expected > $2, got '$3'"
}

# check_dmesg: no oops, warning or BUG from any part of the kernel.
check_dmesg() {
  if dmesg | grep -E "$KERNEL_PROBLEMS"; then
    fail "kernel log has an oops/warning/BUG (above)"
  fi
}

# wait_until SECONDS WHAT CMD...: runs CMD every 0.1 s until it succeeds;
# fails the case ("WHAT") if it has not after SECONDS.
wait_until() {
  _secs=$1 _what=$2
  shift 2
  _end=$(($(date +%s) + _secs))
  until "$@"; do
    [ "$(date +%s)" -lt "$_end" ] || fail "$_what (waited ${_secs} s)"
    sleep 0.1
  done
}

# read_block DEV BYTES INDEX: one direct read of block INDEX of size BYTES.
read_block() {
  dd if="$1" of=/dev/null bs="$2" skip="$3" count=1 iflag=direct status=none
}

# save_results NAME FILE...: copies files to /results/NAME/ for the host.
save_results() {
  _d=$DMU_RESULTS/$1
  shift
  mkdir -p "$_d" && cp "$@" "$_d/" 2>/dev/null
  return 0
}

# probe_serve LOG KEY [ARGS...]: runs `dmu-kmod-probe serve` (a daemon
# reading with a blocking read() in one thread and answering from another,
# identity mapping) in the background, sets PROBE_PID, waits until it is
# bound.
probe_serve() {
  _plog=$1 _pkey=$2
  shift 2
  touch "$_plog"
  dmu-kmod-probe serve --key "$_pkey" "$@" 2>>"$_plog" &
  PROBE_PID=$!
  _i=0
  until grep -q "event=ready pid=$PROBE_PID " "$_plog"; do
    kill -0 "$PROBE_PID" 2>/dev/null || { cat "$_plog"; fail "dmu-kmod-probe serve exited before it was ready"; }
    _i=$((_i + 1))
    [ $_i -lt 300 ] || fail "dmu-kmod-probe serve not ready after 30 s"
    sleep 0.1
  done
}

# probe_stop LOG: SIGTERM; the probe must exit 0 (no stalled write()).
probe_stop() {
  kill -TERM "$PROBE_PID"
  wait "$PROBE_PID"
  _rc=$?
  [ $_rc = 0 ] || { tail -20 "$1"; fail "dmu-kmod-probe serve exited with $_rc"; }
}
