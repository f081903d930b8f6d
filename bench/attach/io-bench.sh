#!/bin/sh
# vm: kernels=6.1,6.12 timeout=2400 disks=4G mem=1024 cmdline=loglevel=7+sysctl.kernel.hung_task_timeout_secs=60+sysctl.kernel.hung_task_panic=1
# Guest half of bench/attach/run.sh (not a test): fio on a device made by
# `dmu attach` next to dm-linear over a direct-I/O loop device of a raw file
# on the same ext4, that loop device alone, the same qcow2 served by
# qemu-nbd (cache=none, aio=native: no page cache, as the loop devices under
# dmu) through the kernel's nbd client, and, for allocating writes, the
# kernel's own copy-on-write (dm-snapshot of the raw file's loop device,
# 64 KiB chunks as qcow2's clusters, its exception store on a fresh sparse
# file); interleaved, REPS repetitions.
#   mapped-*  a qcow2 whose every cluster is allocated (converted from the
#             raw file), pushed at attach: 4k random read and write
#             (iodepth 16) and 1M sequential read and write (iodepth 4),
#             RUNTIME-second time-based runs after RAMP seconds unmeasured;
#   alloc-*   a fresh empty qcow2 per run, so writes allocate: 4k random
#             writes (iodepth 16) until 32 MiB (a quarter of a smaller
#             disk) are written, and one 1M sequential pass (iodepth 4)
#             over the whole disk; the same size-based job on dm-linear
#             over a fresh sparse raw file (the file system allocates there
#             too, and the VM's disk, a sparse file on the host, was never
#             written there either: against an allocated file the reference
#             would skip both costs).
# One line per run in /results/bench.csv, the columns bench/kmod/report.awk
# reads: rep,job,device,start_s,end_s,iops,bw_kib,requests (device u = dmu,
# lin = dm-linear, loop = the loop device, nbd = qemu-nbd, snap =
# dm-snapshot; requests = the mapping process's requests during the run),
# plus misses (the kernel's).
. /src/tests/kmod/vm-lib.sh
. /src/tests/vm/lib/guest/attach-lib.sh
. /src/bench/lib/guest-lib.sh
REPS=${REPS:-3}
RUNTIME=${RUNTIME:-8}
RAMP=${RAMP:-1}
SIZE_MB=512
[ -f /src/bench/attach/settings ] && . /src/bench/attach/settings

step "a ${SIZE_MB} MiB raw file, dm-linear over its direct-I/O loop; the same bytes as a qcow2"
data_fs
cd /data || fail "cd /data"
make_file /data/disk.img $SIZE_MB /dev/urandom
LOOP=$(loop_dio /data/disk.img)
echo "0 $(blockdev --getsz "$LOOP") linear $LOOP 0" | dmsetup create lin || fail "create dm-linear"
qemu-img convert -O qcow2 /data/disk.img /data/full.qcow2 || fail "convert to qcow2"
modprobe nbd nbds_max=1 || fail "modprobe nbd"
# qemu-nbd -c puts its socket in /var/lock (in the guest a link to /run/lock).
mkdir -p /run/lock /var/lock 2>/dev/null
[ -d /var/lock ] || fail "no /var/lock for qemu-nbd"

