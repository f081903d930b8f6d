#!/bin/sh
# /test.sh of a shared boot (run-case.sh --boot NAME A.sh B.sh ...): runs the
# cases in /cases/ (NN-name.sh, in the order given; NN-name.timeout holds
# each one's timeout) one after the other, each as /init would run it alone,
# and stops at the first that fails.  A boot under TCG costs about 12 s,
# more than many short cases take.
# Each case keeps its own timeout: a watchdog ends the run with the hang
# report (status 93) when the case outlives it.  Between two cases, and
# after the last, the case that left something behind fails, named: a
# process, a mount (but the file system on a disk, unmounted here, as
# power-off would), a dm or loop device, a /run/dmu record, a reference
# that keeps dm-userspace from unloading, or a kernel warning (the unload's
# "still has objects" among them).  Then the guest is put back as a fresh
# boot leaves it: dm-userspace loaded again, the kernel log cleared (a
# case's check_dmesg reads only its own), /tmp and /run/dmu emptied, the
# disks zeroed.
. /etc/dmu/run.conf
. /usr/lib/dmu-test/lib.sh
. /usr/lib/dmu-test/init-lib.sh

uptime_s() { cut -d' ' -f1 /proc/uptime; }

# user_pids: processes with a program (kernel threads have no exe link).
user_pids() {
  for _p in /proc/[0-9]*; do
    [ -e "$_p/exe" ] && echo "${_p#/proc/}"
  done 2>/dev/null
}
# ppid_of PID: its parent's pid (field 4 of /proc/PID/stat; our programs'
# names hold no spaces).
ppid_of() {
  read -r _ _ _ _pp _ <"/proc/$1/stat" 2>/dev/null && echo "$_pp"
}
mount_points() { awk '{print $2}' /proc/mounts | sort; }
# Taken before the first case: /init, its hang watcher, this shell; and the
# mounts /init made.
baseline=" $(user_pids | tr '\n' ' ') "
baseline_mounts=$(mount_points)

# nothing_left CASE: fails CASE (named) if it left a process, a mount, a dm
# or loop device, a /run/dmu record, a reference in dm-userspace (unloaded
# here) or a kernel warning.  Its processes are killed, its mounts undone
# where they can be, so the message names what was left.
nothing_left() {
  cd / || return 1
  _bad=0
  for _pid in $(user_pids); do
    case $baseline in *" $_pid "*) continue ;; esac
    if [ "$_pid" = $$ ] || [ ! -d "/proc/$_pid" ]; then continue; fi
    # A child of a baseline process other than init (the hang watcher's
    # sleep, forked after the baseline was taken) is not the case's.
    _pp=$(ppid_of "$_pid")
    if [ -n "$_pp" ] && [ "$_pp" != 1 ]; then
      case $baseline in *" $_pp "*) continue ;; esac
    fi
    echo "dmu-init: FAILED: $1 left process $_pid running: $(tr '\0' ' ' <"/proc/$_pid/cmdline" 2>/dev/null); killed"
    kill -9 "$_pid" 2>/dev/null
    _bad=1
  done
  sleep 0.2
  # The file system a case made on a disk (data_fs) stays mounted, as it
  # would at power-off: unmounted here, it must not be busy.  Any other
  # mount is the case's leftover.
  for _m in $(mount_points | sort -r); do
    echo "$baseline_mounts" | grep -qx "$_m" && continue
    if awk -v m="$_m" '$2 == m && $1 ~ "^/dev/vd" {found = 1} END {exit !found}' /proc/mounts; then
      umount "$_m" || { echo "dmu-init: FAILED: $1 left $_m mounted and busy"; return 1; }
      continue
    fi
    echo "dmu-init: FAILED: $1 left $_m mounted"
    _bad=1
    umount "$_m" || umount -l "$_m" || return 1
  done
  _left=$(dmsetup ls 2>&1) || { echo "dmu-init: dmsetup ls failed: $_left"; return 1; }
  _left=$(echo "$_left" | grep -v '^No devices found')
  [ -z "$_left" ] || { echo "dmu-init: FAILED: $1 left dm devices: $_left"; return 1; }
  _left=$(losetup -a 2>&1) || { echo "dmu-init: losetup -a failed: $_left"; return 1; }
  [ -z "$_left" ] || { echo "dmu-init: FAILED: $1 left loop devices: $_left"; return 1; }
  _left=$(ls /run/dmu/*.json 2>/dev/null)
  [ -z "$_left" ] || { echo "dmu-init: FAILED: $1 left dmu records: $_left"; return 1; }
  [ "$DMU_KMOD" != load ] || rmmod dm_userspace ||
    { echo "dmu-init: FAILED: dm-userspace does not unload after $1"; return 1; }
  if dmesg | grep -E "$KERNEL_PROBLEMS|still has objects"; then
    echo "dmu-init: FAILED: the kernel log has a warning after $1 (above)"
    return 1
  fi
  return $_bad
}

# fresh_guest: dm-userspace loaded again as /init loads it, the kernel log
# cleared, /tmp and /run/dmu empty, the disks zeroed.
fresh_guest() {
  if [ "$DMU_KMOD" = load ]; then
    load_dmu || { echo "dmu-init: FAILED to load dm-userspace again"; return 1; }
  fi
  dmesg -C
  rm -rf /tmp/* /tmp/.[!.]* /run/dmu 2>/dev/null
  for _d in /dev/vd[a-z]; do
    [ -b "$_d" ] || continue
    blkdiscard -z "$_d" 2>/dev/null ||
      dd if=/dev/zero of="$_d" bs=1M oflag=direct status=none 2>/dev/null
  done
  return 0
}

# run_one CASE_FILE NAME: the case in the background (stdin /dev/null, as
# none of them reads it), watched: past its timeout, the hang report and
# status 93 end the run.  Returns the case's status.
run_one() {
  _timeout=$(cat "${1%.sh}.timeout" 2>/dev/null || echo 300)
  _deadline=$(($(cut -d. -f1 /proc/uptime) + _timeout))
  (cd /tmp && exec /bin/sh "$1") &
  _case=$!
  (
    while kill -0 "$_case" 2>/dev/null; do
      # (Looked at again: a case that ended during the last second is no hang.)
      if [ "$(cut -d. -f1 /proc/uptime)" -ge "$_deadline" ] && kill -0 "$_case" 2>/dev/null; then
        hang_end "$2 still running at uptime $(uptime_s) s, past its timeout (${_timeout} s)"
      fi
      sleep 1
    done
  ) &
  _watchdog=$!
  wait "$_case"
  _rc=$?
  wait "$_watchdog"
  return $_rc
}

prev=
for c in /cases/*.sh; do
  name=${c##*/}
  name=${name#*-}
  name=${name%.sh}
  if [ -n "$prev" ]; then
    nothing_left "$prev" && fresh_guest || exit 1
  fi
  echo "dmu-init: running $name (uptime $(uptime_s) s)"
  run_one "$c" "$name"
  rc=$?
  [ "$rc" = 0 ] || { echo "dmu-init: $name FAILED with status $rc"; exit "$rc"; }
  echo "dmu-init: $name passed (uptime $(uptime_s) s)"
  prev=$name
done
[ -z "$prev" ] || nothing_left "$prev" || exit 1
