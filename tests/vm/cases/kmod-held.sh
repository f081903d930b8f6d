#!/bin/sh
# A daemon whose COMMITs keep failing cannot make the kernel keep unbounded
# state: once max_unpublished answers wait to be published, new MAP requests
# are held back (status `held`), the daemon is sent nothing more and the
# count of allocation records stops growing.  Held requests fail after
# daemon_timeout (with 0 they wait); once the same daemon can commit again,
# the kernel's own retry releases them without the guest's help, and every
# write lands; so does a new daemon when the failing one is killed.  A
# noflush suspend (a table reload) does not wait for held writes, nor for
# a flush and a FUA write whose COMMIT a stopped daemon sits on: dm core
# gets them back and issues them again after resume.  MAP requests out
# with the daemon count against the limit as well, and its answers and
# their expiries release held ones without a COMMIT.
# Without the bound, the writer would finish under the failing daemon (every
# write answered, `held` never above 0) and the record count would pass the
# limit by the whole tail of the device; without the retry, the writer
# would wait for the timeout and fail.
# vm: kernels=6.1,6.12 timeout=300 disks=256M boot=kmod-short
. /src/tests/kmod/vm-lib.sh
LOG=/tmp/held.log
LIMIT=1024 # module parameter max_unpublished for this case (default 16384)
MIB=8      # 2048 blocks of 4 KiB: 1024 past the limit
PARAM=/sys/module/dm_userspace/parameters/max_unpublished
OLD_LIMIT=$(cat $PARAM) || fail "no module parameter max_unpublished"
trap 'echo "$OLD_LIMIT" >$PARAM' EXIT
echo $LIMIT >$PARAM || fail "cannot set max_unpublished"
DEPTH=4    # the writer's 4 KiB direct writes in flight (one MAP request each)

# wait_held NAME N PID LOG: until NAME holds N MAP requests while PID (the
# I/O, LOG its output) runs, at most 200 s.  (Not `pending`: it also counts
# the kernel's own COMMITs, retried every second.)
wait_held() {
  _end=$(($(now_ms) + 200000))
  while [ "$(dmu_stat "$1" held)" != "$2" ]; do
    kill -0 "$3" 2>/dev/null || { cat "$4"; fail "$1: the I/O ended, not $2 held ($(dmsetup status "$1"))"; }
    [ "$(now_ms)" -lt $_end ] || fail "$1: not $2 MAP requests held after 200 s ($(dmsetup status "$1"))"
    sleep 0.2
  done
}

# loop_writes: writes completed on the data device ($LOOP's stat, field 5).
loop_writes() { awk '{ print $5 }' "/sys/block/${LOOP#/dev/}/stat"; }
# wait_loop_writes N WHAT: until the data device has completed more than N
# writes (20 s).
wait_loop_writes() {
  _end=$(($(now_ms) + 20000))
  until [ "$(loop_writes)" -gt "$1" ]; do
    [ "$(now_ms)" -lt $_end ] || fail "$2 did not reach the data device within 20 s ($(dmsetup status hf))"
    sleep 0.1
  done
}

# io_done NAME PID LOG WHAT: PID (fio, its output in LOG) succeeds with no
# I/O error, in the ms since $t0 it prints; NAME then holds nothing and
# counted no timeout.
io_done() {
  wait "$2" || { cat "$3"; fail "$4 failed"; }
  grep -q "err= 0" "$3" || { cat "$3"; fail "$4: fio saw I/O errors"; }
  echo "$4 done in $(($(now_ms) - t0)) ms: $(dmsetup status "$1")"
  expect_eq "held at the end" 0 "$(dmu_stat "$1" held)"
  expect_eq "timeouts" 0 "$(dmu_stat "$1" timeouts)"
}

# writer_start DEV LOG: fio writes DEV sequentially in 4 KiB direct writes,
# DEPTH at a time, then reads it all back and verifies; sets WRITER.
writer_start() {
  fio --name=held --filename="$1" --rw=write --bs=4k --size=${MIB}M --direct=1 \
    --ioengine=libaio --iodepth=$DEPTH --verify=crc32c --verify_fatal=1 --do_verify=1 \
    >"$2" 2>&1 &
  WRITER=$!
}

