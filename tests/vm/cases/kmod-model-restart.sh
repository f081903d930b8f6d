#!/bin/sh
# The model daemon (dmu-test-daemon --mode model: a small allocating format on
# device 0, tests/kmod/model_format.h) is killed -9 again and again, sometimes
# at a chosen request (--kill-after-requests), and the table is reloaded, with
# and without a daemon bound, while fio writes with fsyncs and verifies and a
# second writer discards and rewrites another region (so freed clusters are
# handed to fio's allocations soon).  Zero I/O errors, fio's verify passes,
# and after the daemon's last commit a fresh target with a fresh daemon reads
# back what fio wrote: fio verifies again and the whole device reads the same.
# vm: kernels=6.1,6.12 timeout=420 debug_timeout=6300 mem=1024 disks=1G
. /src/tests/kmod/vm-lib.sh
LOG=/tmp/daemon.log
KEY=mr1
BS=8                      # 4 KiB blocks
VSIZE_MB=64               # virtual size of the target
VSECTORS=$((VSIZE_MB * 2048))
TABLE_OPTS="2 daemon_timeout 60"

step "device 0: dm-log-writes over a direct-I/O loop device, log on another"
data_fs
# 4 MiB of map slots, then 92 MiB of clusters: more than the 64 MiB fio and
# the discard writer can map at once, so nothing runs out of space.
make_file /data/data.img 96
make_file /data/log.img 320
LD=$(loop_dio /data/data.img)
LL=$(loop_dio /data/log.img)
echo "0 $(blockdev --getsz "$LD") log-writes $LD $LL" | dmsetup create lw || fail "create log-writes"
dmsetup mknodes
table() {
  echo "0 $VSECTORS userspace $1 $BS 1 /dev/mapper/lw $TABLE_OPTS"
}
table $KEY | dmsetup create u || fail "dmsetup create u"
dmsetup mknodes

# model_start LOG ARGS...: the model daemon of key $KEY on device 0.
model_start() {
  _l=$1
  shift
  daemon_start "$_l" --key "$KEY" --mode model --model-device /dev/mapper/lw --mark-device lw \
    --bind-wait-ms 10000 "$@"
}
model_start $LOG
grep -q "event=adopted records=0 " $LOG || fail "a fresh target listed allocation records"

# reload [noflush]: the same table again; the target keeps its state.
reload() {
  if [ "$1" = noflush ]; then
    dmsetup suspend --noflush u || fail "suspend --noflush u"
  fi
  table $KEY | dmsetup reload u || fail "dmsetup reload u"
  dmsetup resume u || fail "dmsetup resume u"
  RELOADS=$((RELOADS + 1))
}
RELOADS=0

step "fio: 4 jobs of random writes with fsync every 4 writes and crc32c verify"
# Each job has its own 12 MiB region, so each verifies only its own writes.
# Eight passes: fio must outlast at least four restarts (2-4 s apart); with
# three it once finished after three on an idle 6.1 guest.  The debug
# kernel runs a pass several times slower: three outlast the twelve rounds
# there, where eight kept the case waiting for fio over half an hour.
loops=8
case $(uname -r) in *debug*) loops=3 ;; esac
fio --name=model --filename=/dev/mapper/u --rw=randwrite --bsrange=4k-64k --size=12M \
  --numjobs=4 --offset_increment=12M --direct=1 --ioengine=libaio --iodepth=8 --fsync=4 \
  --loops=$loops --verify=crc32c --verify_fatal=1 --do_verify=1 --randseed=4242 --group_reporting \
  >/tmp/fio.log 2>&1 &
FIO=$!

# Beside fio: write and discard blocks of [48 MiB, 64 MiB) (4 KiB blocks
# 12288..16383) until fio is done.  Discarded clusters become free at the
# discard's DONE and are the lowest free ones, so fio's next allocations get
# them: a discard whose old I/O were still in flight would corrupt fio's data.
(
  i=0
  while kill -0 $FIO 2>/dev/null; do
    b=$((12288 + (i * 37) % 4096))
    dd if=/dev/urandom of=/dev/mapper/u bs=4096 seek=$b count=4 oflag=direct conv=notrunc \
      status=none || { echo "discarder: write at $b failed"; exit 1; }
    blkdiscard -o $((b * 4096)) -l 16384 /dev/mapper/u || { echo "discarder: discard at $b failed"; exit 1; }
    i=$((i + 1))
  done
) >/tmp/discarder.log 2>&1 &
DISCARDER=$!

