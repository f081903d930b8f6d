# Sourced by /init and by guest/run-cases.sh (a shared boot loads the module
# again between cases, and watches each case): loading dm-userspace, what a
# hung case waits for, and the end of the run.  POSIX sh (dash).

# load_dmu: modprobe dm-userspace as every case expects it.  A debug kernel
# on a busy host can take longer than the default 30 s daemon_timeout to get
# one answer through; cases that test the timeout set it in their table
# line, which overrides this.
load_dmu() {
  _kmod_args=
  [ "${DMU_DEBUG_CHECKS:-0}" != 1 ] || _kmod_args=daemon_timeout=300
  # shellcheck disable=SC2086  # no argument or one
  modprobe dm-userspace $_kmod_args
}

# hang_report WHAT: "dmu-init: HANG: WHAT", then the blocked tasks with
# their stacks, the device-mapper, block-queue and loop state, interrupts
# and processes.  No sync: it would wait on the hang.
hang_report() {
  echo "dmu-init: HANG: $1"
  echo "dmu-init: blocked tasks (sysrq w):"
  echo w >/proc/sysrq-trigger 2>/dev/null
  sleep 2
  dmesg | sed -n '/sysrq: Show Blocked State/,$p' | tail -n 400
  echo "dmu-init: dmsetup status / table:"
  dmsetup status 2>&1
  dmsetup table 2>&1
  echo "dmu-init: requests in flight per block device (read write), blk-mq state:"
  for d in /sys/block/*; do echo "${d##*/}: $(cat "$d/inflight")"; done
  mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
  for q in /sys/kernel/debug/block/*; do
    [ "$(cat "$q/hctx0/busy" "$q/hctx0/dispatch" 2>/dev/null | wc -l)" -gt 0 ] || continue
    echo "${q##*/}: busy (owned by the driver) $(cat "$q"/hctx*/busy | wc -l), dispatch list $(cat "$q"/hctx*/dispatch | wc -l)"
    grep -H . "$q"/state "$q"/hctx*/state "$q"/hctx*/tags "$q"/sched/* "$q"/rqos/wbt/inflight 2>/dev/null |
      grep -v "_fifo_list:" | head -n 40
    cat "$q"/hctx*/busy | head -n 3
  done
  echo "dmu-init: interrupts:"
  cat /proc/interrupts
  echo "dmu-init: loop devices:"
  losetup -a 2>&1
  echo "dmu-init: processes:"
  ps 2>&1
}

# hang_end WHAT: the hang report (in the background and bounded: ps, losetup
# or dmsetup may block on the very hang they describe), status 93 for the
# host, and an immediate reset (QEMU runs with -no-reboot, so it exits): a
# power-off shuts devices down and can wait on the hang itself.
hang_end() {
  hang_report "$1" &
  _report=$!
  _i=0
  while kill -0 "$_report" 2>/dev/null && [ "$_i" -lt 40 ]; do
    sleep 1
    _i=$((_i + 1))
  done
  echo "@@DMU-RESULT rc=93@@"
  sleep 5   # the host reads QEMU's virtqueues meanwhile (boot-qemu.sh)
  echo b >/proc/sysrq-trigger
  poweroff -f
}
