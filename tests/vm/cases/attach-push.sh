#!/bin/sh
# A freshly attached, fully allocated qcow2 serves reads and in-place writes
# without asking its mapping process: after bind the process pushes the
# image's mappings (the RFC's prefetch at attach), so reading the whole
# 64 MiB device costs one miss, for the one compressed cluster a push leaves
# to a miss (it is not decompressed ahead), where without pushes the 4 MiB
# read-ahead of each answer would still take 16.  The data read is the
# image's, the write lands, and the image checks clean after detach.  Then
# a sequential reader of a 256 MiB image (data and holes), whose cache the
# kernel has dropped: it reads the image's bytes, and pushes ahead of it
# cut the MAPs the kernel sends more than fivefold against a run without
# them (DMU_STREAM_PUSH=0), where every 4 MiB costs one.
# vm: kernels=6.1,6.12 timeout=300 mem=1024 disks=1G boot=attach-short
. /src/tests/kmod/vm-lib.sh
. /src/tests/vm/lib/guest/attach-lib.sh

step "a 64 MiB qcow2, every cluster allocated, one of them compressed"
data_fs
cd /data || fail "cd /data"
qemu-img create -q -f qcow2 full.qcow2 64M || fail "qemu-img create"
qemu-io -c "write -P 0x6d 0 1M" -c "write -c -P 0x33 1M 64k" -c "write -P 0x6e 1088k 64448k" \
  full.qcow2 >/dev/null || fail "qemu-io fill"
qemu-img convert -O raw full.qcow2 expected.raw || fail "qemu-img convert"

step "attach: the mapping process pushes the image's mappings"
dev=$(dmu attach --name p full.qcow2) || fail "dmu attach"
i=0
until grep -q "pushed [0-9]* extents" /run/dmu/p.log 2>/dev/null; do
  i=$((i + 1))
  [ $i -lt 100 ] || fail "the mapping process did not finish a push within 10 s"
  sleep 0.1
done
grep "pushed [0-9]* extents" /run/dmu/p.log
dmsetup status p
pushed=$(dmu_stat p pushed)
misses0=$(dmu_stat p misses)
expect_gt "extents the kernel took from the push" 0 "$pushed"

step "reading the whole device asks for the compressed cluster only"
cmp "$dev" expected.raw || fail "the device does not read as the image"
misses1=$(dmu_stat p misses)
dmsetup status p
echo "misses while reading 64 MiB: $((misses1 - misses0)) (pushed=$pushed, pushed_used=$(dmu_stat p pushed_used))"
[ $((misses1 - misses0)) -le 2 ] || fail "$((misses1 - misses0)) misses: the push did not cover the image"
expect_gt "pushed extents used" 0 "$(dmu_stat p pushed_used)"

step "an in-place write to an allocated cluster needs no answer either"
dd if=/dev/zero bs=64k count=16 status=none | tr '\0' '\167' >/tmp/w
dd if=/tmp/w of="$dev" bs=64k seek=128 count=16 oflag=direct conv=notrunc status=none ||
  fail "write"
expect_eq "misses after the write" "$misses1" "$(dmu_stat p misses)"

step "detach: the write is in the image, which checks clean"
dmu detach p || fail "dmu detach"
qemu-img check -q full.qcow2 || fail "qemu-img check"
qemu-io -c "read -P 0x77 8M 1M" -c "read -P 0x33 1M 64k" -c "read -P 0x6e 9M 55M" full.qcow2 \
  >/tmp/io.log || { cat /tmp/io.log; fail "the image does not hold what was written"; }

# seq_read NAME: once the push at attach is over, drops the kernel's cache
# and reads all of /dev/mapper/NAME into /data/NAME.read; prints
# "REQUESTS MS": the MAPs the kernel sent (its misses count every bio that
# missed, and 6.12 splits each 1 MiB read into pieces that miss together).
seq_read() {
  wait_until 20 "the push at attach of $1" grep -q "pushed [0-9]* extents" "/run/dmu/$1.log"
  dmsetup message "$1" 0 invalidate || fail "invalidate $1"
  _m0=$(dmu_stat "$1" requests)
  _t0=$(now_ms)
  dd if="/dev/mapper/$1" of="/data/$1.read" bs=1M iflag=direct status=none || fail "read $1"
  echo "$(($(dmu_stat "$1" requests) - _m0)) $(($(now_ms) - _t0))"
}

step "a sequential reader: pushes ahead of it (the RFC's prefetch after a sequential miss)"
# 256 MiB, 4 MiB of data every 8 MiB, holes between: each read answer maps
# the asked 1 MiB and 4 MiB beyond; a reader that keeps coming back where
# the last answer or push ended gets pushes of 8, 16, 32 and then 64 MiB
# ahead of it.  What it reads must be the image's.
truncate -s 256M seq.raw || fail "truncate seq.raw"
i=0
while [ $i -lt 32 ]; do
  dd if=/dev/urandom of=seq.raw bs=1M seek=$((i * 8)) count=4 conv=notrunc status=none ||
    fail "fill seq.raw"
  i=$((i + 1))
done
qemu-img convert -O qcow2 seq.raw seq.qcow2 || fail "qemu-img convert seq"
for mode in with without; do
  rm -f /run/dmu/sq.log
  if [ $mode = with ]; then
    dmu attach --name sq /data/seq.qcow2 >/dev/null || fail "dmu attach seq"
  else
    DMU_STREAM_PUSH=0 dmu attach --name sq /data/seq.qcow2 >/dev/null || fail "dmu attach seq"
  fi
  set -- $(seq_read sq)
  eval "${mode}_asked=$1 ${mode}_ms=$2"
  cmp sq.read seq.raw || fail "$mode pushes ahead: the device did not read as the image"
  sleep 1.5  # the mapping process rewrites its counters about once a second
  eval "${mode}_pushed=$(daemon_counter sq stream-pushed)"
  echo "$mode pushes ahead: $(dmsetup status sq | cut -d' ' -f4-9), map-reads" \
    "$(daemon_counter sq map-reads), pushed ahead $(daemon_counter sq stream-pushed)"
  dmu detach sq || fail "dmu detach sq"
done
echo "256 MiB read sequentially: $with_asked MAPs in $with_ms ms with pushes ahead" \
  "($with_pushed extents pushed), $without_asked MAPs in $without_ms ms without"
expect_gt "extents pushed ahead of the reader" 0 "$with_pushed"
expect_eq "extents pushed ahead with DMU_STREAM_PUSH=0" 0 "$without_pushed"
[ $((with_asked * 5)) -le "$without_asked" ] ||
  fail "$with_asked MAPs, $without_asked without pushes: the pushes did not keep ahead"
[ "$without_asked" -ge 50 ] ||
  fail "only $without_asked MAPs without pushes: the comparison measures nothing"
rm -f seq.raw seq.qcow2 sq.read

check_dmesg
echo "attach-push: OK"
