#!/bin/sh
# Flush, invalidation and discard under concurrency, each made deterministic
# by holding one write in flight with dm-delay (writes delayed, flushes not)
# between the target and a dm-log-writes log of its data device:
#  1. a flush covers a write that was submitted before another flush's
#     cycle and completed after that cycle's device flush;
#  2. likewise a FUA write held until a commit;
#  3. `invalidate` returns only after a write through the dropped extent
#     landed;
#  4. a discard completes only after a write in flight to its block landed;
#  5. a copy-on-write fill that replaces a cached writable extent copies
#     only after a write in flight through that extent landed;
#  6. all of it served by a daemon that reads with a blocking read() in one
#     thread while another thread write()s answers on the same fd.
# A kernel that marks devices dirty at submission, or invalidates without
# draining, or serialises read() and write(), fails a step below.
# vm: kernels=6.1,6.12 timeout=300 disks=256M boot=kmod-short
. /src/tests/kmod/vm-lib.sh
# How long dm-delay holds a write, and how long a background write is given
# to reach it.  A debug kernel (lockdep, KASAN) runs several times slower:
# the margins grow with it so that only the ordering, not speed, is tested.
DELAY=1500
SETTLE_MS=300
case $(uname -r) in *debug*) DELAY=8000 SETTLE_MS=2000 ;; esac
# What is left of DELAY once the write has been given SETTLE_MS.
HELD=$((DELAY - SETTLE_MS))
LOG=/tmp/serve.log

modprobe dm-delay || fail "modprobe dm-delay"
step "u -> delay (writes ${DELAY} ms, flushes 0 ms) -> log-writes -> loop"
data_fs
make_file /data/data.img 32
make_file /data/log.img 64
LD=$(loop_dio /data/data.img)
LL=$(loop_dio /data/log.img)
SZ=$(blockdev --getsz "$LD")
echo "0 $SZ log-writes $LD $LL" | dmsetup create lw || fail "create log-writes"
echo "0 $SZ delay /dev/mapper/lw 0 0 /dev/mapper/lw 0 $DELAY /dev/mapper/lw 0 0" |
  dmsetup create dly || fail "create delay"
dmsetup mknodes
dmu_create u dur1 8 "" /dev/mapper/dly
probe_serve $LOG dur1 --relocate 50 --relocate-to 8000
dd if=/dev/urandom of=/tmp/w bs=4096 count=1 status=none

step "warm the cache: blocks 10, 20, 30, 40, 50 mapped writable"
for b in 10 20 30 40 50; do read_block /dev/mapper/u 4096 $b || fail "read block $b"; done

# in_flight BLOCK [DD-FLAGS]: starts a direct write of BLOCK in the
# background (it lands after DELAY ms), sets W, and waits SETTLE_MS.
in_flight() {
  t_start=$(now_ms)
  dd if=/tmp/w of=/dev/mapper/u bs=4096 seek="$1" count=1 oflag="direct${2:+,$2}" \
    conv=notrunc status=none &
  W=$!
  sleep $((SETTLE_MS / 1000)).$(printf %03d $((SETTLE_MS % 1000)))
}
# landed WHAT: waits for W; fails if the write did not take DELAY.
landed() {
  wait $W || fail "$1: the write failed"
  _took=$(($(now_ms) - t_start))
  [ $_took -ge $((DELAY - 200)) ] || fail "$1: the write took $_took ms; dm-delay did not hold it"
}

step "1. flush while a write is in flight, then the write lands, then fsync"
in_flight 10
t0=$(now_ms)
dmu-kmod-probe fsync --device /dev/mapper/u || fail "the concurrent flush"
t1=$(now_ms)
[ $((t1 - t0)) -lt $((HELD - 200)) ] ||
  fail "the concurrent flush took $((t1 - t0)) ms: it did not run while the write was in flight"
landed "write 1"
dmu-kmod-probe fsync --device /dev/mapper/u || fail "fsync after the write"
dmsetup message lw 0 mark after-write || fail "mark"

