#!/bin/sh
# Smoke test of the VM harness and the module: the guest booted (or we would
# not be here), dm-userspace is loaded and registers the dm target
# "userspace", and device-mapper devices can be created, used and removed.
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
step "ok"
