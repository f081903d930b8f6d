#!/bin/sh
# Guest half of bench/kmod/run.sh (not a test): fio 4k randread, 4k randwrite
# and 1M seqwrite (direct=1, libaio) on the userspace target with every
# mapping pushed (no daemon on the I/O path) and on dm-linear over the same
# loop device, interleaved A/B, REPS repetitions.  One line per run in
# /results/bench.csv: rep,job,device,start_s,end_s,iops,bw_kib,requests.
# A task blocked for 60 s panics the guest, so a stall ends the run at once
# with its stack on the console instead of waiting for the timeout.
# BACKING=disk (default): the loop file is on ext4 on the virtio disk, with
# direct I/O.  BACKING=memory: the loop file is on tmpfs in guest memory
# (buffered; tmpfs has no direct I/O on 6.1), so no host disk or host page
# cache is under the devices being compared and every I/O costs CPU only.
# vm: kernels=6.1,6.12 timeout=1500 disks=1G mem=1024 cmdline=loglevel=7+sysctl.kernel.hung_task_timeout_secs=60+sysctl.kernel.hung_task_panic=1
. /src/tests/kmod/vm-lib.sh
REPS=${REPS:-3}
RUNTIME=${RUNTIME:-8}
BACKING=${BACKING:-disk}
LOG=/tmp/daemon.log
[ -f /src/bench/kmod/settings ] && . /src/bench/kmod/settings

if [ "$BACKING" = memory ]; then
  step "256 MiB file on tmpfs, loop device, dm-linear and userspace over it"
  mkdir -p /data
  mount -t tmpfs -o size=300m tmpfs /data || fail "mount tmpfs /data"
  make_file /data/disk.img 256
  LOOP=$(losetup -f --show /data/disk.img) || fail "losetup /data/disk.img"
else
  step "256 MiB file on ext4, direct-I/O loop device, dm-linear and userspace over it"
  data_fs
  make_file /data/disk.img 256
  LOOP=$(loop_dio /data/disk.img)
fi
SECTORS=$(blockdev --getsz "$LOOP")
echo "0 $SECTORS linear $LOOP 0" | dmsetup create lin || fail "create dm-linear"
dmu_create u bench 8 "" "$LOOP"
daemon_start $LOG --key bench --mode identity --push-all --push-extent-blocks 1024
dmsetup status u

run_fio() {  # job device -> "iops bw_kib" (reads for randread, writes otherwise)
  case $1 in
    randread) args="--rw=randread --bs=4k --iodepth=16" ;;
    randwrite) args="--rw=randwrite --bs=4k --iodepth=16" ;;
    seqwrite) args="--rw=write --bs=1M --iodepth=4" ;;
  esac
  # shellcheck disable=SC2086
  fio --name="$1" --filename="$2" $args --direct=1 --ioengine=libaio --size=256M \
    --time_based --runtime="$RUNTIME" --ramp_time=1 --minimal >/tmp/fio.out 2>&1 ||
    { cat /tmp/fio.out; fail "fio $1 on $2"; }
  if [ "$1" = randread ]; then
    awk -F';' '{print $8, $7}' /tmp/fio.out
  else
    awk -F';' '{print $49, $48}' /tmp/fio.out
  fi
}

echo "rep,job,device,start_s,end_s,iops,bw_kib,requests" >/results/bench.csv
for rep in $(seq 1 "$REPS"); do
  for job in randread randwrite seqwrite; do
    # Alternate which device goes first so drift does not favour one.
    if [ $((rep % 2)) = 1 ]; then order="lin u"; else order="u lin"; fi
    for dev in $order; do
      r0=$(dmu_stat u requests)
      t0=$(cut -d' ' -f1 /proc/uptime)
      # shellcheck disable=SC2046  # split on purpose: "iops bw_kib"
      set -- $(run_fio $job /dev/mapper/$dev)
      t1=$(cut -d' ' -f1 /proc/uptime)
      r1=$(dmu_stat u requests)
      echo "$rep,$job,$dev,$t0,$t1,$1,$2,$((r1 - r0))" | tee -a /results/bench.csv
    done
  done
done
daemon_report $LOG
dmsetup status u
daemon_stop $LOG
cp $LOG /results/
dmsetup remove u
dmsetup remove lin
losetup -d "$LOOP"
step "ok"
