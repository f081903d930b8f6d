#!/bin/sh
# A daemon whose COMMITs keep failing cannot make the kernel keep unbounded
# state: once max_unpublished answers wait to be published, new MAP requests
# are held back (status `held`), the daemon is sent nothing more and the
# count of allocation records stops growing.  Held requests fail after
# daemon_timeout; once the same daemon can commit again, the kernel's own
# retry releases them without the guest's help, and every write lands.
# A noflush suspend (a table reload) does not wait for held writes: dm core
# gets them back and issues them again after resume.  MAP requests out with
# the daemon count against the limit as well, and its answers release held
# ones without a COMMIT.
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

# wait_held NAME LOG: until the device holds DEPTH requests, all the writer
# can have out, while the writer runs (at most 200 s).  (Not `pending`: it
# also counts the kernel's own COMMITs, retried every second.)
wait_held() {
  _end=$(($(now_ms) + 200000))
  while [ "$(dmu_stat "$1" held)" != $DEPTH ]; do
    kill -0 $WRITER 2>/dev/null || { cat "$2"; fail "$1: the writer ended, nothing held ($(dmsetup status "$1"))"; }
    [ "$(now_ms)" -lt $_end ] || fail "$1: no MAP request held after 200 s ($(dmsetup status "$1"))"
    sleep 0.2
  done
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

step "failing COMMITs: writes stop at $LIMIT records; held ones fail after daemon_timeout 20"
# 20 s: the checks below must end before the held writes fail, on the
# debug kernel too (10 misses a second there).
dmu_create hd hd1 8 "4 daemon_timeout 20 max_extents 100000" "$LOOP"
touch /tmp/fail-commits
daemon_start $LOG --key hd1 --mode zero --commit-errno 28 --commit-errno-while /tmp/fail-commits
t0=$(now_ms)
writer_start /dev/mapper/hd /tmp/fio1.log
wait_held hd /tmp/fio1.log
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
expect_ge "ms until held writes failed" 15000 $((t2 - t1))
expect_eq "held after the timeout" 0 "$(dmu_stat hd held)"
expect_gt "timeouts" 0 "$(dmu_stat hd timeouts)"
expect_eq "records after the timeout" "$r1" "$(dmu_stat hd unpublished)"
expect_eq "daemon stays bound" bound "$(dmu_stat hd daemon)"
daemon_report $LOG
expect_gt "COMMITs the daemon failed" 0 "$(daemon_value $LOG counters commit_errors)"

step "the same writes wait (daemon_timeout 120) until the same daemon commits again"
SZ=$(blockdev --getsz "$LOOP")
dmsetup reload hd --table "0 $SZ userspace hd1 8 1 $LOOP 4 daemon_timeout 120 max_extents 100000" ||
  fail "reload hd"
dmsetup resume hd || fail "resume hd"
writer_start /dev/mapper/hd /tmp/fio2.log
wait_held hd /tmp/fio2.log
sleep 3
kill -0 $WRITER 2>/dev/null || { cat /tmp/fio2.log; fail "the writer ended while held again"; }
expect_eq "records while held again" "$r1" "$(dmu_stat hd unpublished)"

step "a noflush suspend and reload while writes are held: dm core gets them back, held again after resume"
# Only a COMMIT releases held writes, and this daemon cannot give one:
# the suspend must hand them back, not wait (here up to daemon_timeout
# 120; 60 s leaves room for a slow debug kernel).
rq=$(dmu_stat hd requeued)
t0=$(now_ms)
timeout 60 dmsetup suspend --noflush hd ||
  fail "a noflush suspend did not end within 60 s while writes were held ($(dmsetup status hd))"
echo "suspended in $(($(now_ms) - t0)) ms: $(dmsetup status hd)"
expect_eq "held while suspended" 0 "$(dmu_stat hd held)"
expect_ge "bios handed back to dm core" $((rq + DEPTH)) "$(dmu_stat hd requeued)"
dmsetup reload hd --table "0 $SZ userspace hd1 8 1 $LOOP 4 daemon_timeout 120 max_extents 100000" ||
  fail "reload hd while suspended"
dmsetup resume hd || fail "resume hd after the reload"
wait_held hd /tmp/fio2.log
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

step "MAPs out count too: max_unpublished 4, a stopped daemon is sent 4 reads, the rest go as answers come back"
# Reads answered with zero extents start no tracker: only the MAPs out
# with the daemon fill the room, and only its answers (no COMMIT) free it.
echo 4 >$PARAM || fail "cannot set max_unpublished 4"
dmu_create hr hr1 8 "2 daemon_timeout 30" "$LOOP"
daemon_start /tmp/reads.log --key hr1 --mode zero
kill -STOP "$DAEMON_PID"
fio --name=reads --filename=/dev/mapper/hr --rw=read --bs=4k --size=${MIB}M --direct=1 \
  --ioengine=libaio --iodepth=16 --number_ios=512 >/tmp/fio3.log 2>&1 &
READER=$!
_end=$(($(now_ms) + 60000))
while [ "$(dmu_stat hr held)" != 12 ]; do
  [ "$(now_ms)" -lt $_end ] || fail "not 12 reads held after 60 s ($(dmsetup status hr))"
  sleep 0.2
done
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
wait $READER || { cat /tmp/fio3.log; fail "the reader failed"; }
grep -q "err= 0" /tmp/fio3.log || { cat /tmp/fio3.log; fail "fio saw read errors"; }
echo "512 reads done in $(($(now_ms) - t0)) ms: $(dmsetup status hr)"
expect_eq "held at the end" 0 "$(dmu_stat hr held)"
expect_eq "timeouts" 0 "$(dmu_stat hr timeouts)"
daemon_stop /tmp/reads.log
dmsetup remove hr || fail "remove hr"
save_results kmod-held $LOG /tmp/fio1.log /tmp/fio2.log /tmp/reads.log /tmp/fio3.log
losetup -d "$LOOP"
check_dmesg