data_fs
make_file /data/disk.img $MIB
LOOP=$(loop_dio /data/disk.img)

# The first phase's daemon_timeout: its checks (3 s and a few status
# reads) must end before the held writes fail, on the debug kernel too.
# HELD_SLACK: how long the first held write may have waited before the
# 4th was held (the debug kernel once took 20 s, at 6 misses a second).
HELD_S=8 HELD_SLACK=3
case $(uname -r) in *debug*) HELD_S=60 HELD_SLACK=30 ;; esac
step "failing COMMITs: writes stop at $LIMIT records; held ones fail after daemon_timeout $HELD_S"
dmu_create hd hd1 8 "4 daemon_timeout $HELD_S max_extents 100000" "$LOOP"
touch /tmp/fail-commits
daemon_start $LOG --key hd1 --mode zero --commit-errno 28 --commit-errno-while /tmp/fail-commits
t0=$(now_ms)
writer_start /dev/mapper/hd /tmp/fio1.log
wait_held hd $DEPTH $WRITER /tmp/fio1.log
t1=$(now_ms)
echo "held after $((t1 - t0)) ms: $(dmsetup status hd)"
r1=$(dmu_stat hd unpublished)
expect_ge "records when holding starts" $LIMIT "$r1"
# MAPs out with the daemon count against the limit too: at most one
# answer (the one being applied) passes it.
[ "$r1" -le $((LIMIT + 1)) ] || fail "records: expected <= $((LIMIT + 1)), got $r1"
sleep 3
kill -0 $WRITER 2>/dev/null || { cat /tmp/fio1.log; fail "the writer ended while held"; }
expect_eq "records while held (nothing more allocated)" "$r1" "$(dmu_stat hd unpublished)"
expect_eq "held MAP requests after 3 s (the writer's queue depth)" $DEPTH "$(dmu_stat hd held)"
wait $WRITER && { cat /tmp/fio1.log; fail "the writer succeeded though its held writes should time out"; }
t2=$(now_ms)
grep -o 'err=[ 0-9]*[^,]*' /tmp/fio1.log | head -2
echo "writer failed after $((t2 - t1)) ms held"
# Not at once: after daemon_timeout, less the time the first held write
# may have waited before the 4th was.
expect_ge "ms until held writes failed" $(((HELD_S - HELD_SLACK) * 1000)) $((t2 - t1))
expect_eq "held after the timeout" 0 "$(dmu_stat hd held)"
expect_gt "timeouts" 0 "$(dmu_stat hd timeouts)"
expect_eq "records after the timeout" "$r1" "$(dmu_stat hd unpublished)"
expect_eq "daemon stays bound" bound "$(dmu_stat hd daemon)"
daemon_report $LOG
expect_gt "COMMITs the daemon failed" 0 "$(daemon_value $LOG counters commit_errors)"

step "the same writes wait (daemon_timeout 0: no limit) until the same daemon commits again"
SZ=$(blockdev --getsz "$LOOP")
dmsetup reload hd --table "0 $SZ userspace hd1 8 1 $LOOP 4 daemon_timeout 0 max_extents 100000" ||
  fail "reload hd"
dmsetup resume hd || fail "resume hd"
writer_start /dev/mapper/hd /tmp/fio2.log
wait_held hd $DEPTH $WRITER /tmp/fio2.log
sleep 3
kill -0 $WRITER 2>/dev/null || { cat /tmp/fio2.log; fail "the writer ended while held again"; }
expect_eq "records while held again" "$r1" "$(dmu_stat hd unpublished)"

step "a noflush suspend and reload while writes are held: dm core gets them back, held again after resume"
# Only a COMMIT releases held writes, and this daemon cannot give one:
# the suspend must hand them back, not wait (with daemon_timeout 0,
# forever; 60 s leaves room for a slow debug kernel).
rq=$(dmu_stat hd requeued)
t0=$(now_ms)
timeout 60 dmsetup suspend --noflush hd ||
  fail "a noflush suspend did not end within 60 s while writes were held ($(dmsetup status hd))"
