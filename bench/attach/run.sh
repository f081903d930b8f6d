#!/usr/bin/env bash
# bench/attach/run.sh [--build DIR] [--kernel 6.1|6.12] [--reps N] [--runtime S]
#                     [--ramp S] [--size MIB]
# Boots one VM (through the VM harness) that runs bench/attach/io-bench.sh:
# fio on `dmu attach`ed qcow2 images (fully allocated: mapped I/O; empty:
# allocating writes) next to dm-linear over a loop device on the same file
# system, the loop device alone, qemu-nbd, and dm-snapshot (allocating
# writes), interleaved, N repetitions.  Samples the host's other CPU use
# meanwhile (bench/lib/host-load.sh) and prints bench/kmod's table (medians,
# ratio to dm-linear, per-repetition ratios, the daemon's requests during the
# runs) and the pooled paired ratios with their interval (bench/kmod/pool.py).
# --size: the test file's size (default 512 MiB; the suite's quick run takes
# less, as its figures mean nothing and the sequential writes of every
# device over the whole file were half its time).  --ramp: the unmeasured
# seconds before each time-based run (default 1; the quick run skips it).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
build=$src/build line=6.12 reps=3 runtime=8 ramp=1 size=512
while [ $# -gt 0 ]; do
  case $1 in
    --build) build=$2; shift 2 ;;
    --kernel) line=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --runtime) runtime=$2; shift 2 ;;
    --ramp) ramp=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    *) echo "usage: $0 [--build DIR] [--kernel 6.1|6.12] [--reps N] [--runtime S] [--ramp S] [--size MIB]" >&2; exit 2 ;;
  esac
done
build=$(realpath "$build")
results=$build/tests/vm/results/io-bench.$line
settings=$here/settings
trap 'rm -f "$settings"' EXIT
printf 'REPS=%s\nRUNTIME=%s\nRAMP=%s\nSIZE_MB=%s\n' "$reps" "$runtime" "$ramp" "$size" >"$settings"
# shellcheck source=bench/lib/host-load.sh
. "$src/bench/lib/host-load.sh"

cmake --build "$build" -j2 --target dmu >/dev/null
run_sampled "$build" "$line" "$here/io-bench.sh"

mapped="mapped-randread mapped-randwrite mapped-seqread mapped-seqwrite"
alloc="alloc-randwrite alloc-seqwrite"
jobs="$mapped $alloc"
for job in $jobs; do
  devs="lin u nbd loop"
  case $job in alloc-*) devs="$devs snap" ;; esac
  for dev in $devs; do
    n=$(awk -F, -v j="$job" -v d="$dev" '$2 == j && $3 == d && $6 > 0' "$results/bench.csv" | wc -l)
    [ "$n" = "$reps" ] || { echo "$0: $job on $dev: $n of $reps runs measured" >&2; exit 1; }
  done
done
# pair A B: bench.csv with A's runs as device u and B's as lin (what
# report.awk and pool.py compare), the third device's left out.
pair() {
  awk -F, -v OFS=, -v a="$1" -v b="$2" 'NR == 1 { print; next }
    $3 == a { $3 = "u"; print; next } $3 == b { $3 = "lin"; print }' "$results/bench.csv" \
    >"$results/$1-vs-$2.csv"
}
# compare A B NAME REF [JOBS]: the report of A (titled NAME) against B (REF).
compare() {
  pair "$1" "$2"
  echo "## $3 against $4"
  awk -F, -v loadfile="$results/host-load.txt" -v kernel="$line" -v joborder="${5:-$jobs}" \
    -v name="$3" -v ref="$4" -f "$src/bench/kmod/report.awk" "$results/$1-vs-$2.csv"
  echo
  "$src/bench/kmod/pool.py" "$results/$1-vs-$2.csv"
  echo
}
compare u lin "dmu qcow2" dm-linear
compare nbd lin "qemu-nbd qcow2" dm-linear
compare u nbd "dmu qcow2" "qemu-nbd qcow2"
compare loop lin "loop device" dm-linear
compare u loop "dmu qcow2" "loop device"
compare snap lin "dm-snapshot" dm-linear "$alloc"
compare u snap "dmu qcow2" "dm-snapshot" "$alloc"
echo "kernel misses during the dmu runs (job: per repetition):"
awk -F, 'NR > 1 && $3 == "u" { m[$2] = m[$2] " " $9 } END { for (j in m) print "  " j ":" m[j] }' "$results/bench.csv" | sort
echo "raw: $results/bench.csv, host load samples: $results/host-load.txt"
