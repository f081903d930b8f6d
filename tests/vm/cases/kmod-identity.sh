#!/bin/sh
# The userspace target in identity mode over a direct-I/O loop device: fio
# random writes of 4k..1M with verify from several jobs, mkfs.ext4 + fsck -f
# clean, the cache (a second read asks nothing; invalidate makes the next one
# ask again), and pushed extents serving I/O without any request.
# vm: kernels=6.1,6.12 timeout=360 disks=256M boot=kmod-short
. /src/tests/kmod/vm-lib.sh
LOG=/tmp/daemon.log

step "loop device over a 64 MiB file on ext4, direct I/O"
data_fs
make_file /data/disk.img 64
LOOP=$(loop_dio /data/disk.img)
dmu_create u id1 8 "" "$LOOP"
expect_eq "target size" "$(blockdev --getsz "$LOOP")" "$(blockdev --getsz /dev/mapper/u)"
daemon_start $LOG --key id1 --mode identity --extent-blocks 16

step "fio randwrite 4k..1M, 3 jobs, verify"
fio --name=identity --filename=/dev/mapper/u --rw=randwrite --bsrange=4k-1M --numjobs=3 \
  --size=8M --offset_increment=20M --direct=1 --ioengine=libaio --iodepth=4 \
  --verify=crc32c --verify_fatal=1 --do_verify=1 --group_reporting >/tmp/fio.log 2>&1 ||
  { cat /tmp/fio.log; fail "fio with verify failed"; }
grep -q "err= 0" /tmp/fio.log || { cat /tmp/fio.log; fail "fio reported errors"; }
requests=$(dmu_stat u requests)
expect_gt "kernel requests after fio" 0 "$requests"
dmsetup status u

step "mkfs.ext4 (with discards), files, fsck -f clean"
mkfs.ext4 -q -F /dev/mapper/u || fail "mkfs.ext4 on the userspace target"
mkdir -p /mnt/u && mount -t ext4 /dev/mapper/u /mnt/u || fail "mount the userspace target"
dd if=/dev/urandom of=/mnt/u/file bs=1M count=8 status=none
sum=$(sha256sum </mnt/u/file)
umount /mnt/u
e2fsck -f -n /dev/mapper/u >/tmp/fsck.log 2>&1 || { cat /tmp/fsck.log; fail "fsck -f not clean"; }
mount -t ext4 -o ro /dev/mapper/u /mnt/u && expect_eq "file after remount" "$sum" "$(sha256sum </mnt/u/file)"
umount /mnt/u

step "cache: a second read asks nothing, invalidate makes it ask again"
# Block 16000 of 16384: fio and mkfs did not cover the same 64 KiB extent.
read_block /dev/mapper/u 4096 16001 || fail "read block 16001"
r1=$(dmu_stat u requests)
read_block /dev/mapper/u 4096 16001 || fail "read block 16001 again"
expect_eq "requests after a cached read" "$r1" "$(dmu_stat u requests)"
dmsetup message u 0 invalidate 16000 16 || fail "dmsetup message invalidate"
read_block /dev/mapper/u 4096 16001 || fail "read block 16001 after invalidate"
expect_gt "requests after invalidate + read" "$r1" "$(dmu_stat u requests)"
daemon_stop $LOG
expect_eq "daemon bad requests" 0 "$(daemon_value $LOG counters bad_requests)"
expect_eq "daemon rejected messages" 0 "$(daemon_value $LOG counters rejected)"
expect_gt "daemon DONE messages" 0 "$(daemon_value $LOG counters dones)"
expect_eq "DONE with errors" 0 "$(daemon_value $LOG counters done_errors)"
dmsetup remove u || fail "dmsetup remove u"

step "bounded cache: max_extents 16 evicts clean extents; reset_counters"
dmu_create b bound1 8 "2 max_extents 16" "$LOOP"
daemon_start $LOG --key bound1 --mode identity --extent-blocks 16
# 8 MiB in 64 KiB extents: 128 distinct extents through a cache of 16.
want=$(dd if="$LOOP" bs=64k count=128 iflag=direct status=none | sha256sum)
got=$(dd if=/dev/mapper/b bs=64k count=128 iflag=direct status=none | sha256sum)
expect_eq "bytes read through a cache of 16 extents" "$want" "$got"
cached=$(dmu_stat b extents)
[ "$cached" -le 16 ] || fail "cached extents $cached exceed max_extents 16"
expect_gt "evicted extents" 100 "$(dmu_stat b evicted)"
expect_gt "requests" 100 "$(dmu_stat b requests)"
dmsetup message b 0 reset_counters || fail "dmsetup message reset_counters"
for f in requests hits misses evicted; do
  expect_eq "$f after reset_counters" 0 "$(dmu_stat b $f)"
done
expect_eq "extents gauge survives reset_counters" "$cached" "$(dmu_stat b extents)"
daemon_stop $LOG
dmsetup remove b || fail "dmsetup remove b"

step "pushed extents serve reads and writes without requests"
dmu_create p push1 8 "" "$LOOP"
daemon_start $LOG --key push1 --mode identity --push-all --push-extent-blocks 512
pushed=$(daemon_value $LOG push extents)
expect_eq "pushed extents (64 MiB / 2 MiB)" 32 "$pushed"
expect_eq "listed as pushed right after the push" 32 "$(daemon_value $LOG extents pushed)"
expect_eq "none used yet" 0 "$(daemon_value $LOG extents pushed_used)"
r0=$(dmu_stat p requests)
fio --name=pushed --filename=/dev/mapper/p --rw=randrw --bs=4k --size=64M --io_size=4M \
  --direct=1 --ioengine=libaio --iodepth=4 >/tmp/fio2.log 2>&1 || { cat /tmp/fio2.log; fail "fio on pushed extents"; }
expect_eq "requests while I/O ran on pushed extents" "$r0" "$(dmu_stat p requests)"
expect_gt "kernel pushed_used" 0 "$(dmu_stat p pushed_used)"
daemon_report $LOG
expect_gt "daemon sees pushed extents used (LIST_EXTENTS)" 0 "$(daemon_value $LOG extents pushed_used)"
dmsetup status p
daemon_stop $LOG
dmsetup remove p || fail "dmsetup remove p"
losetup -d "$LOOP"
save_results kmod-identity $LOG /tmp/fio.log
check_dmesg
step "ok"
