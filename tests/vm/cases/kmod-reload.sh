#!/bin/sh
# The target's state outlives tables, suspends and daemons:
#  - a key belongs to one device (a second device naming it is refused);
#  - a table reload keeps the cache (no new requests for cached blocks) and
#    runs under fio with verify without an error; it may shrink the target,
#    and grow it only from a whole number of blocks;
#  - a noflush suspend with no daemon hands waiting I/O back to dm (it
#    completes after resume, when a daemon is back); a flushing suspend
#    waits for a daemon within daemon_timeout instead of failing I/O; a
#    suspend longer than daemon_timeout does not run the clock out (it
#    starts again at resume);
#  - a DONE is never lost: a daemon that read it and died before a COMMIT,
#    across a table reload, is followed by one that lists the allocation and
#    reads the DONE again; a COMMITTED publishes it.
# vm: kernels=6.1,6.12 timeout=360 disks=256M boot=kmod-short
. /src/tests/kmod/vm-lib.sh
LOG=/tmp/serve.log

step "target rl1 (daemon_timeout 20) over a direct-I/O loop device"
data_fs
make_file /data/disk.img 64
make_file /data/other.img 8
LOOP=$(loop_dio /data/disk.img)
OTHER=$(loop_dio /data/other.img)
SZ=$(blockdev --getsz "$LOOP")
TABLE="0 $SZ userspace rl1 8 1 $LOOP 2 daemon_timeout 20"
echo "$TABLE" | dmsetup create u || fail "create u"
dmsetup mknodes
probe_serve $LOG rl1

step "a second device naming the same key is refused"
if echo "0 $(blockdev --getsz "$OTHER") userspace rl1 8 1 $OTHER" | dmsetup create v 2>/tmp/dup.err; then
  fail "a second device with key rl1 was created"
fi
dmesg | tail -5 | grep -q "Key is in use by another device" || { dmesg | tail -5; fail "no reason logged"; }
printf '0 8 userspace kk 8 1 %s\n8 8 userspace kk 8 1 %s\n' "$OTHER" "$OTHER" | dmsetup create w 2>/dev/null &&
  fail "two targets of one table share key kk"
dmesg | tail -5 | grep -q "Key is used by another target of this table" || { dmesg | tail -5; fail "no reason logged"; }

step "a reload keeps the cache"
for b in $(seq 0 63); do read_block /dev/mapper/u 4096 "$b" || fail "read $b"; done
ext=$(dmu_stat u extents)
req=$(dmu_stat u requests)
expect_ge "cached extents" 1 "$ext"
echo "$TABLE" | dmsetup reload u || fail "reload"
dmsetup resume u || fail "resume"
for b in $(seq 0 63); do read_block /dev/mapper/u 4096 "$b" || fail "read $b after the reload"; done
expect_eq "extents after the reload" "$ext" "$(dmu_stat u extents)"
expect_eq "requests after re-reading cached blocks" "$req" "$(dmu_stat u requests)"

step "fio randwrite + verify while the table is reloaded three times"
fio --name=reload --filename=/dev/mapper/u --rw=randwrite --bsrange=4k-64k --size=16M \
  --direct=1 --ioengine=libaio --iodepth=8 --verify=crc32c --verify_fatal=1 --do_verify=1 \
  --fsync=16 >/tmp/fio.log 2>&1 &
FIO=$!
for i in 1 2 3; do
  sleep 1
  echo "$TABLE" | dmsetup reload u || fail "reload $i"
  dmsetup resume u || fail "resume $i"
done
wait $FIO || { cat /tmp/fio.log; fail "fio failed across reloads"; }
grep -q "err= 0" /tmp/fio.log || { cat /tmp/fio.log; fail "fio saw I/O errors"; }

step "noflush suspend with no daemon: waiting I/O is requeued, not failed"
probe_stop $LOG
dd if=/dev/mapper/u of=/dev/null bs=4096 skip=5000 count=1 iflag=direct 2>/tmp/dd1.err &
DD=$!
sleep 1
timeout 20 dmsetup suspend --noflush u || fail "noflush suspend hung or failed"
expect_gt "bios handed back to dm" 0 "$(dmu_stat u requeued)"
kill -0 $DD 2>/dev/null || { cat /tmp/dd1.err; fail "the waiting read ended during the suspend"; }
probe_serve $LOG rl1
dmsetup resume u || fail "resume after the noflush suspend"
wait $DD || { cat /tmp/dd1.err; fail "the read failed across a noflush suspend"; }

