#!/bin/sh
# A daemon whose COMMITs keep failing cannot make the kernel keep unbounded
# state: once max_unpublished answers wait to be published, new MAP requests
# are held back (status `held`), the daemon is sent nothing more and the
# count of allocation records stops growing.  Held requests fail after
# daemon_timeout; once the same daemon can commit again, the kernel's own
# retry releases them without the guest's help, and every write lands.
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
# At most DEPTH requests were out when holding started.
[ "$r1" -le $((LIMIT + DEPTH)) ] || fail "records: expected <= $((LIMIT + DEPTH)), got $r1"
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
t0=$(now_ms)
rm /tmp/fail-commits
wait $WRITER || { cat /tmp/fio2.log; fail "the writer failed after the daemon could commit again"; }
grep -q "err= 0" /tmp/fio2.log || { cat /tmp/fio2.log; fail "fio saw I/O errors"; }
echo "released and written in $(($(now_ms) - t0)) ms: $(dmsetup status hd)"
expect_eq "held after release" 0 "$(dmu_stat hd held)"
daemon_stop $LOG
save_results kmod-held $LOG /tmp/fio1.log /tmp/fio2.log
dmsetup remove hd || fail "remove hd"
losetup -d "$LOOP"
check_dmesg
