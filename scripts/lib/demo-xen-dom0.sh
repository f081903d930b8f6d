#!/bin/sh
# The Xen demo's dom0 side (run by scripts/demo.sh as a Xen case: Xen 4.17 and
# Debian's 6.12 kernel as dom0, under QEMU): a PV guest whose disk is a qcow2
# file, served by dmu through blkback. Shows the disk line, what xenstore,
# dmsetup and dmu show while the guest runs, the guest using its file system,
# xl destroy, nothing left behind, qemu-img check, and the guest's file read
# back out of the image.
# xen: timeout=900
. /usr/lib/dmu-test/lib.sh
. /usr/lib/dmu-test/xen.sh
. /src/tests/xen/lib/guest/dmu-disks-lib.sh

step "Xen is up: xl list"
xl list

step "a qcow2 image with an ext4 file system holding one file (mke2fs -d, qemu-img convert)"
mkdir -p /tmp/rootdir && echo "hello from dom0, $(date -u)" >/tmp/rootdir/hello.txt
truncate -s 256M /tmp/fs.raw && mke2fs -q -t ext4 -d /tmp/rootdir /tmp/fs.raw || fail "mke2fs"
qemu-img convert -O qcow2 /tmp/fs.raw /vm/guest.qcow2 && rm /tmp/fs.raw || fail "qemu-img convert"
qemu-img info /vm/guest.qcow2 | sed 's/^/  /'

disk='vdev=xvda,access=w,backendtype=phy,script=block-dmu,target=qcow2:/vm/guest.qcow2'
guest_script /tmp/demo-guest.sh <<'EOT'
step "domU $(uname -r): /dev/xvda is $(blockdev --getsize64 /dev/xvda) bytes; mounting it"
# busybox's mount loads nothing; ext4 asks the crypto API for crc32c.
modprobe crc32c_generic && modprobe ext4 || fail "modprobe ext4"
mkdir -p /mnt && mount -t ext4 /dev/xvda /mnt || fail "mount /dev/xvda"
echo "  /mnt/hello.txt: $(cat /mnt/hello.txt)"
echo "written by the guest on its qcow2 disk" >/mnt/guest.txt
dd if=/dev/urandom of=/mnt/random.bin bs=1M count=8 2>/dev/null || fail "write random.bin"
sum=$(sha256sum </mnt/random.bin | cut -d' ' -f1)
umount /mnt || fail "umount"
mount -t ext4 -o ro /dev/xvda /mnt || fail "mount again"
expect_eq "random.bin after remount" "$sum" "$(sha256sum </mnt/random.bin | cut -d' ' -f1)"
ls -l /mnt
umount /mnt
step "domU: wrote /guest.txt and 8 MiB of random data, read them back after a remount"
mark /dev/xvda guest-done
sleep 600   # until dom0 destroys the domain
EOT

step "xl create: the guest's config has this disk line"
echo "  disk = [ '$disk' ]"
domu_start demo /tmp/demo-guest.sh "$disk" || fail "xl create demo"
node=$(mapping_shown demo 51712 /vm/guest.qcow2 qcow2 2>/dev/null) || exit 1
name=${node#/dev/mapper/}
step "xenstore-ls of the disk's backend (blkback reads physical-device; dmu/ is ours)"
xenstore-ls -f "/local/domain/0/backend/vbd/$(xl domid demo)/51712" | grep -E 'params|mode|physical-device|hotplug-status|dmu/' | sed 's/^/  /'
step "dmsetup table $name, and dmu list"
dmsetup table "$name" | sed 's/^/  /'
dmu list | sed 's/^/  /'

step "waiting for the guest to use its disk"
await_mark "$node" guest-done
tr -d '\r' <"$(domu_console demo)" | grep -E 'domU|hello.txt|guest.txt|random.bin' | sed 's/^/  [demo] /'
step "dmu stats $name (the mapping process and the kernel's counters)"
dmu stats "$name" | sed 's/^/  /'

step "xl destroy demo"
xl destroy demo || fail "xl destroy"
nothing_left
echo "  no dm device, loop device, dmu process or state is left: dmsetup ls: $(dmsetup ls | tr '\n' ' ')"
step "qemu-img check /vm/guest.qcow2"
qemu-img check /vm/guest.qcow2 || fail "qemu-img check"
step "the guest's file, read out of the image (qemu-img convert + debugfs)"
qemu-img convert -O raw /vm/guest.qcow2 /tmp/fs.raw || fail "convert"
echo "  guest.txt: $(debugfs -R 'cat /guest.txt' /tmp/fs.raw 2>/dev/null)"
debugfs -R 'cat /guest.txt' /tmp/fs.raw 2>/dev/null | grep -q 'written by the guest' || fail "guest.txt not in the image"
step "demo done"