# run JOB DEV FIO_ARGS...: one fio run on /dev/mapper/DEV (or DEV, a path);
# prints "iops bw_kib".
run() {
  _job=$1 _dev=$2
  shift 2
  case $_dev in /*) _path=$_dev ;; *) _path=/dev/mapper/$_dev ;; esac
  fio --name="$_job" --filename="$_path" --direct=1 --ioengine=libaio "$@" \
    --minimal >/tmp/fio.out 2>&1 || { cat /tmp/fio.out; fail "fio $_job on $_dev"; }
  # An I/O error can leave fio's status 0: one terse result line (version 3)
  # whose error field (5) is 0 counts, warnings beside it do not matter.
  awk -F';' '$1 == 3 { n++; if ($5 != 0) e = 1 } END { exit !(n == 1 && !e) }' /tmp/fio.out ||
    { cat /tmp/fio.out; fail "fio $_job on $_dev: no clean result"; }
  grep '^3;' /tmp/fio.out >/tmp/fio.line
  case $_job in
    *read*) awk -F';' '{print $8, $7}' /tmp/fio.line ;;
    *) awk -F';' '{print $49, $48}' /tmp/fio.line ;;
  esac
}

# measure REP JOB DEV [MAPPER] FIO_ARGS...: a run on /dev/mapper/MAPPER
# (default DEV), its line in bench.csv as DEV (u: the attached image u).
measure() {
  _rep=$1 _job=$2 _dev=$3 _mapper=$3
  shift 3
  case $1 in --*) ;; *) _mapper=$1; shift ;; esac
  r0=0 m0=0
  if [ "$_dev" = u ]; then
    sleep 1.2 # the mapping process rewrites its counters about once a second
    r0=$(daemon_counter u requests) m0=$(dmu_stat u misses)
  fi
  t0=$(cut -d' ' -f1 /proc/uptime)
  # shellcheck disable=SC2046  # split on purpose: "iops bw_kib"
  set -- $(run "$_job" "$_mapper" "$@")
  t1=$(cut -d' ' -f1 /proc/uptime)
  r1=0 m1=0
  if [ "$_dev" = u ]; then
    sleep 1.2
    r1=$(daemon_counter u requests) m1=$(dmu_stat u misses)
  fi
  echo "$_rep,$_job,$_dev,$t0,$t1,$1,$2,$((r1 - r0)),$((m1 - m0))" | tee -a /results/bench.csv
}

job_args() {
  case $1 in
    mapped-randread) echo "--rw=randread --bs=4k --iodepth=16 --time_based --runtime=$RUNTIME --ramp_time=$RAMP" ;;
    mapped-randwrite) echo "--rw=randwrite --bs=4k --iodepth=16 --time_based --runtime=$RUNTIME --ramp_time=$RAMP" ;;
    mapped-seqread) echo "--rw=read --bs=1M --iodepth=4 --time_based --runtime=$RUNTIME --ramp_time=$RAMP" ;;
    mapped-seqwrite) echo "--rw=write --bs=1M --iodepth=4 --time_based --runtime=$RUNTIME --ramp_time=$RAMP" ;;
    alloc-randwrite) echo "--rw=randwrite --bs=4k --iodepth=16 --io_size=$(( SIZE_MB < 128 ? SIZE_MB / 4 : 32 ))M" ;;
    alloc-seqwrite) echo "--rw=write --bs=1M --iodepth=4" ;;
  esac
}

# attach_u IMAGE: the image as /dev/mapper/u, its push finished.
attach_u() {
  dmu attach --name u "$1" >/dev/null || fail "dmu attach $1"
  _i=0
  until grep -q "pushed [0-9]* extents" /run/dmu/u.log 2>/dev/null; do
    _i=$((_i + 1)); [ $_i -lt 600 ] || fail "no end of push for $1"; sleep 0.1
  done
}

# fresh_loop FILE [MIB]: a direct-I/O loop device over a new sparse FILE of
# the test size or MIB (the file system allocates as it is written).
fresh_loop() {
  rm -f "$1"
  truncate -s "${2:-$SIZE_MB}M" "$1"
  loop_dio "$1"
}

echo "rep,job,device,start_s,end_s,iops,bw_kib,requests,misses" >/results/bench.csv
for rep in $(seq 1 "$REPS"); do
  # shellcheck disable=SC2046
  order=$(rotate $((rep - 1)) lin u nbd loop)
  step "rep $rep: mapped (order $order)"
  # Each image has one user at a time: the qcow2 is locked while attached.
  for job in mapped-randread mapped-randwrite mapped-seqread mapped-seqwrite; do
    for dev in $order; do
      case $dev in
        u) attach_u /data/full.qcow2; target=u ;;
        nbd) nbd_up /data/full.qcow2; target=/dev/nbd0 ;;
        lin) target=lin ;;
        loop) target=$LOOP ;;
      esac
      # shellcheck disable=SC2046
      measure "$rep" $job $dev $target --size=${SIZE_MB}M $(job_args $job)
      case $dev in
        u) dmu detach u || fail "dmu detach u" ;;
        nbd) nbd_down ;;
      esac
    done
  done
  order=$(rotate $((rep - 1)) lin u nbd loop snap)
  step "rep $rep: allocating (order $order)"
  for job in alloc-randwrite alloc-seqwrite; do
    for dev in $order; do
      if [ $dev = loop ]; then
        SPARSE=$(fresh_loop /data/sparse.img)
        target=$SPARSE
      elif [ $dev = snap ]; then
        # A first write to a 64 KiB chunk copies it from the origin (one
        # covering the whole chunk skips the copy, as a qcow2 write covering
        # a whole cluster does).
        # The store holds the metadata too: a little more than the data.
        COW=$(fresh_loop /data/cow.img $((SIZE_MB + 16)))
        echo "0 $(blockdev --getsz "$LOOP") snapshot $LOOP $COW P 128" | dmsetup create snap ||
          fail "create dm-snapshot of $LOOP"
        target=snap
      elif [ $dev = u ] || [ $dev = nbd ]; then
        rm -f /data/empty.qcow2
        qemu-img create -q -f qcow2 /data/empty.qcow2 ${SIZE_MB}M || fail "create empty.qcow2"
        if [ $dev = u ]; then
          attach_u /data/empty.qcow2
          target=u
        else
          nbd_up /data/empty.qcow2
          target=/dev/nbd0
        fi
      else
        SPARSE=$(fresh_loop /data/sparse.img)
        echo "0 $(blockdev --getsz "$SPARSE") linear $SPARSE 0" | dmsetup create alin ||
          fail "create dm-linear over the sparse file"
        target=alin
      fi
      # shellcheck disable=SC2046
      measure "$rep" $job $dev $target --size=${SIZE_MB}M $(job_args $job)
      if [ $dev = u ]; then
        dmu detach u || fail "dmu detach u"
      elif [ $dev = nbd ]; then
        nbd_down
      elif [ $dev = loop ]; then
        losetup -d "$SPARSE" || fail "remove the sparse loop device"
      elif [ $dev = snap ]; then
        dmsetup remove snap && losetup -d "$COW" || fail "remove the snapshot"
      else
        dmsetup remove alin && losetup -d "$SPARSE" || fail "remove the sparse reference"
      fi
      # /data holds five test-size files at most at any time.
      rm -f /data/sparse.img /data/cow.img
      if [ $dev = u ] || [ $dev = nbd ]; then rm -f /data/empty.qcow2; fi
    done
  done
done
qemu-img check -q /data/full.qcow2 || fail "qemu-img check full.qcow2"
dmsetup remove lin
losetup -d "$LOOP"
step "ok"
