#!/bin/sh
# Copy-on-write below the cluster size: a qcow2 with 64 KiB clusters over a
# backing image of random bytes (every sector distinct) is attached, and fio
# does 4 KiB random writes with verify and fsyncs, each write in part of a
# cluster only (the start, the middle, the end).  fio's verify passes; every
# byte the writes did not cover still reads as the backing image's, while
# attached and after detach and a new attach (where fio verifies again); the
# top image alone (its backing link cut) holds those bytes in the clusters
# the writes allocated, so they were copied, not left behind; qemu-img check
# finds the image clean.
# vm: kernels=6.1,6.12 timeout=600 mem=1024 disks=1G boot=attach-short
. /src/tests/kmod/vm-lib.sh
. /src/tests/vm/lib/guest/attach-lib.sh

K=1024
M=1048576
CLUSTER=65536
SIZE=$((32 * M))

# Three 8 MiB regions, each written in one part of every cluster (offset
# into the cluster, bytes): the middle, the start, the end.  The last 8 MiB
# are not written at all.  "START OFFSET BYTES" per region.
REGIONS="0 $((20 * K)) $((8 * K))
$((8 * M)) 0 $((12 * K))
$((16 * M)) $((60 * K)) $((4 * K))"
UNTOUCHED=$((24 * M))

# fio's job: one job per region, zones of the written part every cluster
# (zonemode=strided: zonesize bytes in the zone, then skip to the next
# cluster; io_size stops after one pass), random 4 KiB writes within a zone,
# an fsync every 8 writes.  FIO_DEV names the device.
fio_job() {
  cat <<EOF
[global]
filename=\${FIO_DEV}
bs=4k
rw=randwrite
direct=1
ioengine=libaio
iodepth=4
fsync=8
verify=crc32c
verify_fatal=1
do_verify=1
zonemode=strided
EOF
  _j=0
  echo "$REGIONS" | while read -r _start _off _len; do
    _j=$((_j + 1))
    cat <<EOF
[r$_j]
offset=$((_start + _off))
size=$((8 * M - _off))
zonerange=$_len
zonesize=$_len
zoneskip=$((CLUSTER - _len))
io_size=$((8 * M / CLUSTER * _len))
EOF
  done
}

# fio_run DEV LOG [ARGS]: the job on DEV; must end without an error.
fio_run() {
  _dev=$1 _log=$2
  shift 2
  FIO_DEV=$_dev fio "$@" /tmp/cow.fio >"$_log" 2>&1 || { cat "$_log"; fail "fio $* on $_dev"; }
  [ "$(grep -c "err= 0" "$_log")" = 3 ] || { cat "$_log"; fail "fio $* on $_dev saw errors"; }
}

# uncovered_table DEV [untouched]: a dm-linear table of the bytes of DEV no
# write covered (with "untouched": the unwritten last 8 MiB too), end to end.
uncovered_table() {
  echo "$REGIONS" | awk -v dev="$1" -v c=$CLUSTER -v rs=$((8 * M)) -v u="$2" \
    -v ut=$UNTOUCHED -v size=$SIZE '
    function seg(from, len) { if (len > 0) { printf "%d %d linear %s %d\n", pos, len / 512, dev, from / 512; pos += len / 512 } }
    { for (b = $1; b < $1 + rs; b += c) { seg(b, $2); seg(b + $2 + $3, c - $2 - $3) } }
    END { if (u == "untouched") seg(ut, size - ut) }'
}

# same_uncovered WHAT DEV EXPECT [untouched]: the uncovered bytes of DEV are
# those of EXPECT (a device holding the backing image's bytes).
same_uncovered() {
  uncovered_table "$2" "$4" | dmsetup create unc-got || fail "dm-linear over $2"
  uncovered_table "$3" "$4" | dmsetup create unc-want || fail "dm-linear over $3"
  dmsetup mknodes
  _n=$(blockdev --getsize64 /dev/mapper/unc-got)
  cmp /dev/mapper/unc-got /dev/mapper/unc-want ||
    fail "$1: bytes the writes did not cover differ from the backing image"
  echo "$1: $_n uncovered bytes are the backing image's"
  dmsetup remove unc-got unc-want || fail "remove the dm-linear devices"
}

step "a 64 KiB-cluster qcow2 over a qcow2 of random bytes"
data_fs
cd /data || fail "cd /data"
dd if=/dev/urandom of=back.raw bs=1M count=$((SIZE / M)) status=none || fail "back.raw"
qemu-img convert -O qcow2 -o cluster_size=64k back.raw base.qcow2 || fail "base.qcow2"
qemu-img create -q -f qcow2 -o cluster_size=64k -b base.qcow2 -F qcow2 top.qcow2 ||
  fail "top.qcow2"
BACK=$(losetup -r -f --show /data/back.raw) || fail "losetup back.raw"
fio_job >/tmp/cow.fio
uncovered_table /dev/X untouched | awk '{n += $2} END {print "uncovered sectors:", n}'

step "fio: random 4 KiB writes in part of each cluster, fsyncs, verify"
out=$(dmu attach --name cow /data/top.qcow2) || fail "attach top.qcow2"
expect_eq "attach output" /dev/mapper/cow "$out"
fio_run /dev/mapper/cow /tmp/fio1.log
expect_eq "bad answers" 0 "$(dmu_stat cow bad)"
expect_gt "kernel fills (copies from the backing image)" 0 "$(dmu_stat cow fills)"
same_uncovered "attached" /dev/mapper/cow "$BACK" untouched
dmu detach cow || fail "detach"

step "after detach: qemu-img check, QEMU's reading, the top image alone"
qemu-img check top.qcow2 || fail "qemu-img check top.qcow2"
# The written clusters and nothing else are allocated in the top image.
qemu-img map --output=json top.qcow2 >/tmp/map.json || fail "qemu-img map"
own=$(awk -F'[:,]' '/"depth": 0/ && /"data": true/ {n += $4} END {print n + 0}' /tmp/map.json)
expect_eq "bytes allocated in top.qcow2" $((3 * 8 * M)) "$own"
qemu-img convert -O raw top.qcow2 top.raw || fail "convert top.qcow2"
TOP=$(losetup -f --show /data/top.raw) || fail "losetup top.raw"
fio_run "$TOP" /tmp/fio2.log --verify_only
same_uncovered "as QEMU reads it" "$TOP" "$BACK" untouched
losetup -d "$TOP"
# Cut the backing link of a copy: what it reads of the written clusters is
# what the clusters hold.
cp top.qcow2 alone.qcow2
qemu-img rebase -u -b "" alone.qcow2 || fail "rebase -u alone.qcow2"
qemu-img convert -O raw alone.qcow2 alone.raw || fail "convert alone.qcow2"
ALONE=$(losetup -r -f --show /data/alone.raw) || fail "losetup alone.raw"
same_uncovered "in the top image's own clusters" "$ALONE" "$BACK"
losetup -d "$ALONE"
rm -f top.raw alone.raw alone.qcow2

step "attached again: fio verifies, the uncovered bytes are the backing image's"
out=$(dmu attach --name cow /data/top.qcow2) || fail "attach top.qcow2 again"
fio_run /dev/mapper/cow /tmp/fio3.log --verify_only
same_uncovered "attached again" /dev/mapper/cow "$BACK" untouched
dmu detach cow || fail "detach again"
qemu-img check top.qcow2 || fail "qemu-img check top.qcow2 at the end"
losetup -d "$BACK"
save_results attach-cow /tmp/fio1.log /tmp/cow.fio
check_dmesg
