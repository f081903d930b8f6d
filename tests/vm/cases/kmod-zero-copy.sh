#!/bin/sh
# ZERO extents: reads return zeros without touching the device (the loop
# device's read count does not move, zero_reads does), and a NEW extent
# without COPY is zero-filled around the write.  Copy-then-remap: a write to
# a block whose old data is on dev 0 lands on dev 1 with the rest of the block
# copied from dev 0 (or zeroed where no COPY covers it): exact bytes compared.
# vm: kernels=6.1,6.12 timeout=300 disks=256M boot=kmod-short
. /src/tests/kmod/vm-lib.sh
LOG=/tmp/daemon.log
BS=65536  # 128-sector blocks

step "two 16 MiB files: A (old data, random) and B (scratch, random)"
data_fs
make_file /data/a.img 16 /dev/urandom
make_file /data/b.img 16 /dev/urandom
cp /data/a.img /tmp/a.orig
cp /data/b.img /tmp/b.orig
LA=$(loop_dio /data/a.img)
LB=$(loop_dio /data/b.img)
dd if=/dev/urandom of=/tmp/c bs=4096 count=1 status=none

step "zero mode: reads of unwritten blocks are zeros without device I/O"
dmu_create z zero1 128 "" "$LA"
daemon_start $LOG --key zero1 --mode zero --extent-blocks 16
reads0=$(loop_reads "$LA")
zr0=$(dmu_stat z zero_reads)
dd if=/dev/mapper/z of=/tmp/z.read bs=$BS count=64 iflag=direct status=none || fail "read zero extents"
cmp -n $((BS * 64)) /tmp/z.read /dev/zero || fail "ZERO extents did not read as zeros"
expect_eq "loop device reads during zero reads" "$reads0" "$(loop_reads "$LA")"
expect_gt "kernel zero_reads" "$zr0" "$(dmu_stat z zero_reads)"

step "zero mode: a 4 KiB write into block 5 gets a zero-filled NEW extent"
dd if=/tmp/c of=/dev/mapper/z bs=4096 seek=$((5 * 16 + 2)) oflag=direct conv=notrunc status=none ||
  fail "write into a ZERO block"
head -c $BS /dev/zero >/tmp/expect5
dd if=/tmp/c of=/tmp/expect5 bs=4096 seek=2 conv=notrunc status=none
dd if=/dev/mapper/z of=/tmp/got5 bs=$BS skip=5 count=1 iflag=direct status=none
cmp /tmp/expect5 /tmp/got5 || fail "block 5 through the target is not zeros + the write"
dd if="$LA" of=/tmp/dev5 bs=$BS skip=5 count=1 iflag=direct status=none
cmp /tmp/expect5 /tmp/dev5 || fail "block 5 on the device was not zero-filled around the write"
dd if="$LA" of=/tmp/dev4 bs=$BS skip=4 count=1 iflag=direct status=none
dd if=/tmp/a.orig of=/tmp/orig4 bs=$BS skip=4 count=1 status=none
cmp /tmp/orig4 /tmp/dev4 || fail "block 4 on the device changed although nobody wrote it"
daemon_stop $LOG
expect_eq "DONE with errors" 0 "$(daemon_value $LOG counters done_errors)"
expect_gt "DONE for the NEW extent" 0 "$(daemon_value $LOG counters dones)"
dmsetup remove z || fail "dmsetup remove z"
cp /tmp/a.orig /tmp/a.now
dd if=/tmp/expect5 of=/tmp/a.now bs=$BS seek=5 conv=notrunc status=none
dd if="$LA" of=/tmp/a.dev bs=1M iflag=direct status=none
cmp /tmp/a.now /tmp/a.dev || fail "dev 0 differs outside block 5 after zero mode"

step "copy mode: writes land on dev 1, the rest of the block copied from dev 0"
dmu_create c copy1 128 "" "$LA" "$LB"
daemon_start $LOG --key copy1 --mode copy --extent-blocks 4
# 4 KiB at 8 KiB into block 7; 512 bytes at 1536 into block 9.
dd if=/tmp/c of=/dev/mapper/c bs=4096 seek=$((7 * 16 + 2)) oflag=direct conv=notrunc status=none ||
  fail "write into block 7"
dd if=/tmp/c of=/dev/mapper/c bs=512 count=1 seek=$((9 * 128 + 3)) oflag=direct conv=notrunc status=none ||
  fail "write into block 9"
cp /tmp/a.now /tmp/expect
dd if=/tmp/c of=/tmp/expect bs=4096 seek=$((7 * 16 + 2)) conv=notrunc status=none
dd if=/tmp/c of=/tmp/expect bs=512 count=1 seek=$((9 * 128 + 3)) conv=notrunc status=none
dd if=/dev/mapper/c of=/tmp/got bs=1M iflag=direct status=none || fail "read the copy target"
cmp /tmp/expect /tmp/got || fail "copy target does not read old data + the writes"
dd if="$LA" of=/tmp/a.dev bs=1M iflag=direct status=none
cmp /tmp/a.now /tmp/a.dev || fail "dev 0 was written in copy mode"
dd if="$LB" of=/tmp/b.dev bs=1M iflag=direct status=none
cp /tmp/b.orig /tmp/b.expect
for blk in 7 9; do
  dd if=/tmp/expect of=/tmp/b.expect bs=$BS skip=$blk seek=$blk count=1 conv=notrunc status=none
done
cmp /tmp/b.expect /tmp/b.dev || fail "dev 1 is not old data + writes in blocks 7 and 9 (and untouched elsewhere)"
daemon_stop $LOG
expect_eq "DONE with errors" 0 "$(daemon_value $LOG counters done_errors)"
expect_ge "DONE for the two NEW extents" 2 "$(daemon_value $LOG counters dones)"
expect_gt "kernel fills" 0 "$(dmu_stat c fills)"
dmsetup remove c || fail "dmsetup remove c"

step "copy mode, COPY for only the first half of each block: the rest is zeroed"
dmu_create h copy2 128 "" "$LA" "$LB"
daemon_start $LOG --key copy2 --mode copy --copy-half
dd if=/tmp/c of=/dev/mapper/h bs=4096 seek=$((11 * 16)) oflag=direct conv=notrunc status=none ||
  fail "write into block 11"
dd if=/tmp/a.now of=/tmp/expect11 bs=$BS skip=11 count=1 status=none
dd if=/dev/zero of=/tmp/expect11 bs=$((BS / 2)) seek=1 count=1 conv=notrunc status=none
dd if=/tmp/c of=/tmp/expect11 bs=4096 conv=notrunc status=none
dd if=/dev/mapper/h of=/tmp/got11 bs=$BS skip=11 count=1 iflag=direct status=none
cmp /tmp/expect11 /tmp/got11 || fail "block 11: write + first half copied + second half zeros expected"
daemon_stop $LOG
dmsetup remove h || fail "dmsetup remove h"
losetup -d "$LA" "$LB"
save_results kmod-zero-copy $LOG
check_dmesg
step "ok"
