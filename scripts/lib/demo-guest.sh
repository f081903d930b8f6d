#!/bin/sh
# The demo's guest side (run by scripts/demo.sh as a VM case on Debian's 6.12
# kernel): shows the module loaded and the dm target it provides, then serves
# a dm-userspace device from a raw image with the project's test daemon and
# uses it: mkfs, mount, write, read back, tear down.
# vm: kernels=6.12 timeout=300
. /usr/lib/dmu-test/lib.sh

step "kernel $(uname -r); device-mapper and dm-userspace are loaded:"
grep -E '^(dm_mod|dm_userspace) ' /proc/modules | cut -d' ' -f1,2
step "dm targets the kernel now knows (dmsetup targets):"
dmsetup targets

step "a 64 MiB raw image on the guest's tmpfs, attached to a loop device"
truncate -s 64M /tmp/disk.img
loop=$(losetup --find --show /tmp/disk.img) || fail "losetup"
echo "$loop -> /tmp/disk.img"

step "the test daemon serves key 'demo'; dm device 'demo' uses the userspace target"
# The daemon retries binding until the target with its key exists.
dmu-test-daemon --key demo --mode identity --bind-wait-ms 20000 2>/tmp/daemon.log &
daemon=$!
table="0 131072 userspace demo 8 1 $loop"
echo "table: $table"
echo "$table" | dmsetup create demo || { cat /tmp/daemon.log; fail "dmsetup create demo"; }
dmsetup mknodes
ls -l /dev/mapper/demo
dmsetup table demo

step "mkfs.ext4 on /dev/mapper/demo, mount it, write a file, read it back"
mkfs.ext4 -q -F /dev/mapper/demo || fail "mkfs.ext4"
mkdir -p /mnt && mount /dev/mapper/demo /mnt || fail "mount"
echo "hello from dm-userspace" >/mnt/hello.txt
umount /mnt && mount /dev/mapper/demo /mnt && cat /mnt/hello.txt
umount /mnt
e2fsck -fn /dev/mapper/demo >/dev/null && echo "e2fsck: clean"
step "status counters (dmsetup status demo):"
dmsetup status demo

step "tear down: device, daemon, loop device"
dmsetup remove demo || fail "dmsetup remove"
kill "$daemon" 2>/dev/null; wait "$daemon" 2>/dev/null
tail -n 3 /tmp/daemon.log
losetup --detach "$loop"
step "done"