step "a noflush suspend longer than daemon_timeout: after resume, waiting I/O still times out"
echo "0 $(blockdev --getsz "$OTHER") userspace ts1 8 1 $OTHER 2 daemon_timeout 3" | dmsetup create ts ||
  fail "create ts"
dmsetup mknodes
dd if=/dev/mapper/ts of=/dev/null bs=4096 skip=7 count=1 iflag=direct 2>/dev/null &
DD=$!
sleep 0.5
timeout 20 dmsetup suspend --noflush ts || fail "suspend ts"
sleep 5
dmsetup resume ts || fail "resume ts"
t0=$(now_ms)
wait $DD && fail "a read with no daemon ever bound succeeded"
echo "the read failed $(($(now_ms) - t0)) ms after the resume"
[ $(($(now_ms) - t0)) -lt 15000 ] || fail "the read waited past daemon_timeout after the resume"
timeout 20 dmsetup remove ts || fail "remove ts"

step "a noflush suspend longer than daemon_timeout stops the clock: a daemon binding after the resume serves the requeued read"
# daemon_timeout 8 leaves a debug kernel time to create, read and suspend
# before the clock (started by the create) runs out.
echo "0 $(blockdev --getsz "$OTHER") userspace tw1 8 1 $OTHER 2 daemon_timeout 8" | dmsetup create tw ||
  fail "create tw"
dmsetup mknodes
dd if=/dev/mapper/tw of=/dev/null bs=4096 skip=9 count=1 iflag=direct 2>/tmp/dd3.err &
DD=$!
i=0
until [ "$(dmu_stat tw pending)" -ge 1 ]; do
  i=$((i + 1))
  [ $i -lt 100 ] || fail "the read never reached the target"
  sleep 0.1
done
timeout 20 dmsetup suspend --noflush tw || fail "suspend tw"
sleep 10
expect_eq "timeouts while suspended" 0 "$(dmu_stat tw timeouts)"
dmsetup resume tw || fail "resume tw"
sleep 1
kill -0 $DD 2>/dev/null || { cat /tmp/dd3.err; fail "the requeued read failed at the resume"; }
U_PROBE=$PROBE_PID
probe_serve /tmp/tw.log tw1
wait $DD || { cat /tmp/dd3.err; fail "the requeued read failed though a daemon bound within daemon_timeout of the resume"; }
probe_stop /tmp/tw.log
PROBE_PID=$U_PROBE
timeout 20 dmsetup remove tw || fail "remove tw"

step "flushing suspend with no daemon waits for one (daemon_timeout 20)"
probe_stop $LOG
dd if=/dev/mapper/u of=/dev/null bs=4096 skip=6000 count=1 iflag=direct 2>/tmp/dd2.err &
DD=$!
sleep 1
dmsetup suspend u &
SUSP=$!
sleep 2
kill -0 $SUSP 2>/dev/null || fail "the flushing suspend did not wait for the read"
probe_serve $LOG rl1
wait $SUSP || fail "the flushing suspend failed"
dmsetup resume u || fail "resume"
wait $DD || { cat /tmp/dd2.err; fail "the read failed across a flushing suspend"; }
probe_stop $LOG

step "a daemon stuck copying from or to its buffer hangs nothing (daemon_timeout 3)"
# stall-copy's read() or write() blocks for good in the copy to or from its
# buffer (userfaultfd); messages, the answer timeout, suspend and remove
# must all still work.
for op in read write; do
  echo "0 $(blockdev --getsz "$OTHER") userspace st-$op 8 1 $OTHER 2 daemon_timeout 3" |
    dmsetup create st || fail "create st"
  dmsetup mknodes
  if [ $op = read ]; then
    # a MAP for the read() to take before its copy blocks
    dd if=/dev/mapper/st of=/dev/null bs=4096 skip=5 count=1 iflag=direct 2>/dev/null &
    DD=$!
    sleep 0.5
  fi
  dmu-kmod-probe stall-copy --key st-$op --op $op 2>/tmp/stall.log &
  STALL=$!
  i=0
  until grep -q "event=stalling" /tmp/stall.log; do
    i=$((i + 1))
    [ $i -lt 100 ] || { cat /tmp/stall.log; fail "stall-copy did not start"; }
    sleep 0.1
  done
  sleep 0.5
  timeout 10 dmsetup message st 0 invalidate || fail "$op stalled in its copy: a message hung"
  if [ $op = read ]; then
    t0=$(now_ms)
    wait $DD && fail "the read the stalled daemon took succeeded"
    echo "the request the stalled daemon took failed after $(($(now_ms) - t0)) ms more"
  fi
  timeout 20 dmsetup suspend st || fail "$op stalled in its copy: suspend hung"
  timeout 20 dmsetup resume st || fail "$op stalled in its copy: resume hung"
  timeout 20 dmsetup remove st || fail "$op stalled in its copy: remove hung"
  kill -9 $STALL
  wait $STALL 2>/dev/null
