#!/bin/sh
# Guest half of bench/kmod/profile.sh (not a test): fio on dm-linear and on
# the userspace target (every mapping pushed) over one loop file on tmpfs,
# each run under `perf record -e cpu-clock -a`, REPS times, alternating.
# Per run: /results/fio-<dev>-<rep>.txt (fio --minimal) and
# /results/self-<dev>-<rep>.txt, /results/children-<dev>-<rep>.txt
# (perf report --sort sym without and with children).  perf is the host's,
# staged by profile.sh in /src/bench/kmod/perf-root.
# vm: kernels=6.1,6.12 timeout=1200 disks=1G mem=1024
. /src/tests/kmod/vm-lib.sh
REPS=3
JOB=randread
RUNTIME=8
[ -f /src/bench/kmod/profile-settings ] && . /src/bench/kmod/profile-settings
P=/src/bench/kmod/perf-root
perf() { LD_LIBRARY_PATH=$P/usr/lib/x86_64-linux-gnu "$P/usr/bin/perf" "$@"; }

step "256 MiB file on tmpfs, loop device, dm-linear and userspace over it"
mkdir -p /data
mount -t tmpfs -o size=300m tmpfs /data || fail "mount tmpfs /data"
make_file /data/disk.img 256
LOOP=$(losetup -f --show /data/disk.img) || fail "losetup /data/disk.img"
SECTORS=$(blockdev --getsz "$LOOP")
echo "0 $SECTORS linear $LOOP 0" | dmsetup create lin || fail "create dm-linear"
dmu_create u bench 8 "" "$LOOP"
daemon_start /tmp/daemon.log --key bench --mode identity --push-all --push-extent-blocks 1024
# Kernel addresses and samples of every task, for a root-only guest.
echo 0 >/proc/sys/kernel/kptr_restrict
echo -1 >/proc/sys/kernel/perf_event_paranoid

case $JOB in
  randread) args="--rw=randread --bs=4k --iodepth=16" ;;
  randwrite) args="--rw=randwrite --bs=4k --iodepth=16" ;;
  seqwrite) args="--rw=write --bs=1M --iodepth=4" ;;
  *) fail "unknown job $JOB" ;;
esac
for rep in $(seq 1 "$REPS"); do
  if [ $((rep % 2)) = 1 ]; then order="lin u"; else order="u lin"; fi
  for dev in $order; do
    # shellcheck disable=SC2086
    perf record -q -e cpu-clock -F 1000 -a -g -o /tmp/perf.data -- \
      fio --name="$JOB" --filename=/dev/mapper/$dev $args --direct=1 --ioengine=libaio \
      --size=256M --time_based --runtime="$RUNTIME" --ramp_time=1 --minimal \
      >"/results/fio-$dev-$rep.txt" 2>&1 || fail "perf record fio $JOB on $dev"
    perf report -i /tmp/perf.data --stdio --no-children --sort sym -g none \
      >"/results/self-$dev-$rep.txt" 2>&1 || fail "perf report"
    perf report -i /tmp/perf.data --stdio --children --sort sym -g none \
      >"/results/children-$dev-$rep.txt" 2>&1 || fail "perf report --children"
    echo "profiled $JOB on $dev, repetition $rep"
  done
done
daemon_stop /tmp/daemon.log
dmsetup remove u
dmsetup remove lin
losetup -d "$LOOP"
step "ok"
