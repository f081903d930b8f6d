#!/bin/sh
# Benchmark (not a test): how long `dmu attach` takes, and what the push
# after bind does, for a 100 GiB empty qcow2 and an 8 GiB qcow2 whose
# every cluster is allocated (preallocation=metadata), 3 runs each.
# Run in a VM: tests/vm/lib/run-case.sh --kernel 6.12 bench/attach/attach-time.sh
# (figures in the console log: build/tests/vm/results/attach-time.6.12/).
# vm: kernels=6.12 timeout=900 mem=1536 disks=4G
. /src/tests/kmod/vm-lib.sh
. /src/tests/vm/lib/guest/attach-lib.sh

data_fs
cd /data || fail "cd /data"
qemu-img create -q -f qcow2 empty.qcow2 100G || fail "create empty"
qemu-img create -q -f qcow2 -o preallocation=metadata full.qcow2 8G || fail "create full"

# push_done NAME: until the mapping process logged the end of its push; prints ms waited.
push_done() {
  _t0=$(now_ms) _i=0
  until grep -q "pushed [0-9]* extents" "/run/dmu/$1.log" 2>/dev/null; do
    _i=$((_i + 1))
    [ $_i -lt 600 ] || fail "no end of push for $1 within 60 s"
    sleep 0.1
  done
  echo $(($(now_ms) - _t0))
}

for run in 1 2 3; do
  for img in empty full; do
    t0=$(now_ms)
    dmu attach --name "$img" "$img.qcow2" >/dev/null || fail "attach $img"
    t1=$(now_ms)
    wait_ms=$(push_done "$img")
    line=$(grep "pushed [0-9]* extents" "/run/dmu/$img.log" | tail -1 | sed 's/.*: //')
    m0=$(dmu_stat "$img" misses)
    t2=$(now_ms)
    dd if="/dev/mapper/$img" of=/dev/null bs=1M count=256 iflag=direct status=none
    t3=$(now_ms)
    echo "RESULT run=$run image=$img attach_ms=$((t1 - t0)) push_after_attach_ms=$wait_ms" \
      "read_256MiB_ms=$((t3 - t2)) misses_for_read=$(($(dmu_stat "$img" misses) - m0)) [$line]"
    dmu detach "$img" || fail "detach $img"
  done
done
echo "attach-time: done"