done

step "a reload may change the length, but grow only from a whole number of blocks"
# A partial last block's tail lies outside the target: never filled nor
# checked against its device, so no answer for the block holds there.
OSZ=$(blockdev --getsz "$OTHER")
grow_table() { echo "0 $1 userspace gr1 8 1 $OTHER 2 daemon_timeout 20"; }
grow_to() { # SECTORS: reload and resume g with that length
  grow_table "$1" | dmsetup reload g || fail "reload g to $1 sectors"
  dmsetup resume g || fail "resume g at $1 sectors"
  expect_eq "sectors of g" "$1" "$(blockdev --getsz /dev/mapper/g)"
}
maps_for() { grep -c "event=request MAP id=[0-9]* block=$1+" /tmp/grow.log; } # BLOCK
grow_table $((OSZ - 16)) | dmsetup create g || fail "create g"
dmsetup mknodes
daemon_start /tmp/grow.log --key gr1 --mode zero -v
B=$((OSZ / 8 - 3)) # the last block
read_block /dev/mapper/g 4096 $B || fail "read the last block"
grow_to $((OSZ - 12)) # from whole blocks: the cache stays
read_block /dev/mapper/g 4096 $B || fail "read the block after the grow"
expect_eq "MAPs for a block cached before a grow" 1 "$(maps_for $B)"
if grow_table "$OSZ" | dmsetup reload g 2>/tmp/grow.err; then
  fail "a reload grew g from a partial last block"
fi
dmesg | tail -5 | grep -q "grow the target only from a whole number of blocks" ||
  { dmesg | tail -5; fail "no reason logged for the refused grow"; }
expect_eq "sectors of g after the refused grow" $((OSZ - 12)) "$(blockdev --getsz /dev/mapper/g)"
grow_to $((OSZ - 24)) # shrinking is always allowed, also from a partial block
grow_to "$OSZ" # (the test daemon keeps the length it bound at: no reads past it)
daemon_stop /tmp/grow.log
timeout 20 dmsetup remove g || fail "remove g"

step "DONE is never lost: daemon 1 reads it and dies; a reload; daemon 2 gets it again"
dmu-kmod-probe done-replay --key rl1 --phase 1 --block 7000 2>/tmp/p1.log &
P1=$!
sleep 0.5
dd if=/dev/urandom of=/dev/mapper/u bs=4096 seek=7000 count=1 oflag=direct conv=notrunc status=none ||
  fail "the write answered with a NEW extent"
wait $P1 || { cat /tmp/p1.log; fail "daemon 1 did not see its DONE"; }
cat /tmp/p1.log
ID=$(sed -n 's/.*event=phase1 id=\([0-9]*\).*/\1/p' /tmp/p1.log)
[ -n "$ID" ] || fail "no request id from daemon 1"
expect_ge "unpublished records" 1 "$(dmu_stat u unpublished)"
echo "$TABLE" | dmsetup reload u || fail "reload between the daemons"
dmsetup resume u || fail "resume between the daemons"
dmu-kmod-probe done-replay --key rl1 --phase 2 --block 7000 --id "$ID" 2>/tmp/p2.log &
P2=$!
i=0
until grep -q "event=redelivered" /tmp/p2.log || ! kill -0 $P2 2>/dev/null; do
  i=$((i + 1))
  [ $i -lt 300 ] || { cat /tmp/p2.log; fail "daemon 2 did not get the DONE back within 30 s"; }
  sleep 0.1
done
dmu-kmod-probe fsync --device /dev/mapper/u || { cat /tmp/p2.log; dmsetup status u; fail "the flush that commits"; }
wait $P2 || { cat /tmp/p2.log; fail "daemon 2 did not get the lost DONE back, or could not publish it"; }
cat /tmp/p2.log
dmu-kmod-probe done-replay --key rl1 --phase 3 --block 7000 2>/tmp/p3.log ||
  { cat /tmp/p3.log; fail "records left after the COMMITTED"; }
expect_eq "unpublished records" 0 "$(dmu_stat u unpublished)"
timeout 60 dmsetup remove u || fail "remove u"
losetup -d "$LOOP" "$OTHER"
save_results kmod-reload $LOG /tmp/fio.log /tmp/p1.log /tmp/p2.log
check_dmesg
step "ok"
