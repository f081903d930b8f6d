#!/bin/sh
# A hostile daemon cannot hurt the kernel: for every kind of bad answer the
# daemon checks write() returns what the protocol header promises, only the
# I/O of the affected requests fails (reads/writes elsewhere succeed), errno
# values from COMPLETE reach the caller, dmesg stays free of oops/warnings,
# the module's slab caches return to their baseline after removal and the
# module unloads.  slab_nomerge keeps the module's caches visible by name.
# vm: kernels=6.1,6.12 timeout=420 disks=256M cmdline=slab_nomerge
. /src/tests/kmod/vm-lib.sh
LOG=/tmp/daemon.log

# Active objects of the module's slab caches, "name=count ...".  Shrinking
# first moves objects parked in per-CPU slabs back, so the count is exact.
dmu_slabs() {
  for c in $(awk '$1 ~ /^dmu/ {print $1}' /proc/slabinfo); do
    [ -w "/sys/kernel/slab/$c/shrink" ] && echo 1 >"/sys/kernel/slab/$c/shrink"
  done
  awk '$1 ~ /^dmu/ {printf "%s=%s ", $1, $2}' /proc/slabinfo
}

step "data file, loop device, slab baseline"
data_fs
make_file /data/disk.img 16 /dev/urandom
LOOP=$(loop_dio /data/disk.img)
base=$(dmu_slabs)
echo "slab baseline: $base"
[ -n "$base" ] || { grep -i dmu /proc/slabinfo; fail "no dmu slab caches in /proc/slabinfo"; }

# Kinds after which the request itself fails; duplicate-final answers it
# validly first, so its I/O succeeds.
for kind in bad-dev past-end zero-length overlong unknown-id duplicate-final truncated garbage \
  reserved copy-outside-new; do
  step "hostile kind $kind"
  : >$LOG
  dmu_create h "hk-$kind" 8 "2 daemon_timeout 10" "$LOOP"
  daemon_start $LOG --key "hk-$kind" --mode hostile --hostile "$kind" --blocks 0:4
  expect_ok=0
  [ "$kind" = duplicate-final ] && expect_ok=1
  for blk in 1 2; do
    if read_block /dev/mapper/h 4096 $blk 2>/tmp/dd.err; then got=1; else got=0; fi
    [ $got = $expect_ok ] || { cat /tmp/dd.err $LOG; fail "$kind: read of hostile block $blk: success=$got"; }
  done
  if dd if=/dev/zero of=/dev/mapper/h bs=4096 seek=3 count=1 oflag=direct conv=notrunc status=none \
    2>/tmp/dd.err; then got=1; else got=0; fi
  [ $got = $expect_ok ] || { cat /tmp/dd.err $LOG; fail "$kind: write of hostile block 3: success=$got"; }
  read_block /dev/mapper/h 4096 100 || fail "$kind: read outside the hostile range failed"
  dd if=/dev/zero of=/dev/mapper/h bs=4096 seek=101 count=1 oflag=direct conv=notrunc status=none ||
    fail "$kind: write outside the hostile range failed"
  daemon_stop $LOG
  grep "event=hostile" $LOG
  sent=$(daemon_value $LOG counters hostile_sent)
  expect_ge "$kind: hostile answers sent" 3 "$sent"
  expect_eq "$kind: answers with the promised write() result" "$sent" \
    "$(daemon_value $LOG counters hostile_as_promised)"
  expect_eq "$kind: broken promises" 0 "$(daemon_value $LOG counters hostile_broken)"
  case $kind in
    truncated) ;;  # refused whole before any message is looked at
    *) expect_gt "$kind: kernel counted bad messages" 0 "$(dmu_stat h bad)" ;;
  esac
  timeout 60 dmsetup remove h || fail "$kind: dmsetup remove"
done

step "error mode: COMPLETE with ENOSPC reaches the reader, only in the range"
: >$LOG
dmu_create e err1 8 "" "$LOOP"
daemon_start $LOG --key err1 --mode error --blocks 10:5 --errno 28
if read_block /dev/mapper/e 4096 12 2>/tmp/dd.err; then fail "read in the error range succeeded"; fi
cat /tmp/dd.err
grep -q "No space left on device" /tmp/dd.err || fail "the daemon's errno (ENOSPC) did not reach the reader"
read_block /dev/mapper/e 4096 20 || fail "read outside the error range failed"
read_block /dev/mapper/e 4096 9 || fail "read right before the error range failed"
daemon_stop $LOG
dmsetup remove e || fail "dmsetup remove e"

step "no oops or warning, slabs back to baseline, module unloads"
check_dmesg
after=$(dmu_slabs)
echo "slab after: $after"
expect_eq "active objects of the module's slab caches" "$base" "$after"
losetup -d "$LOOP"
rmmod dm_userspace || fail "rmmod dm_userspace"
grep -q '^dm_userspace ' /proc/modules && fail "dm_userspace still loaded"
save_results kmod-hostile $LOG
step "ok"
