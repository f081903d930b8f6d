#!/usr/bin/env bash
# tests/fuzz/campaign.sh [--build DIR] [--seconds N] [--jobs J] [TARGET...]
# A libFuzzer campaign: builds the fuzz targets with clang (-DDMU_FUZZ=ON,
# ASan+UBSan) in DIR (default ./build-fuzz), then runs each TARGET (default:
# every tests/fuzz/*_fuzz.cc) for N seconds (default 600), J at a time
# (default 2), on a working copy of its seed corpus.  Prints one line per
# target: seconds, executions, executions/s, corpus size, crashes.  Crashing
# inputs land in DIR/fuzz/<target>/artifacts; logs in DIR/fuzz/<target>.log.
# Exit status 1 if any target crashed, leaked, timed out or ran out of memory.
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
build=$src/build-fuzz seconds=600 jobs=2 targets=()
while [ $# -gt 0 ]; do
  case $1 in
    --build) build=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    -h | --help) sed -n '2,9s/^# \{0,1\}//p' "$0"; exit 0 ;;
    -*) echo "campaign.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
if [ ${#targets[@]} = 0 ]; then
  for f in "$src"/tests/fuzz/*_fuzz.cc; do targets+=("$(basename "$f" .cc)"); done
fi
build=$(realpath -m "$build")

echo "campaign: building ${targets[*]} in $build"
CC=clang CXX=clang++ cmake -S "$src" -B "$build" -DDMU_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j "$jobs" --target "${targets[@]}" >/dev/null

# run_one TARGET: one libFuzzer run; its log ends with "Done N runs in S second(s)".
run_one() {
  local t=$1 dir=$build/fuzz/$1
  rm -rf "$dir"
  mkdir -p "$dir/corpus" "$dir/artifacts"
  cp -r "$src/tests/fuzz/corpus/$t/." "$dir/corpus/" || return 1
  "$build/tests/fuzz/$t" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$dir/artifacts/" "$dir/corpus" >"$build/fuzz/$t.log" 2>&1
}
export -f run_one
export src build seconds
mkdir -p "$build/fuzz"
echo "campaign: ${#targets[@]} targets x ${seconds}s, $jobs at a time"
rc=0
printf '%s\n' "${targets[@]}" | xargs -P "$jobs" -I{} bash -c 'run_one {}' || rc=1

printf '%-24s %8s %12s %9s %7s %8s\n' target seconds executions exec/s corpus crashes
for t in "${targets[@]}"; do
  log=$build/fuzz/$t.log
  runs=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
  secs=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\2/p' "$log" | tail -1)
  crashes=$(find "$build/fuzz/$t/artifacts" -type f | wc -l)
  corpus=$(find "$build/fuzz/$t/corpus" -type f | wc -l)
  if [ -z "$runs" ]; then
    echo "$t: did not finish; tail of $log:" >&2
    tail -20 "$log" >&2
    rc=1
    continue
  fi
  [ "$crashes" = 0 ] || rc=1
  printf '%-24s %8s %12s %9s %7s %8s\n' "$t" "$secs" "$runs" $((runs / (secs > 0 ? secs : 1))) "$corpus" "$crashes"
done
exit "$rc"
