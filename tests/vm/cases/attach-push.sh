#!/bin/sh
# A freshly attached, fully allocated qcow2 serves reads and in-place writes
# without asking its mapping process: after bind the process pushes the
# image's mappings (the RFC's prefetch at attach), so reading the whole
# 64 MiB device costs one miss, for the one compressed cluster a push leaves
# to a miss (it is not decompressed ahead), where without pushes the 4 MiB
# read-ahead of each answer would still take 16.  The data read is the
# image's, the write lands, and the image checks clean after detach.
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
check_dmesg
echo "attach-push: OK"
