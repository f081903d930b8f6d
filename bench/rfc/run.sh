#!/usr/bin/env bash
# bench/rfc/run.sh [--build DIR] [--kernel 6.1|6.12] [--reps N] [--devices "D..."]
# The RFC's first experiment (bench/rfc/copy-bench.sh): mkfs, mount, copy a
# 20 MiB tree, sync and umount on a fresh empty image, on the loop device
# (the RFC's control) and on dmu with each format, and qemu-nbd; N
# repetitions (default 12: each of the 6 devices in each position twice) in one VM, the order rotating.  Samples the
# host's other CPU use meanwhile (bench/lib/host-load.sh) and prints the
# report (bench/rfc/copy-report.py): median times, and each device's time
# over the loop device's in the same repetition, pooled with bench/kmod's
# interval.  Raw data: BUILD/tests/vm/results/copy-bench.LINE/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
build=$src/build line=6.12 reps=12 devices="loop qcow2 qcow vmdk raw nbd"
while [ $# -gt 0 ]; do
  case $1 in
    --build) build=$2; shift 2 ;;
    --kernel) line=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --devices) devices=$2; shift 2 ;;
    *) echo "usage: $0 [--build DIR] [--kernel 6.1|6.12] [--reps N] [--devices \"D...\"]" >&2; exit 2 ;;
  esac
done
case " $devices " in *" loop "*) ;; *) echo "$0: --devices must include loop (the reference)" >&2; exit 2 ;; esac
build=$(realpath "$build")
results=$build/tests/vm/results/copy-bench.$line
settings=$here/settings
trap 'rm -f "$settings"' EXIT
printf 'REPS=%s\nDEVICES="%s"\n' "$reps" "$devices" >"$settings"
# shellcheck source=bench/lib/host-load.sh
. "$src/bench/lib/host-load.sh"

cmake --build "$build" -j2 --target dmu >/dev/null
run_sampled "$build" "$line" "$here/copy-bench.sh"
"$here/copy-report.py" --kernel "$line" --host-load "$results/host-load.txt" "$results/copy.csv"
echo "raw: $results/copy.csv, host load samples: $results/host-load.txt"
