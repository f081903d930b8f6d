#!/usr/bin/env bash
# bench/kmod/profile.sh [--build DIR] [--kernel 6.1|6.12] [--reps N]
#                       [--job randread|randwrite|seqwrite] [--runtime S]
# Where the guest's CPU goes on each device (not a test): boots one VM that
# runs bench/kmod/profile-guest.sh (memory-backed loop file, as run.sh
# --backing memory, so every I/O costs guest CPU only) with the host's perf
# staged into the guest, then prints, averaged over the repetitions, the
# kernel symbols whose share of the samples differs most between dm-linear
# and the userspace target, and the userspace target's own functions.
# cpu-clock samples cannot land where interrupts are disabled, so that time
# is charged to whatever re-enables them (_raw_spin_unlock_irq*).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
build=$src/build line=6.1 reps=3 job=randread runtime=8
while [ $# -gt 0 ]; do
  case $1 in
    --build) build=$2; shift 2 ;;
    --kernel) line=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --job) job=$2; shift 2 ;;
    --runtime) runtime=$2; shift 2 ;;
    *) echo "usage: $0 [--build DIR] [--kernel 6.1|6.12] [--reps N] [--job randread|randwrite|seqwrite] [--runtime S]" >&2; exit 2 ;;
  esac
done
case $job in randread | randwrite | seqwrite) ;; *) echo "$0: --job is randread, randwrite or seqwrite" >&2; exit 2 ;; esac
command -v perf >/dev/null || { echo "$0: perf is not installed (apt-get install linux-perf)" >&2; exit 1; }
build=$(realpath "$build")
results=$build/tests/vm/results/profile-guest.$line
settings=$here/profile-settings
# The guest sees only the source tree (/src) and its results folder.
perf_root=$here/perf-root
trap 'rm -rf "$settings" "$perf_root"' EXIT
printf 'REPS=%s\nJOB=%s\nRUNTIME=%s\n' "$reps" "$job" "$runtime" >"$settings"
rm -rf "$perf_root"
"$src/tests/vm/lib/copy-with-libs.sh" "$perf_root" "$(command -v perf)"

cmake --build "$build" -j2 --target dmu-test-daemon >/dev/null
rc=0
"$src/tests/vm/lib/run-case.sh" --build "$build" --kernel "$line" "$here/profile-guest.sh" || rc=$?
[ "$rc" = 0 ] || { echo "profile VM failed (rc $rc); console: $results/console.log" >&2; exit "$rc"; }
python3 "$here/profile-diff.py" --job "$job" --kernel "$line" "$results"
echo
echo "raw perf reports: $results"
