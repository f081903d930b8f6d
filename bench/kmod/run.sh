#!/usr/bin/env bash
# bench/kmod/run.sh [--build DIR] [--kernel 6.1|6.12] [--reps N] [--runtime S]
#                   [--backing disk|memory] [--grain S]
# Boots one VM (through the VM harness) that runs bench/kmod/kmod-bench.sh:
# fio on the userspace target (all mappings pushed) and on dm-linear over the
# same loop device, interleaved, N repetitions.  Meanwhile samples the host's
# CPU time used by everything except that VM (vm-recipes §6 "Noise") and flags
# runs during which other work used more than a quarter of a core.  Prints a
# markdown table of IOPS/bandwidth and userspace/dm-linear ratios.
# --grain S runs each job as one fio process of N pairs of S-second runs
# (kmod-bench.sh GRAIN): a pair's two runs are seconds apart and over three times
# as many pairs fit in the time, which is what narrows the pooled median on
# a host whose TCG speed swings (bench/README.md, "Short pairs");
# --runtime does not apply then.  Pool grained disk runs with
# bench/kmod/pool.py --abba (order effect).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
build=$src/build line=6.12 reps=3 runtime=8 backing=disk grain=
while [ $# -gt 0 ]; do
  case $1 in
    --build) build=$2; shift 2 ;;
    --kernel) line=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --runtime) runtime=$2; shift 2 ;;
    --backing) backing=$2; shift 2 ;;
    --grain) grain=$2; shift 2 ;;
    *) echo "usage: $0 [--build DIR] [--kernel 6.1|6.12] [--reps N] [--runtime S] [--backing disk|memory] [--grain S]" >&2; exit 2 ;;
  esac
done
build=$(realpath "$build")
results=$build/tests/vm/results/kmod-bench.$line
settings=$here/settings
trap 'rm -f "$settings"' EXIT
case $backing in disk | memory) ;; *) echo "$0: --backing is disk or memory" >&2; exit 2 ;; esac
case $grain in '' | [1-9] | [1-9][0-9]) ;; *) echo "$0: --grain is 1-99 seconds" >&2; exit 2 ;; esac
printf 'REPS=%s\nRUNTIME=%s\nBACKING=%s\nGRAIN=%s\n' "$reps" "$runtime" "$backing" "$grain" >"$settings"

# shellcheck source=bench/lib/host-load.sh
. "$src/bench/lib/host-load.sh"

cmake --build "$build" -j2 --target dmu-test-daemon >/dev/null
run_sampled "$build" "$line" "$here/kmod-bench.sh"

# Report: per job, median of each device over the repetitions, ratio, and
# the repetitions whose runs overlapped host load above 25% of a core.
awk -F, -v loadfile="$results/host-load.txt" -v kernel="$line" -f "$here/report.awk" "$results/bench.csv"
echo
echo "raw: $results/bench.csv, host load samples: $results/host-load.txt"
