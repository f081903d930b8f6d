#!/bin/sh
# Table options and control-device details:
#  - BIND with another major version fails with EPROTO and writes the
#    kernel's version back (as dm-ioctl does);
#  - the device advertises the block size as minimum and optimal I/O size;
#  - one LIST_EXTENTS with room for more lists every cached extent (5000,
#    more than one internal chunk);
#  - writable_devs: devices past it are opened read-only (a read-only loop
#    device works) and a writable extent on one fails its bio;
#  - a read-only table writes no device, also for a writer that opened it
#    before a reload --readonly, through extents cached writable, and still
#    serves reads its daemon (bound before the reload) answers writable;
#  - discard_passdown: discarding blocks punches the data out of the file
#    behind the data device.
# vm: kernels=6.1,6.12 timeout=300 disks=256M boot=kmod-short
. /src/tests/kmod/vm-lib.sh
LOG=/tmp/serve.log

step "BIND with major $((2 + 1)): EPROTO, kernel version written back"
dmu-kmod-probe version || fail "version mismatch not reported as the header says"

data_fs
make_file /data/disk.img 64
LOOP=$(loop_dio /data/disk.img)
SZ=$(blockdev --getsz "$LOOP")

step "minimum_io_size and optimal_io_size are the block size (64 KiB)"
echo "0 $SZ userspace op1 128 1 $LOOP" | dmsetup create h || fail "create h"
dmsetup mknodes
dm=dm-$(dmsetup info -c --noheadings -o minor h)
expect_eq "minimum_io_size" 65536 "$(cat /sys/block/"$dm"/queue/minimum_io_size)"
expect_eq "optimal_io_size" 65536 "$(cat /sys/block/"$dm"/queue/optimal_io_size)"
dmsetup remove h || fail "remove h"

step "one LIST_EXTENTS lists all of 5000 pushed extents"
echo "0 $SZ userspace le1 8 1 $LOOP 2 max_extents 20000" | dmsetup create le || fail "create le"
dmsetup mknodes
dmu-kmod-probe list-extents --key le1 --count 5000 || fail "LIST_EXTENTS stopped early"
expect_eq "cached extents" 5000 "$(dmu_stat le extents)"
dmsetup remove le || fail "remove le"

step "writable_devs 1: device 1 is a read-only loop device"
make_file /data/base.img 8
RO=$(losetup -r -f --show /data/base.img) || fail "losetup -r"
echo "0 $SZ userspace wd1 8 2 $LOOP $RO 2 writable_devs 1" | dmsetup create wd ||
  fail "a read-only device past writable_devs was refused"
dmsetup mknodes
dmsetup table wd | grep -q "writable_devs 1" || fail "table does not print writable_devs"
probe_serve $LOG wd1
read_block /dev/mapper/wd 4096 3 || fail "read through dev 0"
probe_stop $LOG
dmsetup remove wd || fail "remove wd"
# writable_devs 0: the same daemon's writable answers on dev 0 are refused.
echo "0 $(blockdev --getsz "$RO") userspace wd2 8 2 $RO $LOOP 2 writable_devs 0" | dmsetup create wr ||
  fail "create wr"
dmsetup mknodes
probe_serve $LOG wd2
bad0=$(dmu_stat wr bad)
read_block /dev/mapper/wr 4096 3 2>/dev/null && fail "a writable extent on read-only device 0 was accepted"
expect_gt "rejected answers" "$bad0" "$(dmu_stat wr bad)"
dmesg | grep -q "writable extent on a read-only device" || fail "reason not logged"
probe_stop $LOG
dmsetup remove wr || fail "remove wr"
losetup -d "$RO"
# A read-only table writes no device whatever the daemon answers: BIND says
# no device is writable, plain reads are served, and so are reads answered
# with writable extents (a daemon bound before a reload --readonly answers
# so; the extent is cached read-only); the same table reloaded read-write
# takes writable extents again (writable_devs is kept).
echo "0 $SZ userspace ro1 8 1 $LOOP" | dmsetup create --readonly rt || fail "create --readonly rt"
dmsetup mknodes
daemon_start /tmp/ro.log --key ro1 --mode identity
grep -q "event=bind key=ro1 .*writable_devs=0" /tmp/ro.log ||
  { cat /tmp/ro.log; fail "BIND reports writable devices in a read-only table"; }