echo "suspended in $(($(now_ms) - t0)) ms: $(dmsetup status hd)"
expect_eq "held while suspended" 0 "$(dmu_stat hd held)"
expect_ge "bios handed back to dm core" $((rq + DEPTH)) "$(dmu_stat hd requeued)"
dmsetup reload hd --table "0 $SZ userspace hd1 8 1 $LOOP 4 daemon_timeout 0 max_extents 100000" ||
  fail "reload hd while suspended"
dmsetup resume hd || fail "resume hd after the reload"
wait_held hd $DEPTH $WRITER /tmp/fio2.log
expect_eq "records after the reload" "$r1" "$(dmu_stat hd unpublished)"

step "the daemon can commit again: the kernel's retry releases the held writes"
t0=$(now_ms)
rm /tmp/fail-commits
wait $WRITER || { cat /tmp/fio2.log; fail "the writer failed after the daemon could commit again"; }
grep -q "err= 0" /tmp/fio2.log || { cat /tmp/fio2.log; fail "fio saw I/O errors"; }
echo "released and written in $(($(now_ms) - t0)) ms: $(dmsetup status hd)"
expect_eq "held after release" 0 "$(dmu_stat hd held)"
daemon_stop $LOG
dmsetup remove hd || fail "remove hd"

step "a daemon killed while writes are held: the next one, which can commit, releases them"
# Held MAPs must survive the daemon's death (not fail, not be lost): the
# new daemon gets the old one's unpublished DONEs, the kernel asks it for
# a COMMIT (its retry, or the cycle the old daemon left), and the room
# that makes releases the held writes, with no guest action.
dmu_create hk hk1 8 "4 daemon_timeout 120 max_extents 100000" "$LOOP"
touch /tmp/fail-commits
daemon_start /tmp/kill1.log --key hk1 --mode zero --commit-errno 28 --commit-errno-while /tmp/fail-commits
writer_start /dev/mapper/hk /tmp/fio4.log
wait_held hk $DEPTH $WRITER /tmp/fio4.log
kill -9 "$DAEMON_PID"
wait "$DAEMON_PID" 2>/dev/null
rm /tmp/fail-commits
sleep 1
expect_eq "held with the daemon gone" $DEPTH "$(dmu_stat hk held)"
t0=$(now_ms)
daemon_start /tmp/kill2.log --key hk1 --mode zero
io_done hk $WRITER /tmp/fio4.log "the writer under the new daemon"
daemon_stop /tmp/kill2.log
dmsetup remove hk || fail "remove hk"

step "MAPs out count too: max_unpublished 4, a stopped daemon is sent 4 reads, the rest go as answers come back"
# Reads answered with zero extents start no tracker: only the MAPs out
# with the daemon fill the room, and only its answers (no COMMIT) free it.
echo 4 >$PARAM || fail "cannot set max_unpublished 4"
# The reads must not expire before the checks below are done: 30 s, and on
# the debug kernel, where fio took 30 s to reach 16 reads, 120.
READS_S=30
case $(uname -r) in *debug*) READS_S=120 ;; esac
dmu_create hr hr1 8 "2 daemon_timeout $READS_S" "$LOOP"
daemon_start /tmp/reads.log --key hr1 --mode zero
kill -STOP "$DAEMON_PID"
fio --name=reads --filename=/dev/mapper/hr --rw=read --bs=4k --size=${MIB}M --direct=1 \
  --ioengine=libaio --iodepth=16 --number_ios=512 >/tmp/fio3.log 2>&1 &
READER=$!
wait_held hr 12 $READER /tmp/fio3.log
echo "daemon stopped: $(dmsetup status hr)"
expect_eq "reads waiting (4 out, 12 held)" 16 "$(dmu_stat hr pending)"
# Nothing to publish: no COMMIT can make room, so the kernel must not run
# commit cycles for the held reads, nor chain one after a guest flush's
# (which needs no daemon: there is no DONE to commit).
sleep 2
c=$(dmu_stat hr cycles)
[ "$c" -le 1 ] || fail "commit cycles while only MAPs out filled the room: expected <= 1, got $c"
dmu-kmod-probe fsync --device /dev/mapper/hr || fail "fsync while reads are held"
sleep 2
c=$(dmu_stat hr cycles)
[ "$c" -le 3 ] || fail "commit cycles after one fsync while reads are held: expected <= 3, got $c"
expect_eq "records (reads allocate nothing)" 0 "$(dmu_stat hr unpublished)"
t0=$(now_ms)
kill -CONT "$DAEMON_PID"
io_done hr $READER /tmp/fio3.log "512 reads"
daemon_stop /tmp/reads.log
dmsetup remove hr || fail "remove hr"