step "2. FUA write in flight while another flush runs its cycle"
in_flight 20 dsync
dmu-kmod-probe fsync --device /dev/mapper/u || fail "the concurrent flush"
landed "FUA write"
dmsetup message lw 0 mark after-fua || fail "mark"

step "3. invalidate waits for the write in flight through the extent"
in_flight 30
t0=$(now_ms)
dmsetup message u 0 invalidate 30 1 || fail "invalidate"
t1=$(now_ms)
landed "write 3"
echo "invalidate returned after $((t1 - t0)) ms"
[ $((t1 - t0)) -ge $((HELD - 400)) ] ||
  fail "invalidate returned after $((t1 - t0)) ms, before the write through the extent landed"

step "4. discard waits for the write in flight to its block"
in_flight 40
t0=$(now_ms)
blkdiscard -o $((40 * 4096)) -l 4096 /dev/mapper/u || fail "blkdiscard"
t1=$(now_ms)
landed "write 4"
echo "discard completed after $((t1 - t0)) ms"
[ $((t1 - t0)) -ge $((HELD - 400)) ] ||
  fail "the discard completed after $((t1 - t0)) ms, before the write to its block landed"

step "5. relocating block 50 (NEW extent, COPY from its old place) while a write to it is in flight"
in_flight 50
kill -USR1 "$PROBE_PID"
landed "write 5"
i=0
until grep -q "event=relocated" $LOG; do
  i=$((i + 1))
  [ $i -lt 100 ] || fail "the daemon did not push the relocation"
  sleep 0.1
done
dd if=/dev/mapper/u of=/tmp/r bs=4096 skip=50 count=1 iflag=direct status=none || fail "read block 50"
cmp -s /tmp/w /tmp/r || fail "the relocated block lost the write that was in flight when it was copied"
expect_gt "fills" 0 "$(dmu_stat u fills)"

step "6. the two-thread daemon under concurrent misses"
dmsetup message u 0 invalidate || fail "invalidate all"
fio --name=mt --filename=/dev/mapper/u --rw=randread --bs=4k --size=2M --direct=1 \
  --ioengine=libaio --iodepth=16 --numjobs=2 --group_reporting >/tmp/fio.log 2>&1 ||
  { cat /tmp/fio.log; fail "fio through the two-thread daemon"; }
grep -q "event=write_stalled" $LOG && fail "a write() stalled behind the blocking read()"
expect_gt "daemon requests answered" 0 "$(dmu_stat u requests)"
probe_stop $LOG
dmsetup remove u || fail "remove u"
dmsetup remove dly || fail "remove dly"
dmsetup remove lw || fail "remove lw"

step "the log: a FLUSH after each held write, before its mark"
dmu-log-writes-dump "$LL" >/tmp/log.txt || fail "cannot read the dm-log-writes log"
save_results kmod-durability /tmp/log.txt $LOG
# flushed_between SECTOR MARK: the last write of SECTOR before MARK is
# followed by a FLUSH (or is itself FUA) before MARK.
flushed_between() {
  awk -v sector="$1" -v mark="$2" '
    /^#/ { next }
    {
      flags = ""; s = -1; m = ""
      for (f = 2; f <= NF; f++) {
        split($f, kv, "=")
        if (kv[1] == "flags") flags = kv[2]
        if (kv[1] == "sector") s = kv[2] + 0
        if (kv[1] == "mark") m = substr($f, 6)
      }
      if (flags ~ /MARK/ && m == mark) { found = 1; exit }
      if (flags ~ /WRITE/ && s == sector) { seen = 1; ok = (flags ~ /FUA/) }
      else if (flags ~ /FLUSH/ && seen) ok = 1
    }
    END { exit !(found && seen && ok) }' /tmp/log.txt
}
flushed_between 80 after-write ||
  { cat /tmp/log.txt; fail "fsync returned without a device flush after the write that landed late"; }
flushed_between 160 after-fua ||
  { cat /tmp/log.txt; fail "the FUA write was acknowledged without a device flush after it landed"; }
losetup -d "$LD" "$LL"
check_dmesg
step "ok"