read_block /dev/mapper/rt 4096 3 || fail "a read through the read-only table"
daemon_stop /tmp/ro.log
dmsetup message rt 0 invalidate || fail "invalidate rt"
probe_serve $LOG ro1
bad0=$(dmu_stat rt bad)
read_block /dev/mapper/rt 4096 3 || fail "a read answered with a writable extent in a read-only table"
expect_eq "rejected answers in the read-only table" "$bad0" "$(dmu_stat rt bad)"
echo "0 $SZ userspace ro1 8 1 $LOOP" | dmsetup reload rt || fail "reload rt read-write"
dmsetup resume rt || fail "resume rt read-write"
read_block /dev/mapper/rt 4096 4 || fail "a writable extent after the reload read-write"
# Block 3 was answered writable under the read-only table and cached
# read-only: writing it now asks the daemon first.
r0=$(dmu_stat rt requests)
dd if=/dev/urandom of=/dev/mapper/rt bs=4096 seek=3 count=1 oflag=direct conv=notrunc status=none ||
  fail "a write to block 3 after the reload read-write"
expect_gt "requests after writing block 3 (cached read-only before)" "$r0" "$(dmu_stat rt requests)"
probe_stop $LOG
dmsetup remove rt || fail "remove rt"

step "reloaded read-only under a writer: no write reaches the device"
# A writer in the kernel (blkback, a file system, a dm device stacked on
# this one: here dm-linear) goes on writing after a reload --readonly (the
# block layer only warns), into blocks cached with writable extents.
echo "0 $SZ userspace ro2 8 1 $LOOP" | dmsetup create rw || fail "create rw"
dmsetup mknodes
daemon_start /tmp/ro2.log --key ro2 --mode identity --writable-reads
dd if=/dev/urandom of=/dev/mapper/rw bs=4096 count=8 oflag=direct conv=notrunc status=none ||
  fail "write blocks 0-7 (cached writable from now on)"
echo "0 $SZ linear /dev/mapper/rw 0" | dmsetup create top || fail "create top over rw"
dmsetup mknodes
echo "0 $SZ userspace ro2 8 1 $LOOP" | dmsetup reload --readonly rw || fail "reload rw read-only"
dmsetup resume rw || fail "resume rw read-only"
m1=$(dd if="$LOOP" bs=4096 count=8 iflag=direct status=none | md5sum)
m20=$(dd if="$LOOP" bs=4096 skip=20 count=1 iflag=direct status=none | md5sum)
bad0=$(dmu_stat rw bad)
# The daemon, bound before the reload, answers a read of block 20 (not
# cached) with a writable extent: the read is served, nothing refused.
[ "$(dd if=/dev/mapper/top bs=4096 skip=20 count=1 iflag=direct status=none | md5sum)" = "$m20" ] ||
  fail "a read of an uncached block through the read-only table, its daemon bound before the reload"
expect_eq "bad messages after the read" "$bad0" "$(dmu_stat rw bad)"
if dd if=/dev/urandom of=/dev/mapper/top bs=4096 count=1 seek=20 oflag=direct conv=notrunc \
  status=none 2>/dev/null; then
  fail "a write to block 20, read through the read-only table, succeeded"
fi
expect_eq "block 20 of the device after a write to the read-only table" "$m20" \
  "$(dd if="$LOOP" bs=4096 skip=20 count=1 iflag=direct status=none | md5sum)"
if dd if=/dev/urandom of=/dev/mapper/top bs=4096 count=1 seek=5 oflag=direct conv=notrunc \
  status=none 2>/tmp/ro-dd.err; then
  fail "a write through the read-only table succeeded"
