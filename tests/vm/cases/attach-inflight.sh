#!/bin/sh
# Two guest writes in flight into one cluster (grain, block) while it is
# being allocated.  Two fio jobs run side by side through empty qcow, vmdk
# and qcow2 images, 16 writes in flight each: job a writes 64 KiB at
# [B/2 + 128K*i, +64K), job b at [B/2 + 64K + 128K*i, +64K) (B the device's
# block), so a's and b's writes of the same i share one block, never a
# byte.  Whichever of them the kernel asks for first allocates that block;
# the other's MAP comes while the allocation's DONE is outstanding and must
# be answered up to that block, or wait for the DONE (mapper/map_service.h),
# not fail: before that, qcow and vmdk answered EBUSY and the guest saw an
# I/O error.  fio verifies both jobs; after detach the image holds exactly
# what the device showed, and qemu-img (dmu for qcow) checks it clean.
# vm: kernels=6.1,6.12 timeout=600 mem=1024 disks=1G boot=attach-short
. /src/tests/kmod/vm-lib.sh
. /src/tests/vm/lib/guest/attach-lib.sh

K=1024
SIZE=$((16 * 1024 * K))

data_fs
cd /data || fail "cd /data"
for fmt in qcow vmdk qcow2; do
  step "$fmt: two fio jobs whose writes meet inside blocks"
  qemu-img create -q -f $fmt img.$fmt $SIZE || fail "qemu-img create $fmt"
  dmu attach --name inf /data/img.$fmt >/dev/null || fail "dmu attach img.$fmt"
  bs=$(($(record_field inf block-sectors) * 512))
  echo "$fmt: block $bs bytes"
  cat >/tmp/inflight.fio <<EOF
[global]
filename=/dev/mapper/inf
bs=64k
rw=write
direct=1
ioengine=libaio
iodepth=16
verify=crc32c
verify_fatal=1
do_verify=1
zonemode=strided
zonerange=64k
zonesize=64k
zoneskip=64k
size=$((SIZE - 128 * K))
io_size=$((SIZE / 2 - 64 * K))
[a]
offset=$((bs / 2))
[b]
offset=$((bs / 2 + 64 * K))
EOF
  fio /tmp/inflight.fio >/tmp/fio-$fmt.log 2>&1 || { cat /tmp/fio-$fmt.log; fail "fio on $fmt"; }
  [ "$(grep -c "err= 0" /tmp/fio-$fmt.log)" = 2 ] || { cat /tmp/fio-$fmt.log; fail "fio on $fmt saw errors"; }
  sleep 1.5  # the mapping process rewrites its counters about once a second
  stats=$(dmu stats inf --output=json | tr -d '\n ')
  echo "$fmt: $(echo "$stats" | grep -o '"map-writes":[0-9]*') $(echo "$stats" | grep -o '"waited":[0-9]*')"
  expect_eq "$fmt: kernel timeouts" 0 "$(dmu_stat inf timeouts)"
  dd if=/dev/mapper/inf of=/data/shown.raw bs=1M iflag=direct status=none || fail "read inf"
  dmu detach inf || fail "dmu detach inf"
  if [ $fmt = qcow ]; then
    dmu check img.qcow || fail "dmu check img.qcow"
  else
    qemu-img check -q img.$fmt || fail "qemu-img check img.$fmt"
  fi
  qemu-img compare -q -f raw -F $fmt shown.raw img.$fmt || fail "img.$fmt differs from what the device showed"
  rm -f img.$fmt shown.raw
done
check_dmesg
