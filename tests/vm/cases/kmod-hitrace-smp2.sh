#!/bin/sh
# The lock-free hit path (kmod/README.md, "Hit-path locking") under real
# concurrency: two vCPUs, a fully cached device, two fio jobs verifying
# (reads only: nearly all hits without the lock) while a loop drops and
# splits extents with small drained invalidates and reads the status.  No
# verify error, no kernel report, the device still reads as its data file.
# Also on two vCPUs: two threads BIND two keys on one fd at once, again and
# again; exactly one may win each time, and both devices stay usable and
# removable (a second winner would be left bound to a freed channel).
# vm: kernels=6.1,6.12 smp=2 timeout=420 disks=256M
. /src/tests/kmod/vm-lib.sh
LOG=/tmp/daemon.log
echo "guest cpus: $(grep -c ^processor /proc/cpuinfo)"
step "setup"
data_fs
make_file /data/disk.img 64
LOOP=$(loop_dio /data/disk.img)
dmu_create u hr2 8 "" "$LOOP"
daemon_start $LOG --key hr2 --mode identity --extent-blocks 64
JOB="--filename=/dev/mapper/u --rw=randwrite --bs=4k --numjobs=2 --size=24M --offset_increment=32M --direct=1 --ioengine=libaio --iodepth=32 --verify=crc32c --verify_fatal=1 --randrepeat=1 --group_reporting"
step "write the pattern"
fio --name=w $JOB --do_verify=0 >/tmp/fiow.log 2>&1 || { cat /tmp/fiow.log; fail "fio write"; }
dmsetup message u 0 reset_counters

stress() {
  i=0
  while [ ! -e /tmp/stop ]; do
    b=$(( (i * 2741) % 16300 ))
    n=$(( 1 + (i % 23) ))
    dmsetup message u 0 invalidate $b $n || echo "invalidate failed $b $n" >>/tmp/inv.err
    i=$((i + 1))
    [ $((i % 25)) = 0 ] && dmsetup status u >/dev/null
  done
  echo $i >/tmp/inv.count
}
step "verify_only x6 against the invalidate loop"
rm -f /tmp/stop
stress &
SPID=$!
for r in 1 2 3 4 5 6; do
  fio --name=w $JOB --verify_only >/tmp/fiov.log 2>&1 || { cat /tmp/fiov.log; touch /tmp/stop; fail "fio verify_only round $r"; }
  grep -q "err= 0" /tmp/fiov.log || { cat /tmp/fiov.log; touch /tmp/stop; fail "fio errors round $r"; }
done
touch /tmp/stop
wait $SPID
echo "invalidate iterations: $(cat /tmp/inv.count)"
[ -s /tmp/inv.err ] && { cat /tmp/inv.err; fail "invalidate messages failed"; }
grep -E "IOPS" /tmp/fiov.log | head -2
dmsetup status u
expect_gt "hits" 10000 "$(dmu_stat u hits)"
a=$(dd if=/dev/mapper/u bs=1M iflag=direct status=none | sha256sum)
bb=$(dd if="$LOOP" bs=1M iflag=direct status=none | sha256sum)
expect_eq "identity bytes" "$bb" "$a"
daemon_stop $LOG
dmsetup remove u || fail "dmsetup remove u"
losetup -d "$LOOP"

step "two BINDs racing on one fd: one wins"
make_file /data/b1.img 4
make_file /data/b2.img 4
B1=$(loop_dio /data/b1.img)
B2=$(loop_dio /data/b2.img)
dmu_create b1 br1 8 "2 daemon_timeout 5" "$B1"
dmu_create b2 br2 8 "2 daemon_timeout 5" "$B2"
dmu-kmod-probe bind-race --key br1 --key2 br2 --count 400 2>/tmp/race.log ||
  { cat /tmp/race.log; fail "bind-race"; }
cat /tmp/race.log
for n in 1 2; do
  daemon_start /tmp/b$n.log --key br$n --mode identity
  dd if=/dev/mapper/b$n of=/dev/null bs=4096 count=16 iflag=direct status=none || fail "read b$n after the race"
  daemon_stop /tmp/b$n.log
  dmsetup remove b$n || fail "dmsetup remove b$n"
done
losetup -d "$B1" "$B2"
check_dmesg
step "ok"
