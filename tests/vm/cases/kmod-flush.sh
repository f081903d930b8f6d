#!/bin/sh
# Flush and FUA wait for the daemon's commit: their latency is at least the
# daemon's commit delay, and a dm-log-writes log under the target's data
# device shows, for every fsync, the data write, then the device flush, then
# the daemon receiving COMMIT, then its COMMITTED, then fsync returning.  A
# kernel that acknowledged early, committed before flushing, or flushed
# before the data was written breaks that order and fails the check.
# vm: kernels=6.1,6.12 timeout=300 disks=256M boot=kmod-short
. /src/tests/kmod/vm-lib.sh
LOG=/tmp/daemon.log
DELAY=400

step "data on dm-log-writes over a loop device, log on another"
data_fs
make_file /data/data.img 32
make_file /data/log.img 64
LD=$(loop_dio /data/data.img)
LL=$(loop_dio /data/log.img)
echo "0 $(blockdev --getsz "$LD") log-writes $LD $LL" | dmsetup create lw || fail "create log-writes"
dmsetup mknodes
dmu_create u fl1 8 "" /dev/mapper/lw
daemon_start $LOG --key fl1 --mode identity --commit-delay-ms $DELAY --mark-device lw
dd if=/dev/urandom of=/tmp/c bs=4096 count=1 status=none

step "plain direct writes ask for no commit"
daemon_report $LOG
c0=$(daemon_value $LOG counters commits)
dd if=/tmp/c of=/dev/mapper/u bs=4096 seek=3 oflag=direct conv=notrunc status=none || fail "plain write"
daemon_report $LOG
expect_eq "commits after a plain write" "$c0" "$(daemon_value $LOG counters commits)"

step "fsync (flush) and O_DSYNC (FUA) writes take at least the commit delay ($DELAY ms)"
for i in 1 2 3; do
  t0=$(now_ms)
  dd if=/tmp/c of=/dev/mapper/u bs=4096 seek=$((i * 10)) oflag=direct conv=notrunc,fsync status=none ||
    fail "write + fsync $i"
  t1=$(now_ms)
  dmsetup message lw 0 mark "fsync-returned-$i" || fail "mark"
  echo "fsync $i: $((t1 - t0)) ms"
  expect_ge "flush latency of write $i (ms)" $DELAY $((t1 - t0))
done
for i in 4 5; do
  t0=$(now_ms)
  dd if=/tmp/c of=/dev/mapper/u bs=4096 seek=$((i * 10)) oflag=direct,dsync conv=notrunc status=none ||
    fail "FUA write $i"
  t1=$(now_ms)
  dmsetup message lw 0 mark "fsync-returned-$i" || fail "mark"
  echo "dsync write $i: $((t1 - t0)) ms"
  expect_ge "FUA latency of write $i (ms)" $DELAY $((t1 - t0))
done
daemon_stop $LOG
expect_ge "commits answered" 5 "$(daemon_value $LOG counters commits)"
grep -q "event=mark_failed" $LOG && fail "the daemon could not mark the log"
dmsetup remove u || fail "remove u"
dmsetup remove lw || fail "remove lw"

step "the log: write, flush, COMMIT received, COMMITTED, fsync returned"
dmu-log-writes-dump "$LL" >/tmp/log.txt || fail "cannot read the dm-log-writes log"
save_results kmod-flush /tmp/log.txt $LOG
grep -c . /tmp/log.txt
# A state machine per write i (sector i*80): 1 = data logged, 2 = flushed
# (a FLUSH entry, or the write itself was FUA), 3 = commit received,
# 4 = committed; fsync-returned-i must find state 4.
awk '
  function check(i) { if (state[i] != 4) { printf "write %d: fsync returned in state %d\n", i, state[i]; bad = 1 } }
  /^#/ { next }
  {
    flags = ""; sector = -1; mark = ""
    for (f = 2; f <= NF; f++) {
      split($f, kv, "=")
      if (kv[1] == "flags") flags = kv[2]
      if (kv[1] == "sector") sector = kv[2] + 0
      if (kv[1] == "mark") mark = substr($f, 6)
    }
    if (flags ~ /MARK/) {
      if (mark ~ /^commit-recv-/) { for (i in state) if (state[i] == 2) state[i] = 3 }
      else if (mark ~ /^committed-/) { for (i in state) if (state[i] == 3) state[i] = 4 }
      else if (mark ~ /^fsync-returned-/) { i = substr(mark, 16) + 0; check(i); seen[i] = 1 }
      next
    }
    if (flags ~ /FLUSH/) { for (i in state) if (state[i] == 1) state[i] = 2 }
    if (sector > 0 && sector % 80 == 0 && sector / 80 <= 5) {
      i = sector / 80; state[i] = (flags ~ /FUA/) ? 2 : 1
    }
  }
  END {
    for (i = 1; i <= 5; i++) if (!seen[i]) { printf "write %d: no fsync-returned mark\n", i; bad = 1 }
    exit bad
  }' /tmp/log.txt || { cat /tmp/log.txt; fail "log order does not prove flush-before-commit-before-ack"; }
losetup -d "$LD" "$LL"
check_dmesg
step "ok"
