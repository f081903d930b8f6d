#!/bin/sh
# The flush auditor: 4 threads write stamped 4 KiB blocks to the target for
# 12 s, each fdatasync()ing every 1..16 writes and, once fdatasync
# returned, marking the dm-log-writes log under device 0 with
# synced-<thread>-<seq>.  (No soak setting: the log device holds about
# 100 s of writing.)
# Replaying the log, every mark must find all of that thread's writes up to
# seq durable (logged before a FLUSH that precedes the mark, or FUA), at the
# same offset of device 0 with the identity daemon, and through the map the
# model daemon committed (its slots, written through /dev/mapper/lw) with the
# model daemon.  A kernel that acknowledges a flush before the data it covers
# is durable on device 0 fails, naming the mark, the thread and the block.
# vm: kernels=6.1,6.12 timeout=900 mem=1024 disks=1G
. /src/tests/kmod/vm-lib.sh
WRITE_SECONDS=12
OUT=/tmp/audit
mkdir -p $OUT
data_fs

# audit NAME LAYOUT DAEMON-ARGS...: the target over dm-log-writes over a
# loop device, served by dmu-test-daemon DAEMON-ARGS; the writer; then the
# log verified with LAYOUT, with the writer's journal and without it.
audit() {
  _n=$1 _layout=$2
  shift 2
  _log=$OUT/daemon-$_n.log
  step "$_n: data on dm-log-writes over a loop device, log on another"
  make_file /data/data-$_n.img 64
  # 4.5 KiB of log per 4 KiB write (a header sector and the data); sparse.
  truncate -s 384M /data/log-$_n.img || fail "create /data/log-$_n.img"
  LD=$(loop_dio /data/data-$_n.img)
  LL=$(loop_dio /data/log-$_n.img)
  echo "0 $(blockdev --getsz "$LD") log-writes $LD $LL" | dmsetup create lw ||
    fail "create log-writes"
  dmsetup mknodes
  dmu_create u fa1 8 "" /dev/mapper/lw
  daemon_start $_log --key fa1 --mark-device lw "$@"

  step "$_n: 4 writer threads, $WRITE_SECONDS s, fdatasync every 1..16 writes, a mark after each"
  dmu-flush-audit write --device /dev/mapper/u --mark-device lw --threads 4 --region-mib 48 \
    --seconds $WRITE_SECONDS --fsync-every 16 --journal $OUT/journal-$_n.txt >$OUT/writer-$_n.txt 2>&1
  _rc=$?
  cat $OUT/writer-$_n.txt
  [ $_rc = 0 ] || fail "$_n: dmu-flush-audit write exited with $_rc"
  expect_gt "fsyncs" 0 "$(sed -n 's/.* fsyncs=\([0-9]*\) .*/\1/p' $OUT/writer-$_n.txt)"
  dmsetup status lw | tee $OUT/lw-status-$_n.txt
  grep -q logging_disabled $OUT/lw-status-$_n.txt &&
    fail "$_n: dm-log-writes stopped logging (log device full?)"
  daemon_stop $_log
  grep -q "event=mark_failed" $_log && fail "$_n: the daemon could not mark the log"
  dmsetup remove u || fail "remove u"
  dmsetup remove lw || fail "remove lw"

  step "$_n: replay the log: every synced mark finds its writes durable ($_layout)"
  # With the journal every write the writer made is expected; without it the
  # writes are learnt from the log's stamps (and a write logged only after
  # its mark is reported).  Both must pass.
  dmu-flush-audit verify --log "$LL" --layout $_layout --journal $OUT/journal-$_n.txt \
    >$OUT/verify-$_n.txt 2>&1
  _rc=$?
  dmu-flush-audit verify --log "$LL" --layout $_layout >$OUT/verify-log-only-$_n.txt 2>&1
  _rc2=$?
  tail -2 $OUT/verify-$_n.txt
  tail -1 $OUT/verify-log-only-$_n.txt
  if [ $_rc != 0 ] || [ $_rc2 != 0 ]; then
    dmu-log-writes-dump "$LL" >$OUT/log-$_n.txt 2>&1
    save_results kmod-flush-audit $OUT/*
    head -40 $OUT/verify-$_n.txt
    fail "$_n: flush audit failed (journal: rc=$_rc, log only: rc=$_rc2); see results/kmod-flush-audit"
  fi
  expect_gt "$_n: marks checked" 0 \
    "$(sed -n 's/^dmu-flush-audit: marks=\([0-9]*\) .*/\1/p' $OUT/verify-$_n.txt)"
  losetup -d "$LD" "$LL"
  rm -f /data/data-$_n.img /data/log-$_n.img
}

audit identity identity --mode identity
audit model model --mode model --model-device /dev/mapper/lw
save_results kmod-flush-audit $OUT/writer-* $OUT/verify-* $OUT/daemon-*
check_dmesg
step "ok"
