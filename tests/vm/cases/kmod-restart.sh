#!/bin/sh
# A daemon killed with -9 under load and replaced within the timeout causes
# zero I/O errors: fio with verify finishes clean, and the new daemon gets the
# requests the dead one had read but not answered (BIND's resent).  With no
# daemon past the (short) timeout, I/O fails with EIO promptly instead of
# hanging, and the device can still be removed.
# vm: kernels=6.1,6.12 timeout=360 disks=256M boot=kmod-short
. /src/tests/kmod/vm-lib.sh
LOG=/tmp/daemon.log

step "target with daemon_timeout 30 over a direct-I/O loop device"
data_fs
make_file /data/disk.img 64
LOOP=$(loop_dio /data/disk.img)
dmu_create u rs1 8 "2 daemon_timeout 30" "$LOOP"
daemon_start $LOG --key rs1 --mode identity

step "fio randwrite + verify while the daemon is killed -9 and replaced, twice"
fio --name=restart --filename=/dev/mapper/u --rw=randwrite --bsrange=4k-64k --size=24M \
  --direct=1 --ioengine=libaio --iodepth=8 --verify=crc32c --verify_fatal=1 --do_verify=1 \
  >/tmp/fio.log 2>&1 &
FIO=$!
for round in 1 2; do
  sleep 2
  kill -0 $FIO 2>/dev/null || break
  # The daemon stops answering after a few more requests and is killed with
  # those read but unanswered: the next daemon must get them again.
  kill -9 "$DAEMON_PID"
  wait "$DAEMON_PID" 2>/dev/null
  hangs=$(grep -c "event=hang" $LOG)
  # Drop the cache so fio's next writes miss and the hanging daemon reads
  # MAP requests (not only the DONEs handed back to it).
  dmsetup message u 0 invalidate || fail "round $round: invalidate"
  daemon_start $LOG --key rs1 --mode identity --hang-after-requests 5
  i=0
  until [ "$(grep -c "event=hang" $LOG)" -gt "$hangs" ] || [ $i -ge 100 ]; do
    sleep 0.1
    i=$((i + 1))
  done
  [ "$(grep -c "event=hang" $LOG)" -gt "$hangs" ] || fail "round $round: the hanging daemon saw no requests"
  sleep 0.5
  kill -9 "$DAEMON_PID"
  wait "$DAEMON_PID" 2>/dev/null
  sleep 1
  daemon_start $LOG --key rs1 --mode identity --bind-wait-ms 5000
  # What the hanging daemon read comes back: requests (resent) or, in
  # protocol 2, the DONEs it read first (redelivered).
  resent=$(daemon_value $LOG bind resent)
  redelivered=$(daemon_value $LOG bind redelivered)
  echo "round $round: new daemon got resent=$resent redelivered=$redelivered"
  expect_ge "round $round: messages handed again to the new daemon" 1 "$((resent + redelivered))"
done
wait $FIO || { cat /tmp/fio.log; fail "fio failed across daemon restarts"; }
grep -q "err= 0" /tmp/fio.log || { cat /tmp/fio.log; fail "fio saw I/O errors"; }
expect_eq "kernel timeouts" 0 "$(dmu_stat u timeouts)"
expect_gt "kernel resent counter" 0 "$(dmu_stat u resent)"
daemon_stop $LOG
dmsetup remove u || fail "dmsetup remove u"

step "no daemon past a 3 s timeout: EIO promptly, no hang, remove works"
dmu_create t rs2 8 "2 daemon_timeout 3" "$LOOP"
daemon_start $LOG --key rs2 --mode identity
read_block /dev/mapper/t 4096 1 || fail "read with a daemon"
kill -9 "$DAEMON_PID"
wait "$DAEMON_PID" 2>/dev/null
t0=$(now_ms)
if timeout 60 dd if=/dev/mapper/t of=/dev/null bs=4096 skip=100 count=1 iflag=direct 2>/tmp/dd.err; then
  fail "read of an unmapped block succeeded without a daemon"
fi
t1=$(now_ms)
cat /tmp/dd.err
grep -q "Input/output error" /tmp/dd.err || fail "expected EIO without a daemon"
echo "EIO after $((t1 - t0)) ms"
[ $((t1 - t0)) -lt 20000 ] || fail "EIO took $((t1 - t0)) ms for a 3 s timeout"
[ $((t1 - t0)) -ge 2000 ] || fail "EIO after $((t1 - t0)) ms: I/O did not wait for a daemon"
expect_gt "kernel timeouts" 0 "$(dmu_stat t timeouts)"
timeout 60 dmsetup remove t || fail "dmsetup remove t without a daemon"
losetup -d "$LOOP"
save_results kmod-restart $LOG /tmp/fio.log
check_dmesg
step "ok"
