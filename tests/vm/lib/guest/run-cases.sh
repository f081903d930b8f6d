#!/bin/sh
# /test.sh of a shared boot (run-case.sh --boot NAME A.sh B.sh ...): runs the
# cases in /cases/ (NN-name.sh, in the order given) one after the other, each
# as /init would run it alone, and stops at the first that fails.  A boot
# under TCG costs about 12 s, more than many short cases themselves.
# Between two cases the guest is put back as a fresh boot leaves it, and
# what a case left behind fails it, named: file systems on the disks are
# unmounted (one still busy fails), no dm device or loop device may remain,
# dm-userspace must unload (a leaked target or extent reference keeps it
# in) and is loaded again, no /run/dmu record may remain, leftover processes
# are killed and named, /tmp and /run/dmu are emptied and the disks zeroed.
. /etc/dmu/run.conf

uptime_s() { cut -d' ' -f1 /proc/uptime; }

# user_pids: processes with a program (kernel threads have no exe link).
user_pids() {
  for _p in /proc/[0-9]*; do
    [ -e "$_p/exe" ] && echo "${_p#/proc/}"
  done 2>/dev/null
}
# Taken before the first case: /init, its hang watcher, this shell.
baseline=" $(user_pids | tr '\n' ' ') "

# nothing_left CASE: fails CASE (named) if it left a mounted file system of
# ours, a dm or loop device, a /run/dmu record, or a reference in
# dm-userspace (then unloaded); kills (and names) the processes it left.
nothing_left() {
  cd / || return 1
  for _pid in $(user_pids); do
    case $baseline in *" $_pid "*) continue ;; esac
    if [ "$_pid" = $$ ] || [ ! -d "/proc/$_pid" ]; then continue; fi
    echo "dmu-init: $1 left process $_pid running: $(tr '\0' ' ' <"/proc/$_pid/cmdline" 2>/dev/null); killed"
    kill -9 "$_pid" 2>/dev/null
  done
  sleep 0.2
  for _m in $(awk '$1 ~ "^/dev/(vd|mapper/|dm-|loop)" {print $2}' /proc/mounts | sort -r); do
    umount "$_m" || { echo "dmu-init: FAILED: $1 left $_m mounted and busy"; return 1; }
  done
  _left=$(dmsetup ls 2>/dev/null | grep -v '^No devices found')
  [ -z "$_left" ] || { echo "dmu-init: FAILED: $1 left dm devices: $_left"; return 1; }
  _left=$(losetup -a)
  [ -z "$_left" ] || { echo "dmu-init: FAILED: $1 left loop devices: $_left"; return 1; }
  _left=$(ls /run/dmu/*.json 2>/dev/null)
  [ -z "$_left" ] || { echo "dmu-init: FAILED: $1 left dmu records: $_left"; return 1; }
  [ "$DMU_KMOD" != load ] || rmmod dm_userspace ||
    { echo "dmu-init: FAILED: dm-userspace does not unload after $1"; return 1; }
}

# fresh_guest: dm-userspace loaded again as /init loads it, /tmp and
# /run/dmu empty, the disks zeroed.
fresh_guest() {
  if [ "$DMU_KMOD" = load ]; then
    _args=
    [ "${DMU_DEBUG_CHECKS:-0}" != 1 ] || _args=daemon_timeout=300
    # shellcheck disable=SC2086  # no argument or one
    modprobe dm-userspace $_args || { echo "dmu-init: FAILED to load dm-userspace again"; return 1; }
  fi
  rm -rf /tmp/* /tmp/.[!.]* /run/dmu 2>/dev/null
  for _d in /dev/vd[a-z]; do
    [ -b "$_d" ] || continue
    blkdiscard -z "$_d" 2>/dev/null ||
      dd if=/dev/zero of="$_d" bs=1M oflag=direct status=none 2>/dev/null
  done
  return 0
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
  (cd /tmp && exec /bin/sh "$c")
  rc=$?
  [ "$rc" = 0 ] || { echo "dmu-init: $name FAILED with status $rc"; exit "$rc"; }
  echo "dmu-init: $name passed (uptime $(uptime_s) s)"
  prev=$name
done
# The last case is held to the same: nothing left behind.
[ -z "$prev" ] || nothing_left "$prev" || exit 1
