#!/bin/sh
# A freshly attached, fully allocated qcow2 serves reads and in-place writes
# without asking its mapping process: after bind the process pushes the
# image's mappings (the RFC's prefetch at attach), so reading the whole
# 64 MiB device costs one miss, for the one compressed cluster a push leaves
# to a miss (it is not decompressed ahead), where without pushes the 4 MiB
# read-ahead of each answer would still take 16.  The data read is the
# image's, the write lands, and the image checks clean after detach.  Then
# a sequential reader of an empty 1 GiB image, whose cache the kernel has
# dropped: pushes ahead of it cut its misses more than fivefold against a
# run without them (DMU_STREAM_PUSH=0), where every 4 MiB costs a miss.
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

# seq_read NAME: reads all of /dev/mapper/NAME once the kernel has dropped
# what the push at attach gave it; prints "MISSES MS".
seq_read() {
  dmsetup message "$1" 0 invalidate || fail "invalidate $1"
  _m0=$(dmu_stat "$1" misses)
  _t0=$(now_ms)
  dd if="/dev/mapper/$1" of=/dev/null bs=1M iflag=direct status=none || fail "read $1"
  echo "$(($(dmu_stat "$1" misses) - _m0)) $(($(now_ms) - _t0))"
}

step "a sequential reader: pushes ahead of it (the RFC's prefetch after a sequential miss)"
# 1 GiB, nothing allocated: each read answer maps the asked 1 MiB and 4 MiB
# beyond; a reader that keeps coming back where the last answer or push
# ended gets pushes of 8, 16, 32 and then 64 MiB ahead of it.
qemu-img create -q -f qcow2 seq.qcow2 1G || fail "qemu-img create seq"
dmu attach --name sq /data/seq.qcow2 >/dev/null || fail "dmu attach seq"
set -- $(seq_read sq)
with_misses=$1 with_ms=$2
sleep 1.5  # the mapping process rewrites its counters about once a second
stream_pushed=$(daemon_counter sq stream-pushed)
dmu detach sq || fail "dmu detach sq"
DMU_STREAM_PUSH=0 dmu attach --name sq /data/seq.qcow2 >/dev/null || fail "dmu attach seq"
set -- $(seq_read sq)
without_misses=$1 without_ms=$2
sleep 1.5
expect_eq "extents pushed ahead with DMU_STREAM_PUSH=0" 0 "$(daemon_counter sq stream-pushed)"
dmu detach sq || fail "dmu detach sq"
echo "1 GiB read sequentially: $with_misses misses in $with_ms ms with pushes ahead" \
  "($stream_pushed extents pushed), $without_misses misses in $without_ms ms without"
expect_gt "extents pushed ahead of the reader" 0 "$stream_pushed"
# A kernel that splits the 1 MiB reads sends one miss per piece (6.12: about
# four), so the two runs are compared, not counted against a fixed number.
[ $((with_misses * 5)) -le "$without_misses" ] ||
  fail "$with_misses misses reading 1 GiB, $without_misses without pushes: the pushes did not keep ahead"
[ "$without_misses" -ge 150 ] ||
  fail "only $without_misses misses without pushes: the comparison measures nothing"
rm -f seq.qcow2

check_dmesg
echo "attach-push: OK"
