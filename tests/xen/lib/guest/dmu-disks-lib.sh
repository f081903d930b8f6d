# dom0 helpers for Xen cases whose guests' disks dmu serves through block-dmu
# (POSIX sh, dash): . /src/tests/xen/lib/guest/dmu-disks-lib.sh
#
# Guest and dom0 talk through the disk itself: a short text in the disk's last
# sector, written with O_DIRECT on one side (the guest's /dev/xvdX, or dom0's
# /dev/mapper node of that disk) and polled with O_DIRECT on the other.

MiB=1048576

# The helpers both sides use; guest_script puts them into each domU script.
dmu_disk_helpers='
# pattern_sum BYTE_OCTAL: sha256 of 1 MiB of that byte.
pattern_sum() { head -c 1048576 /dev/zero | tr "\0" "\\$1" | sha256sum | cut -d" " -f1; }
# last_sector DISK: the index of its last 512-byte sector.
last_sector() { echo $(( $(blockdev --getsize64 "$1") / 512 - 1 )); }
# mark DISK TEXT: writes TEXT into the last sector of DISK.
mark() {
  { echo "$2"; head -c $((511 - ${#2})) /dev/zero; } |
    dd of="$1" bs=512 seek="$(last_sector "$1")" count=1 oflag=direct conv=fsync 2>/dev/null ||
    fail "mark $2 on $1"
}
# has_mark DISK TEXT: the last sector of DISK holds TEXT.
has_mark() {
  dd if="$1" bs=512 skip="$(last_sector "$1")" count=1 iflag=direct 2>/dev/null | grep -q "^$2\$"
}
# await_mark DISK TEXT: waits up to 300 s for TEXT in the last sector of DISK.
await_mark() {
  _t=0
  until has_mark "$1" "$2"; do
    [ $_t -lt 300 ] || fail "no mark $2 on $1 within 300 s"
    sleep 1; _t=$((_t + 1))
  done
  step "mark $2 read from $1"
}
'
eval "$dmu_disk_helpers"
say() { mark "$@"; }

# dom0_state: what an investigation needs when a case fails in dom0.
dom0_state() {
  echo "--- dom0 state: dmsetup ls; ls /dev/mapper; losetup -a; dmu list; /run/dmu; block-dmu.log"
  dmsetup ls; ls -l /dev/mapper; losetup -a; dmu list; ls -la /run/dmu /run/dmu/hotplug
  tail -n 40 /var/log/xen/block-dmu.log 2>/dev/null
  for _l in /run/dmu/*.log /var/log/xen/console/guest-*.log; do
    [ -f "$_l" ] && { echo "--- $_l"; tr -d '\r' <"$_l" | tail -n 20; }
  done
  echo "---"
}

# A dom0-side await_mark that shows the state when it gives up.
await_mark() {
  _t=0
  until has_mark "$1" "$2"; do
    [ $_t -lt 300 ] || { dom0_state; fail "no mark $2 on $1 within 300 s"; }
    if [ ! -b "$1" ]; then dom0_state; fail "$1 disappeared while waiting for mark $2"; fi
    sleep 1; _t=$((_t + 1))
  done
  step "mark $2 read from $1"
}

# guest_script OUT: writes a domU script: the helpers above, has, reads,
# writes, then the lines on stdin.
guest_script() {
  {
    echo '. /usr/lib/dmu-test/lib.sh'
    printf '%s\n' "$dmu_disk_helpers"   # not echo: dash's echo would eat the backslashes
    cat <<'EOT'
# has DISK SIZE: DISK exists with SIZE bytes.
has() { [ -b "$1" ] || fail "no $1"; expect_eq "size of $1" "$2" "$(blockdev --getsize64 "$1")"; }
# reads DISK MIB SUM: MiB number MIB of DISK has sha256 SUM.
reads() {
  expect_eq "$1 MiB $2" "$3" "$(dd if="$1" bs=1048576 skip="$2" count=1 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
}
# writes DISK MIB BYTE_OCTAL: fills MiB number MIB of DISK with that byte.
writes() {
  head -c 1048576 /dev/zero | tr '\0' "\\$3" | dd of="$1" bs=1048576 seek="$2" oflag=direct conv=fsync 2>/dev/null ||
    fail "write to $1 at MiB $2"
}
EOT
    cat
  } >"$1"
}

# image_sum IMAGE MIB: sha256 of MiB number MIB of the image's guest view.
image_sum() {
  qemu-img convert -U -O raw "$1" /tmp/view.raw || fail "qemu-img convert $1"
  dd if=/tmp/view.raw bs=$MiB skip="$2" count=1 2>/dev/null | sha256sum | cut -d' ' -f1
  rm -f /tmp/view.raw
}

# check_clean IMAGE [TOOL]: TOOL (qemu-img; dmu for qcow v1, which qemu-img
# cannot check) finds IMAGE clean.
check_clean() {
  "${2:-qemu-img}" check "$1" >/tmp/check.out 2>&1 || { cat /tmp/check.out; fail "${2:-qemu-img} check $1"; }
  echo "${2:-qemu-img} check $1: clean"
}

# mapping_shown DOMAIN DEVID IMAGE FORMAT: xenstore, dmsetup and dmu show the
# mapping of DOMAIN's disk DEVID; prints the /dev/mapper node.
mapping_shown() {
  _be=/local/domain/0/backend/vbd/$(xl domid "$1")/$2
  xenstore-ls -f "$_be" | grep -E 'params|physical-device|hotplug-status|/dmu/' | sed 's/^/  /' >&2
  expect_eq "$1/$2 hotplug-status" connected "$(xenstore-read "$_be/hotplug-status")"
  _node=$(xenstore-read "$_be/physical-device-path")
  case $_node in /dev/mapper/xen-vbd-*) ;; *) fail "$1/$2: physical-device-path $_node is not a dmu device" ;; esac
  expect_eq "$1/$2 physical-device" "$(stat -L -c '%t:%T' "$_node")" "$(xenstore-read "$_be/physical-device")"
  expect_eq "$1/$2 dmu/image" "$3" "$(xenstore-read "$_be/dmu/image")"
  expect_eq "$1/$2 dmu/format" "$4" "$(xenstore-read "$_be/dmu/format")"
  dmsetup table "${_node#/dev/mapper/}" | sed 's/^/  table: /' >&2
  dmsetup table "${_node#/dev/mapper/}" | grep -q ' userspace ' || fail "$_node is not a userspace target"
  dmu list | grep -q "${_node#/dev/mapper/}" || fail "dmu list does not show $_node"
  echo "$_node"
}

# dmu_procs: pids of mapping processes and supervisors (dom0 has no pgrep).
dmu_procs() {
  for _p in /proc/[0-9]*; do
    case $(cat "$_p/comm" 2>/dev/null) in dmu | dmu-supervise) echo "${_p#/proc/}" ;; esac
  done
}

# nothing_left: within 20 s no dmu device, loop device, process or state remains.
nothing_left() {
  _t=0
  while [ $_t -lt 40 ]; do
    [ -z "$(dmsetup ls 2>/dev/null | grep xen-vbd-)" ] && [ -z "$(losetup -a)" ] &&
      [ -z "$(dmu_procs)" ] && [ -z "$(ls /run/dmu/*.json 2>/dev/null)" ] &&
      [ -z "$(ls -A /run/dmu/hotplug 2>/dev/null | grep -v '^lock$')" ] && return 0
    sleep 0.5; _t=$((_t + 1))
  done
  echo "dmu processes: $(dmu_procs)"; dom0_state
  fail "something of the domain's disks was left behind"
}
