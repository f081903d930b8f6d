# Guest-side helpers of the bench VMs (bench/attach/io-bench.sh,
# bench/rfc/copy-bench.sh), sourced after tests/kmod/vm-lib.sh (fail).
# POSIX sh (dash).

# nbd_up IMAGE: the qcow2 IMAGE on /dev/nbd0 through qemu-nbd (cache=none,
# aio=native: no page cache, as the loop devices under dmu).  qemu-nbd -c
# puts its socket in /var/lock (in the guest a link to /run/lock).
nbd_up() {
  mkdir -p /run/lock /var/lock 2>/dev/null
  qemu-nbd --fork --pid-file=/tmp/qemu-nbd.pid --cache=none --aio=native -f qcow2 -c /dev/nbd0 "$1" ||
    fail "qemu-nbd -c /dev/nbd0 $1"
  _i=0
  until [ "$(cat /sys/block/nbd0/size)" -gt 0 ]; do
    _i=$((_i + 1)); [ $_i -lt 300 ] || fail "/dev/nbd0 never got a size"; sleep 0.1
  done
}

# nbd_down: /dev/nbd0 disconnected and its qemu-nbd gone (the image unlocked).
nbd_down() {
  qemu-nbd -d /dev/nbd0 >/dev/null || fail "qemu-nbd -d /dev/nbd0"
  _i=0
  while kill -0 "$(cat /tmp/qemu-nbd.pid)" 2>/dev/null; do
    _i=$((_i + 1)); [ $_i -lt 300 ] || fail "qemu-nbd did not exit"; sleep 0.1
  done
}

# rotate N WORD...: the words, the first N moved to the end (each
# repetition starts with another device).
rotate() {
  _n=$(($1 % ($# - 1)))
  shift
  _head=
  while [ "$_n" -gt 0 ]; do _head="$_head $1"; shift; _n=$((_n - 1)); done
  echo "$@" $_head
}
