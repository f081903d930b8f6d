#!/usr/bin/env bash
# tests/hostile/run-sanitized.sh BUILD_DIR — the hostile-input tests under
# ASan+UBSan.  Configures BUILD_DIR/sanitize with -DDMU_SANITIZE=ON, builds
# only dmu and the test programs that feed malformed images to the engines,
# and runs them.  The corpus test runs the sanitized dmu on every corpus image
# (a sanitizer report exits 86/87 and fails it); the engine tests run the
# parsers in-process, so a report there aborts the program.  The fuzz targets
# replay their seed corpora under the sanitizers too.  Exit 0 only if every
# program passed.
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
build=$(realpath -m "${1:?usage: $0 BUILD_DIR}")/sanitize
jobs=${DMU_JOBS:-$(nproc)}
programs=(hostile_corpus_test qcow_hostile_test vmdk_hostile_test qcow2_header_test qcow2_check_test)
fuzzers=()
for f in "$src"/tests/fuzz/*_fuzz.cc; do fuzzers+=("$(basename "$f" .cc)"); done

say() { printf 'sanitized hostile tests: %s\n' "$*"; }
say "configure $build"
# -O0 -g1: line numbers in sanitizer reports, and half the compile time of
# -O1 (13 s instead of 28 s for qcow2_write_test.cc), which is most of this
# test's time; the programs run for a minute either way.
cmake -S "$src" -B "$build" -DDMU_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug \
  -DCMAKE_CXX_FLAGS_DEBUG="-O0 -g1" -DCMAKE_C_FLAGS_DEBUG="-O0 -g1" >/dev/null
say "build dmu ${programs[*]} ${fuzzers[*]}"
cmake --build "$build" -j "$jobs" --target dmu "${programs[@]}" "${fuzzers[@]}"

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
# $jobs at a time (each one's output printed whole when it ends), so the
# suite's unit phase does not wait for them one after the other on an idle
# core.  The corpus test, the longest, runs its entries on threads itself.
logs=$build/runs
rm -rf "$logs" && mkdir -p "$logs"
# start LABEL COMMAND...: runs it in the background, its output and verdict
# in $logs; waits first while $jobs are running.
labels=() running=0
start() {
  local label=$1
  shift
  if [ "$running" -ge "$jobs" ]; then wait -n || true; running=$((running - 1)); fi
  { if "$@" >"$logs/$label.log" 2>&1; then echo ok; else echo FAILED; fi >"$logs/$label.rc"; } &
  labels+=("$label")
  running=$((running + 1))
}
for p in "${programs[@]}"; do
  say "run $p"
  start "$p" "$build/tests/unit/$p" --gtest_brief=1
done
for f in "${fuzzers[@]}"; do
  say "replay the corpus of $f"
  start "$f" "$build/tests/fuzz/$f" "$src/tests/fuzz/corpus/$f"
done
wait
rc=0
for l in "${labels[@]}"; do
  cat "$logs/$l.log" 2>/dev/null || true
  [ "$(cat "$logs/$l.rc" 2>/dev/null)" = ok ] || { say "$l FAILED"; rc=1; }
done
[ "$rc" = 0 ] && say "all passed" || say "some failed"
exit "$rc"
