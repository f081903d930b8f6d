#!/bin/sh
# Guest half of bench/kmod/run.sh (not a test): fio 4k randread, 4k randwrite
# and 1M seqwrite (direct=1, libaio) on the userspace target with every
# mapping pushed (no daemon on the I/O path) and on dm-linear over the same
# loop device, interleaved A/B, REPS repetitions.  One line per run in
# /results/bench.csv: rep,job,device,start_s,end_s,iops,bw_kib,requests.
# A task blocked for 60 s panics the guest, so a stall ends the run at once
# with its stack on the console instead of waiting for the timeout.
# GRAIN=S (unset by default): instead of one fio process per run, each job
# is one fio process running REPS pairs of S-second runs back to back
# (stonewalled, 0.5 s ramp each, order alternating per pair), so the two runs
# of a pair are seconds apart; start_s/end_s are then the process's span
# split evenly over its runs, and requests the process's total, on its last
# userspace row.
# BACKING=disk (default): the loop file is on ext4 on the virtio disk, with
# direct I/O.  BACKING=memory: the loop file is on tmpfs in guest memory
# (buffered; tmpfs has no direct I/O on 6.1), so no host disk or host page
# cache is under the devices being compared and every I/O costs CPU only.
# vm: kernels=6.1,6.12 timeout=1500 disks=1G mem=1024 cmdline=loglevel=7+sysctl.kernel.hung_task_timeout_secs=60+sysctl.kernel.hung_task_panic=1
. /src/tests/kmod/vm-lib.sh
. /src/bench/kmod/bench-lib.sh
REPS=${REPS:-3}
RUNTIME=${RUNTIME:-8}
BACKING=${BACKING:-disk}
LOG=/tmp/daemon.log
[ -f /src/bench/kmod/settings ] && . /src/bench/kmod/settings

bench_devices "$BACKING" $LOG
dmsetup status u

run_fio() {  # job device -> "iops bw_kib" (reads for randread, writes otherwise)
  fio_run "$1" "$2" "$RUNTIME"
  if [ "$1" = randread ]; then
    awk -F';' '{print $8, $7}' /tmp/fio.out
  else
    awk -F';' '{print $49, $48}' /tmp/fio.out
  fi
}

# pair_order REP: which device runs first in repetition REP.  It alternates
# so that drift favours neither, and pool.py --abba pools each lin-u pair
# with the u-lin pair after it.
pair_order() {
  if [ $(($1 % 2)) = 1 ]; then echo "lin u"; else echo "u lin"; fi
}

# run_grained JOB: REPS pairs of GRAIN-second runs of JOB in one fio process.
run_grained() {
  _jobs=''
  for _rep in $(seq 1 "$REPS"); do
    for _dev in $(pair_order "$_rep"); do
      _jobs="$_jobs --name=$_dev-$_rep --filename=/dev/mapper/$_dev --stonewall"
    done
  done
  r0=$(dmu_stat u requests)
  t0=$(cut -d' ' -f1 /proc/uptime)
  # shellcheck disable=SC2046,SC2086  # split on purpose: one word per option
  fio $(fio_job_args "$1") --direct=1 --ioengine=libaio --size=256M --time_based \
    --runtime="$GRAIN" --ramp_time=500ms --minimal $_jobs >/tmp/fio.out 2>&1 ||
    { cat /tmp/fio.out; fail "fio $1 (grained)"; }
  t1=$(cut -d' ' -f1 /proc/uptime)
  r1=$(dmu_stat u requests)
  awk -F';' -v job="$1" -v t0="$t0" -v t1="$t1" -v req=$((r1 - r0)) -v n=$((2 * REPS)) '
    NF > 50 {
      i++; split($3, name, "-"); rep[i] = name[2]; dev[i] = name[1]
      iops[i] = job == "randread" ? $8 : $49; bw[i] = job == "randread" ? $7 : $48
      if (dev[i] == "u") lastu = i
    }
    END {
      for (k = 1; k <= i; k++)
        printf "%s,%s,%s,%.2f,%.2f,%s,%s,%d\n", rep[k], job, dev[k], t0 + (t1 - t0) * (k - 1) / n,
          t0 + (t1 - t0) * k / n, iops[k], bw[k], k == lastu ? req : 0
    }' /tmp/fio.out | tee -a /results/bench.csv
}

# run_separate: REPS repetitions of every job, one fio process per run.
run_separate() {
  for rep in $(seq 1 "$REPS"); do
    for job in randread randwrite seqwrite; do
      for dev in $(pair_order "$rep"); do
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
}

echo "rep,job,device,start_s,end_s,iops,bw_kib,requests" >/results/bench.csv
if [ -n "${GRAIN:-}" ]; then
  for job in randread randwrite seqwrite; do run_grained $job; done
else
  run_separate
fi
daemon_report $LOG
dmsetup status u
bench_devices_remove $LOG
cp $LOG /results/
step "ok"