fi
grep -q "Input/output error" /tmp/ro-dd.err || { cat /tmp/ro-dd.err; fail "the write failed, but not with EIO"; }
# Block 5 was cached writable: map() failed it, not a refused answer.
expect_eq "bad messages after the write" "$bad0" "$(dmu_stat rw bad)"
expect_eq "blocks 0-7 of the device after a write to the read-only table" "$m1" \
  "$(dd if="$LOOP" bs=4096 count=8 iflag=direct status=none | md5sum)"
dmsetup remove top || fail "remove top"
daemon_stop /tmp/ro2.log
dmsetup remove rw || fail "remove rw"

step "a discard answered after a reload --readonly passes nothing down"
# A discard over blocks cached writable reaches a daemon that holds its
# answer until /tmp/gate exists, and that daemon dies; a noflush suspend
# hands the discard back (map() fails it once the table is read-only), the
# table is reloaded read-only, and the next daemon answers the MAP it is
# sent again with COMPLETE 0: passing down the dropped extents' ranges now
# would punch their data out of the file behind the read-only table.
dd if=/dev/urandom of=/data/disk.img bs=1M count=64 conv=notrunc status=none
sync
touch /tmp/gate
echo "0 $SZ userspace rp1 8 1 $LOOP 3 discard_passdown daemon_timeout 120" | dmsetup create rp ||
  fail "create rp"
dmsetup mknodes
daemon_start /tmp/rp.log --key rp1 --mode identity --blocks 1024:256 --gate /tmp/gate
dd if=/dev/urandom of=/dev/mapper/rp bs=4096 seek=1024 count=256 oflag=direct conv=notrunc \
  status=none || fail "write blocks 1024-1279 (cached writable from now on)"
m_range=$(dd if="$LOOP" bs=4096 skip=1024 count=256 iflag=direct status=none | md5sum)
rm /tmp/gate
blkdiscard -o $((1024 * 4096)) -l $((256 * 4096)) /dev/mapper/rp 2>/dev/null &
dpid=$!
wait_until 60 "the discard's MAP never reached the daemon" grep -q "event=gate_wait .* discard" /tmp/rp.log
kill -KILL "$DAEMON_PID"
wait "$DAEMON_PID" 2>/dev/null
timeout 60 dmsetup suspend --noflush rp || fail "noflush suspend of rp with no daemon"
echo "0 $SZ userspace rp1 8 1 $LOOP 3 discard_passdown daemon_timeout 120" |
  dmsetup reload --readonly rp || fail "reload rp read-only"
dmsetup resume rp || fail "resume rp read-only"
if wait $dpid; then fail "a discard handed back to a read-only table succeeded"; fi
probe_serve $LOG rp1
pending_none() { [ "$(dmu_stat rp pending)" = 0 ]; }
wait_until 60 "the discard's MAP, sent again, was not answered" pending_none
probe_stop $LOG
# Removal waits for the work a discard's answer started (its passdown).
dmsetup remove rp || fail "remove rp"
expect_eq "blocks 1024-1279 of the file after a discard answered under the read-only table" \
  "$m_range" "$(dd if="$LOOP" bs=4096 skip=1024 count=256 iflag=direct status=none | md5sum)"

step "discard_passdown: discarded blocks leave holes in the file behind the loop device"
dd if=/dev/urandom of=/data/disk.img bs=1M count=64 conv=notrunc status=none
sync
echo "0 $SZ userspace dp1 8 1 $LOOP 1 discard_passdown" | dmsetup create dp || fail "create dp"
dmsetup mknodes
probe_serve $LOG dp1
dd if=/dev/mapper/dp of=/dev/null bs=1M count=16 iflag=direct status=none || fail "map 16 MiB"
before=$(stat -c %b /data/disk.img)
blkdiscard -o 0 -l $((16 << 20)) /dev/mapper/dp || fail "blkdiscard"
sync
after=$(stat -c %b /data/disk.img)
echo "file blocks: $before before, $after after"
[ $((before - after)) -ge $(((16 << 20) / 512 / 2)) ] ||
  fail "discarding 16 MiB freed only $(((before - after) * 512)) bytes of the file"
probe_stop $LOG
dmsetup remove dp || fail "remove dp"
losetup -d "$LOOP"
check_dmesg
step "ok"