step "kill -9 and restart the daemon while fio runs; reload the table now and then"
round=0 RESTARTS=0
while kill -0 $FIO 2>/dev/null && [ $round -lt 12 ]; do
  round=$((round + 1))
  sleep $((2 + round % 3))
  kill -0 $FIO 2>/dev/null || break
  kill -9 "$DAEMON_PID"
  wait "$DAEMON_PID" 2>/dev/null
  RESTARTS=$((RESTARTS + 1))
  case $((round % 4)) in
    0)  # no daemon bound: a noflush suspend hands waiting I/O back, resume issues it again
      reload noflush
      model_start $LOG
      ;;
    1)  # a daemon that dies by itself right after handling a chosen request
      model_start $LOG --kill-after-requests $((20 + round * 13))
      i=0
      while kill -0 "$DAEMON_PID" 2>/dev/null && [ $i -lt 300 ]; do
        sleep 0.1
        i=$((i + 1))
      done
      kill -9 "$DAEMON_PID" 2>/dev/null
      wait "$DAEMON_PID" 2>/dev/null
      model_start $LOG
      ;;
    2)  # restart, then reload under the new daemon
      model_start $LOG
      reload
      ;;
    3)
      model_start $LOG
      ;;
  esac
  adopted=$(daemon_value $LOG adopted records)
  echo "round $round: adopted $adopted records, resent $(daemon_value $LOG bind resent)"
done
expect_ge "daemon restarts" 4 $RESTARTS
expect_ge "table reloads" 1 $RELOADS

wait $FIO || { cat /tmp/fio.log; fail "fio failed across daemon restarts and reloads"; }
wait $DISCARDER || { cat /tmp/discarder.log; fail "the discard writer failed"; }
grep -q "err= 0" /tmp/fio.log || { cat /tmp/fio.log; fail "fio saw I/O errors"; }
grep -qi "verify.*fail\|bad magic\|crc32c.*mismatch" /tmp/fio.log && { cat /tmp/fio.log; fail "fio verify"; }
expect_eq "kernel timeouts" 0 "$(dmu_stat u timeouts)"
expect_eq "bad daemon messages" 0 "$(dmu_stat u bad)"
expect_gt "requests resent to new daemons" 0 "$(dmu_stat u resent)"
grep "event=adopted" $LOG | awk '{for (f = 1; f <= NF; f++) if ($f ~ /^records=/) { split($f, kv, "="); n += kv[2] } } END { print "records adopted in all: " n }'
grep -q "event=done .*what=discard" $LOG || fail "no discard DONE reached a daemon"
grep "event=model " $LOG | tail -1
grep -q "done_mismatch=[1-9]" $LOG && fail "a DONE did not repeat its MAP's flags and range"

step "flush, so the last commit covers every completed write; stop the daemon"
# fsync of the device: a flush, hence a COMMIT when anything was written
dd if=/dev/null of=/dev/mapper/u conv=fsync,notrunc status=none || fail "flush /dev/mapper/u"
dd if=/dev/mapper/u bs=1M iflag=direct status=none | sha256sum >/tmp/before.sum
daemon_stop $LOG
grep -q "event=final_commit .*status=0" $LOG || fail "the daemon's final commit failed"
dmsetup remove u || fail "dmsetup remove u"

step "a fresh target and daemon over the same device read back what fio wrote"
: >/tmp/fresh.log
table mr2 | dmsetup create u || fail "dmsetup create u (fresh)"
dmsetup mknodes
KEY=mr2
model_start /tmp/fresh.log
grep -q "event=adopted records=0 " /tmp/fresh.log || fail "a fresh target listed allocation records"
grep "event=model_loaded" /tmp/fresh.log
dd if=/dev/mapper/u bs=1M iflag=direct status=none | sha256sum >/tmp/after.sum
cmp -s /tmp/before.sum /tmp/after.sum || fail "the committed map and data differ from what was written"
fio --name=model --filename=/dev/mapper/u --rw=randwrite --bsrange=4k-64k --size=12M \
  --numjobs=4 --offset_increment=12M --direct=1 --ioengine=libaio --iodepth=8 \
  --verify=crc32c --verify_fatal=1 --verify_only --randseed=4242 --group_reporting \
  >/tmp/fio-verify.log 2>&1 || { cat /tmp/fio-verify.log; fail "fio verify through a fresh daemon"; }
grep -q "err= 0" /tmp/fio-verify.log || { cat /tmp/fio-verify.log; fail "fio verify saw errors"; }
daemon_stop /tmp/fresh.log
dmsetup remove u || fail "dmsetup remove u (fresh)"
dmsetup remove lw || fail "dmsetup remove lw"
dmu-log-writes-dump "$LL" | grep -c "mark=committed-" | sed 's/^/commits in the dm-log-writes log: /'
losetup -d "$LD" "$LL"
save_results kmod-model-restart $LOG /tmp/fresh.log /tmp/fio.log /tmp/fio-verify.log /tmp/discarder.log
check_dmesg
step "ok"
