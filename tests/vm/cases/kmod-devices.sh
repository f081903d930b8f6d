#!/bin/sh
# The userspace wrappers against the real kernel: LoopDevice (LOOP_CONFIGURE,
# direct I/O, read-only, autoclear), DmDevice (libdevmapper without udev:
# create, node, status, message, remove) and ControlChannel against
# dm-userspace (BIND, MAP/EXTENT, partial writes, pushes, hand-over of
# unanswered requests).  Their host unit tests skip what needs these.
# vm: kernels=6.1,6.12 timeout=240 disks=256M boot=kmod-short
. /src/tests/kmod/vm-lib.sh

step "loop devices over a file on ext4 (direct I/O possible) and on tmpfs"
data_fs
for dir in /data /tmp; do
  TMPDIR=$dir loop_device_test --gtest_brief=1 >"/tmp/loop.$$.log" 2>&1 ||
    { cat "/tmp/loop.$$.log"; fail "loop_device_test with TMPDIR=$dir"; }
  grep -q SKIPPED "/tmp/loop.$$.log" && { cat "/tmp/loop.$$.log"; fail "loop_device_test skipped in the guest"; }
done

step "dm devices through libdevmapper without udev"
dm_device_test --gtest_brief=1 >/tmp/dm.log 2>&1 || { cat /tmp/dm.log; fail "dm_device_test"; }
grep -q SKIPPED /tmp/dm.log && { cat /tmp/dm.log; fail "dm_device_test skipped in the guest"; }

step "control channel against dm-userspace"
control_channel_kernel_test --gtest_brief=1 >/tmp/cc.log 2>&1 || { cat /tmp/cc.log; fail "control_channel_kernel_test"; }
grep -q SKIPPED /tmp/cc.log && { cat /tmp/cc.log; fail "control_channel_kernel_test skipped in the guest"; }
cat /tmp/cc.log | tail -3

step "nothing left behind"
[ -z "$(dmsetup ls | grep -v 'No devices found')" ] || { dmsetup ls; fail "dm devices left"; }
[ -z "$(losetup -a)" ] || { losetup -a; fail "loop devices left"; }
check_dmesg
step "ok"