# The expiry phase's daemon_timeout and the gap between its two batches of
# reads.  The held batch comes in GAP_S after the first and must be in
# before the first expires (EXPIRY_S - GAP_S for 12 processes to start; a
# debug kernel took over 20 s).  Each read's clock starts when it comes
# in (a held one's again when it is released), so the 8 reads still held
# expire GAP_S after the first batch did: GAP_S is all the daemon has,
# once it goes on, to answer the 12.
EXPIRY_S=10 GAP_S=4
case $(uname -r) in *debug*) EXPIRY_S=60 GAP_S=10 ;; esac
step "expiries make room too: held reads go to the daemon when earlier ones time out (daemon_timeout $EXPIRY_S)"
# 4 reads go out to a stopped daemon, 12 more are held from GAP_S later.
# When the first 4 fail, the room they leave sends 4 held ones on and 8
# stay held; without that release all 12 would stay held until their own
# expiry (GAP_S later) and then fail together.
dmu_create hx hx1 8 "2 daemon_timeout $EXPIRY_S" "$LOOP"
daemon_start /tmp/expiry.log --key hx1 --mode zero
kill -STOP "$DAEMON_PID"
# read_blocks FIRST N: one direct 4 KiB read of hx's blocks FIRST..FIRST+N-1
# each, every one its own dd in the background (output in
# /tmp/expiry-read.<block>); sets READS to their pids.  (Not fio: a debug
# kernel took seconds between its start and its first I/O.)
read_blocks() {
  READS=
  _b=$1
  while [ "$_b" -lt $(($1 + $2)) ]; do
    dd if=/dev/mapper/hx of=/dev/null bs=4k count=1 skip="$_b" iflag=direct \
      >/tmp/expiry-read."$_b" 2>&1 &
    READS="$READS $!"
    _b=$((_b + 1))
  done
}
read_blocks 0 4
FIRST=$READS
_end=$(($(now_ms) + 120000))
until [ "$(dmu_stat hx pending)" -ge 4 ]; do
  [ "$(now_ms)" -lt $_end ] || fail "no reads pending after 120 s ($(dmsetup status hx))"
  sleep 0.1
done
expect_eq "held before the second batch (all 4 first reads went out)" 0 "$(dmu_stat hx held)"
t0=$(now_ms)
sleep $GAP_S
read_blocks 1024 12
SECOND=$READS
until [ "$(dmu_stat hx held)" = 12 ]; do
  [ $(($(now_ms) - t0)) -lt $((EXPIRY_S * 1000)) ] ||
    fail "the second reads were not all held before the first expired ($(dmsetup status hx))"
  sleep 0.1
done
echo "12 reads held $(($(now_ms) - t0)) ms after the first went out"
# The first 4 may expire one at a time (they came in from 4 processes),
# each sending one held read on.  No held read can expire before
# t0 + GAP_S + EXPIRY_S: down to 8 before then, it was the release.
until h=$(dmu_stat hx held) && [ "$h" -le 8 ]; do
  [ $(($(now_ms) - t0)) -lt $(((GAP_S + EXPIRY_S) * 1000)) ] ||
    fail "held reads not released when the first expired ($(dmsetup status hx))"
  sleep 0.1
done
kill -CONT "$DAEMON_PID"
echo "held reads released $(($(now_ms) - t0)) ms after the first went out: $(dmsetup status hx)"
expect_eq "held once the first reads expired" 8 "$h"
expect_ge "timeouts" 1 "$(dmu_stat hx timeouts)"
for p in $FIRST; do
  ! wait "$p" || fail "a first read succeeded though the daemon never answered it"
done
for p in $SECOND; do
  wait "$p" || { grep -H '' /tmp/expiry-read.*; fail "a second read failed after the daemon went on"; }
done
grep -l "Input/output error" /tmp/expiry-read.[0-3] | wc -l | grep -qx 4 ||
  { grep -H '' /tmp/expiry-read.*; fail "the first reads did not all fail with EIO"; }
