#!/bin/sh
# The demo's guest side (run by scripts/demo.sh as a VM case on Debian's 6.12
# kernel): a qcow2 image becomes /dev/mapper/demo with `dmu attach`; a file
# system is made and used on it; `dmu stats`, `dmsetup table` and
# `dmsetup status` show what the mapping process and the kernel did; `dmu
# detach` ends it and `qemu-img check` finds the image clean.
# vm: kernels=6.12 timeout=300 disks=1G
. /usr/lib/dmu-test/lib.sh

step "kernel $(uname -r); device-mapper and dm-userspace are loaded:"
grep -E '^(dm_mod|dm_userspace) ' /proc/modules | cut -d' ' -f1,2

step "a file system for the image (ext4 on the guest's disk /dev/vda)"
mkfs.ext4 -q -F /dev/vda || fail "mkfs.ext4 /dev/vda"
mkdir -p /data && mount /dev/vda /data || fail "mount /dev/vda"

step "an empty 512 MiB qcow2 image (qemu-img create)"
qemu-img create -f qcow2 /data/disk.qcow2 512M || fail "qemu-img create"

step "dmu attach /data/disk.qcow2"
dmu attach /data/disk.qcow2 || { tail /run/dmu/*.log; fail "dmu attach"; }
dmu list
echo "dmsetup table disk:"
dmsetup table disk

step "mkfs.ext4 on /dev/mapper/disk, mount it, write 20 MiB of files, read them back"
mkfs.ext4 -q /dev/mapper/disk || fail "mkfs.ext4"
mkdir -p /mnt && mount /dev/mapper/disk /mnt || fail "mount"
for i in 1 2 3 4; do
  dd if=/dev/urandom of=/mnt/file$i bs=1M count=5 status=none || fail "write file$i"
done
(cd /mnt && sha256sum file*) >/tmp/sums
umount /mnt && mount /dev/mapper/disk /mnt || fail "mount again"
(cd /mnt && sha256sum -c /tmp/sums) || fail "files differ"
umount /mnt
e2fsck -fn /dev/mapper/disk >/tmp/fsck.log 2>&1 || { cat /tmp/fsck.log; fail "e2fsck -fn /dev/mapper/disk"; }
echo "e2fsck: clean"

step "what the mapping process and the kernel did (dmu stats disk; dmsetup status disk)"
dmu stats disk
dmsetup status disk

step "dmu detach disk; the image as QEMU sees it"
dmu detach disk || fail "dmu detach"
[ ! -e /dev/mapper/disk ] || fail "/dev/mapper/disk is still there"
qemu-img check /data/disk.qcow2 || fail "qemu-img check"
qemu-img info /data/disk.qcow2 | grep -E 'file format|virtual size|disk size'
step "done"
