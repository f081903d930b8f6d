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
. /src/bench/kmod/bench-lib.sh
REPS=3
JOB=randread
RUNTIME=8
[ -f /src/bench/kmod/profile-settings ] && . /src/bench/kmod/profile-settings
P=/src/bench/kmod/perf-root
perf() { LD_LIBRARY_PATH=$P/usr/lib/x86_64-linux-gnu "$P/usr/bin/perf" "$@"; }

bench_devices memory /tmp/daemon.log
# Kernel addresses and samples of every task, for a root-only guest.
echo 0 >/proc/sys/kernel/kptr_restrict
echo -1 >/proc/sys/kernel/perf_event_paranoid

fio_job_args "$JOB" >/dev/null
for rep in $(seq 1 "$REPS"); do
  if [ $((rep % 2)) = 1 ]; then order="lin u"; else order="u lin"; fi
  for dev in $order; do
    fio_run "$JOB" /dev/mapper/$dev "$RUNTIME" perf record -q -e cpu-clock -F 1000 -a -g \
      -o /tmp/perf.data --
    cp /tmp/fio.out "/results/fio-$dev-$rep.txt"
    perf report -i /tmp/perf.data --stdio --no-children --sort sym -g none \
      >"/results/self-$dev-$rep.txt" 2>&1 || fail "perf report"
    perf report -i /tmp/perf.data --stdio --children --sort sym -g none \
      >"/results/children-$dev-$rep.txt" 2>&1 || fail "perf report --children"
    echo "profiled $JOB on $dev, repetition $rep"
  done
done
bench_devices_remove /tmp/daemon.log
step "ok"