grep -H '' /tmp/expiry-read.* >/tmp/expiry-reads.log
daemon_stop /tmp/expiry.log
dmsetup remove hx || fail "remove hx"

step "a noflush suspend while a flush and a FUA write wait for a COMMIT a stopped daemon sits on: dm core gets them back"
# Neither is lost: both complete after resume, in a cycle of their own,
# once the daemon answers.  A suspend that waited for them would wait
# daemon_timeout (120 s).
echo $LIMIT >$PARAM || fail "cannot set max_unpublished $LIMIT"
dmu_create hf hf1 8 "2 daemon_timeout 120" "$LOOP"
daemon_start /tmp/flush.log --key hf1 --mode zero
dd if=/dev/urandom of=/dev/mapper/hf bs=4k count=16 oflag=direct 2>/dev/null || fail "write hf"
expect_eq "records before the flush" 16 "$(dmu_stat hf unpublished)"
kill -STOP "$DAEMON_PID"
dmu-kmod-probe fsync --device /dev/mapper/hf >/tmp/fsync.log 2>&1 &
FSYNC=$!
_end=$(($(now_ms) + 60000))
until [ "$(dmu_stat hf pending)" = 1 ]; do   # the COMMIT, queued to the stopped daemon
  [ "$(now_ms)" -lt $_end ] || fail "no COMMIT pending 60 s after the fsync ($(dmsetup status hf))"
  sleep 0.2
done
sleep 1
kill -0 $FSYNC 2>/dev/null || { cat /tmp/fsync.log; fail "the fsync ended though the daemon is stopped"; }
# A FUA write (O_DSYNC direct) to a block already mapped: written at
# once (the data device counts one more write), completed only after the
# next COMMIT.
w0=$(loop_writes)
dd if=/dev/urandom of=/dev/mapper/hf bs=4k count=1 seek=3 oflag=direct,dsync conv=notrunc \
  >/tmp/fua.log 2>&1 &
FUA=$!
wait_loop_writes "$w0" "the FUA write"
sleep 0.5
kill -0 $FUA 2>/dev/null || { cat /tmp/fua.log; fail "the FUA write ended though the daemon is stopped"; }
rq=$(dmu_stat hf requeued)
t0=$(now_ms)
timeout 30 dmsetup suspend --noflush hf ||
  fail "a noflush suspend did not end within 30 s while a flush waited for a COMMIT ($(dmsetup status hf))"
echo "suspended in $(($(now_ms) - t0)) ms: $(dmsetup status hf)"
expect_ge "bios handed back to dm core (the flush, the FUA write)" $((rq + 2)) "$(dmu_stat hf requeued)"
for p in $FSYNC $FUA; do
  kill -0 $p 2>/dev/null || { cat /tmp/fsync.log /tmp/fua.log; fail "the fsync or FUA write ended during the suspend"; }
done
w1=$(loop_writes)
dmsetup resume hf || fail "resume hf"
# Handed back, the FUA write is written again after resume (a FUA write
# that was not held would have completed, leaving only dd's flush).
wait_loop_writes "$w1" "the FUA write issued again after resume"
sleep 0.5
for p in $FSYNC $FUA; do
  kill -0 $p 2>/dev/null || { cat /tmp/fsync.log /tmp/fua.log; fail "the fsync or FUA write ended before the daemon answered"; }
done
kill -CONT "$DAEMON_PID"
wait $FSYNC || { cat /tmp/fsync.log; fail "the fsync failed after the resume"; }
wait $FUA || { cat /tmp/fua.log; fail "the FUA write failed after the resume"; }
expect_eq "records after the fsync" 0 "$(dmu_stat hf unpublished)"
expect_eq "timeouts" 0 "$(dmu_stat hf timeouts)"
daemon_stop /tmp/flush.log
dmsetup remove hf || fail "remove hf"
save_results kmod-held $LOG /tmp/fio1.log /tmp/fio2.log /tmp/kill1.log /tmp/kill2.log /tmp/fio4.log \
  /tmp/reads.log /tmp/fio3.log /tmp/expiry.log /tmp/expiry-reads.log /tmp/flush.log
losetup -d "$LOOP"
check_dmesg
