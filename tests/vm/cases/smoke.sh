#!/bin/sh
# Smoke test of the VM harness and the module: the guest booted (or we would
# not be here), dm-userspace is loaded and registers the dm target
# "userspace", a plain dm device works, and a "userspace" device served by the
# test daemon (identity mapping) can be created, written, read and removed.
# vm: kernels=6.1,6.12 timeout=180 disks=64M
. /usr/lib/dmu-test/lib.sh

step "kernel $(uname -r), line $DMU_KERNEL_LINE"
expect_eq "kernel line" "$DMU_KERNEL_LINE" "$(uname -r | cut -d. -f1-2 | sed 's/^6\.1\.0-.*/6.1/')"

step "dm-userspace is loaded and provides the target 'userspace'"
grep -q '^dm_userspace ' /proc/modules || fail "dm_userspace not in /proc/modules"
dmsetup targets | tee /tmp/targets
grep -q '^userspace ' /tmp/targets || fail "dmsetup targets does not list 'userspace'"

step "a dm device over the virtio disk can be created, written, read and removed"
sectors=$(blockdev --getsz /dev/vda)
expect_eq "disk sectors" 131072 "$sectors"
echo "0 $sectors linear /dev/vda 0" | dmsetup create smoke || fail "dmsetup create smoke"
dmsetup mknodes
[ -b /dev/mapper/smoke ] || fail "no /dev/mapper/smoke after dmsetup mknodes"
dd if=/dev/urandom of=/tmp/pattern bs=4096 count=16 2>/dev/null
dd if=/tmp/pattern of=/dev/mapper/smoke bs=4096 seek=100 oflag=direct conv=fsync 2>/dev/null ||
  fail "write to /dev/mapper/smoke"
dd if=/dev/vda of=/tmp/back bs=4096 skip=100 count=16 iflag=direct 2>/dev/null
cmp /tmp/pattern /tmp/back || fail "data written through the dm device is not on /dev/vda"
dmsetup remove smoke || fail "dmsetup remove smoke"
[ ! -e /dev/mapper/smoke ] || fail "/dev/mapper/smoke still exists after remove"

step "a userspace device over the disk, served by dmu-test-daemon in identity mode"
dmu-test-daemon --key smoke --mode identity --bind-wait-ms 20000 2>/tmp/daemon.log &
daemon=$!
echo "0 $sectors userspace smoke 8 1 /dev/vda" | dmsetup create dmu-smoke ||
  { cat /tmp/daemon.log; fail "dmsetup create dmu-smoke (userspace target)"; }
dmsetup mknodes
dd if=/dev/urandom of=/tmp/pattern2 bs=4096 count=16 2>/dev/null
dd if=/tmp/pattern2 of=/dev/mapper/dmu-smoke bs=4096 seek=300 oflag=direct conv=fsync 2>/dev/null ||
  { cat /tmp/daemon.log; fail "write to /dev/mapper/dmu-smoke"; }
dd if=/dev/vda of=/tmp/back2 bs=4096 skip=300 count=16 iflag=direct 2>/dev/null
cmp /tmp/pattern2 /tmp/back2 || fail "identity-mapped write is not at the same offset of /dev/vda"
dd if=/dev/mapper/dmu-smoke of=/tmp/back3 bs=4096 skip=100 count=16 iflag=direct 2>/dev/null
cmp /tmp/pattern /tmp/back3 || fail "reading /dev/mapper/dmu-smoke does not return what /dev/vda holds"
dmsetup status dmu-smoke
dmsetup remove dmu-smoke || fail "dmsetup remove dmu-smoke"
kill "$daemon" 2>/dev/null
wait "$daemon" 2>/dev/null
[ ! -e /dev/mapper/dmu-smoke ] || fail "/dev/mapper/dmu-smoke still exists after remove"
step "ok"
