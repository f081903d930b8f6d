#!/bin/sh
# A guest flush's image commit does not stop the mapping process from
# answering reads of other blocks (daemon/served_device.h).  The qcow2
# file sits on a file system whose flushes dm-delay holds FLUSH_MS each,
# its data in an external data file on a fast one, so the guest's data
# flush is quick and the image commit (several fdatasyncs of the qcow2
# file) is slow.  While that commit runs, reads of blocks the kernel has
# not cached (misses, 16 MiB apart, beyond any read-ahead) must each be
# answered in well under one sync's time: before this change they waited
# for the whole commit.  A write that needs a fresh cluster, issued in the
# same window, is held until the commit ends and then lands.  Afterwards
# the image checks clean and reads as the device did.
# vm: kernels=6.1,6.12 timeout=600 mem=1024 disks=1G boot=attach-short
. /src/tests/kmod/vm-lib.sh
. /src/tests/vm/lib/guest/attach-lib.sh

FLUSH_MS=1500
MIB=1048576

step "/slow: ext4 on dm-delay (its flushes held $FLUSH_MS ms around the commit); /data: plain ext4"
modprobe dm-delay || fail "modprobe dm-delay"
data_fs
truncate -s 256M /data/slow.img
L=$(loop_dio /data/slow.img)
SZ=$(blockdev --getsz "$L")
# hold_flushes MS: /slow's flushes held MS ms from now on (a table reload
# under the mounted file system).  Not while it is made, mounted and torn
# down, which flush many times.
hold_flushes() {
  dmsetup suspend slow || fail "suspend /slow"
  echo "0 $SZ delay $L 0 0 $L 0 0 $L 0 $1" | dmsetup load slow
  _rc=$?
  dmsetup resume slow || fail "resume /slow"  # also after a failed load
  [ $_rc = 0 ] || fail "hold /slow's flushes $1 ms"
}
echo "0 $SZ delay $L 0 0 $L 0 0 $L 0 0" | dmsetup create slow || fail "create delay"
mkfs.ext4 -q -F -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 /dev/mapper/slow ||
  fail "mkfs.ext4 /dev/mapper/slow"
mkdir -p /slow && mount -t ext4 /dev/mapper/slow /slow || fail "mount /slow"

step "a 1 GiB qcow2 on /slow, its data file on /data, attached"
qemu-img create -q -f qcow2 -o data_file=/data/cw.data /slow/cw.qcow2 1G ||
  fail "qemu-img create"
dev=$(dmu attach --name cw /slow/cw.qcow2) || fail "dmu attach"
wait_until 20 "the mapping process finished its push" grep -q "pushed [0-9]* extents" /run/dmu/cw.log
# Misses from here on: the push filled the kernel's cache.
dmsetup message cw 0 invalidate || fail "invalidate"

step "fresh clusters written, then a flush: the commit has tables to write"
dd if=/dev/urandom of=/data/w.bin bs=1M count=2 status=none
dd if=/data/w.bin of="$dev" bs=1M count=2 oflag=direct conv=notrunc status=none ||
  fail "write 2 MiB"
hold_flushes $FLUSH_MS
runs0=$(daemon_counter cw commit-runs)
t0=$(now_ms)
dd if=/dev/zero of="$dev" bs=4k count=1 seek=1 oflag=direct conv=notrunc,fsync status=none &
flusher=$!

step "reads of uncached blocks while the commit runs"
# What the device shows goes into a sparse raw file, compared with the
# image at the end: these reads, and the written regions.
truncate -s 1G /data/shown.raw
sleep 0.5
n=0 worst=0 block=4
while kill -0 $flusher 2>/dev/null && [ $n -lt 40 ]; do
  t=$(now_ms)
  dd if="$dev" of=/data/shown.raw bs=4096 count=1 skip=$((block * MIB / 4096)) \
    seek=$((block * MIB / 4096)) iflag=direct conv=notrunc status=none || fail "read at $block MiB"
  took=$(($(now_ms) - t))
  [ "$took" -gt "$worst" ] && worst=$took
  n=$((n + 1)) block=$((block + 16))
  if [ $n = 3 ]; then  # a write that needs a fresh cluster, in the same window
    dd if=/data/w.bin of="$dev" bs=64k count=1 seek=$((512 * 16)) oflag=direct conv=notrunc \
      status=none &
    writer=$!
  fi
  sleep 0.2
done
wait $flusher || fail "the flush failed"
flush_ms=$(($(now_ms) - t0))
[ "$worst" -lt $((FLUSH_MS / 2)) ] ||
  fail "a read during the flush took $worst ms: it waited for the image commit"
[ -n "$writer" ] || fail "the flush ended before the third read: nothing was tested"
wait $writer || fail "the write issued during the commit failed"
sleep 1.5  # the mapping process rewrites its counters about once a second
commit_ms=$(($(daemon_counter cw commit-us-last) / 1000))
answered=$(daemon_counter cw answered-during-commit)
held=$(daemon_counter cw held-during-commit)
echo "flush took $flush_ms ms, the image commit $commit_ms ms; $n reads, the slowest $worst ms;" \
  "answered during commits: $answered, held: $held; commit runs: $runs0 -> $(daemon_counter cw commit-runs)"
expect_ge "the image commit took (ms) at least two held flushes" $((2 * FLUSH_MS)) "$commit_ms"
expect_ge "reads answered while a commit waited for the disk" 3 "$answered"
expect_ge "requests held until the commit ended (the write)" 1 "$held"
expect_eq "kernel timeouts" 0 "$(dmu_stat cw timeouts)"

step "the write landed; after detach the image checks clean and reads as the device did"
dd if="$dev" of=/data/back.bin bs=64k count=1 skip=$((512 * 16)) iflag=direct status=none
head -c 65536 /data/w.bin | cmp - /data/back.bin || fail "the write held during the commit is not there"
hold_flushes 0
# Where it was written (the first 2 MiB, the 64 KiB at 512 MiB), with some
# unwritten blocks around each.
for at in 0 512; do
  dd if="$dev" of=/data/shown.raw bs=1M count=4 skip=$at seek=$at iflag=direct conv=notrunc,sparse \
    status=none || fail "read cw at $at MiB"
done
dmu detach cw || fail "dmu detach cw"
qemu-img check -q /slow/cw.qcow2 || fail "qemu-img check"
# Everywhere else the image must read as zeros, like the raw file's holes.
qemu-img compare -q -f raw -F qcow2 /data/shown.raw /slow/cw.qcow2 ||
  fail "the image differs from what the device showed"
rm -f /data/shown.raw /data/cw.data
umount /slow && dmsetup remove slow && losetup -d "$L" || fail "tear down /slow"
check_dmesg
