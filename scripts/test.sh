#!/usr/bin/env bash
# scripts/test.sh — the whole test suite, from a fresh Debian 12 machine:
# installs missing host packages, builds the CMake project, then runs CTest:
# the unit label first (fast failures show early), then everything else (VM
# tests on Debian's 6.1 and 6.12 kernels, Xen tests, kmod W=1/sparse checks,
# and any test without a label) except the debug label: the debug-kernel lane
# (lockdep/KASAN/kmemleak, its own kernel build) runs with
# tests/vm/debug-lane.sh; and the bench label: the benchmarks' quick runs
# (bench/CMakeLists.txt), run by hand before a benchmark. Kernels and Xen
# are downloaded once into /var/cache/dmu.
# Idempotent; exit status 0 only if every test passed.
# Environment: DMU_BUILD_DIR (default ./build), DMU_JOBS (default: nproc),
# DMU_CACHE_DIR (default /var/cache/dmu), CI=true (progress every minute).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${DMU_BUILD_DIR:-$root/build}
jobs=${DMU_JOBS:-$(nproc)}
logs=$build/test-logs
say() { printf 'test.sh [%dm%02ds]: %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }

heartbeat= sanitized=
# On the way out (also when interrupted): the heartbeat, and the sanitized
# tests' background run (its own process group: setsid below).
stop_background() {
  [ -z "$heartbeat" ] || kill "$heartbeat" 2>/dev/null || true
  [ -z "$sanitized" ] || kill -- -"$sanitized" 2>/dev/null || true
}
trap stop_background EXIT
trap 'exit 130' INT TERM
if [ "${CI:-}" = true ] || [ "${DMU_PROGRESS:-0}" = 1 ]; then
  # A long VM or Xen test prints nothing until it ends; say we are alive.
  (while sleep 60; do say "still running"; done) &
  heartbeat=$!
fi

say "1/4 host packages"
"$root/scripts/lib/setup-host.sh"
say "2/4 configure and build in $build"
# -g1 (line tables: backtraces still name file and line) instead of -g: the
# build is a sixth of the suite's time, and full debug info makes the test
# programs' compiles take half again as long (qcow2_write_test.cc: 17.3 s
# with -g, 11.9 s with -g1).
flags="-O2 -g1 -DNDEBUG"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDMU_WERROR=ON \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="$flags" -DCMAKE_C_FLAGS_RELWITHDEBINFO="$flags" >/dev/null
cmake --build "$build" -j "$jobs"
mkdir -p "$logs"
# A clean build has no timing data, and CTest then starts tests in the order
# they were added: a long VM case started last keeps one core busy while
# the other idles.  tests/ctest-costs.txt (CTest's cost-file format: name,
# runs, seconds; the VM and Xen tests' times in measured runs) orders them
# until this build has timings of its own.  Refresh it from a full run's
# <build>/Testing/Temporary/CTestCostData.txt when tests change much.
costs=$build/Testing/Temporary/CTestCostData.txt
if [ ! -e "$costs" ]; then
  mkdir -p "$(dirname "$costs")"
  cp "$root/tests/ctest-costs.txt" "$costs"
fi

# count NAME RC: a CTest run's summary line (in $logs/NAME.log) feeds the totals.
passed=0 failed=0 status=0
count() {
  local line
  line=$(grep -E 'tests passed, [0-9]+ tests? failed out of [0-9]+' "$logs/$1.log" | tail -1 || true)
  if [[ $line =~ ([0-9]+)\ tests?\ failed\ out\ of\ ([0-9]+) ]]; then
    failed=$((failed + BASH_REMATCH[1]))
    passed=$((passed + BASH_REMATCH[2] - BASH_REMATCH[1]))
  fi
  [ "$2" = 0 ] || status=1
}
# run_ctest NAME ARGS...: one CTest run, shown as it goes.
run_ctest() {
  local name=$1 rc
  shift
  set +e
  ctest --test-dir "$build" --output-on-failure -j "$jobs" "$@" 2>&1 | tee "$logs/$name.log"
  rc=${PIPESTATUS[0]}
  set -e
  count "$name" "$rc"
}
say "3/4 unit tests"
run_ctest unit -L unit -LE sanitized
# The sanitized hostile tests (label sanitized) build a tree of their own: a
# fifth of the suite's CPU time. They run at nice 19 beside the VM and Xen
# tests, on the CPU time those leave idle (the cases wait on their guests
# for a third of the time), and their log is shown at the end. Not beside
# the unit tests, which keep both cores busy. Their own process group
# (setsid) is killed on the way out; setsid also makes a new scheduler
# autogroup (sched_autogroup), whose own nice must be set too, or the group
# would get an equal share of the CPU with the suite's.
say "4/4 VM, Xen and other tests (both kernels; this takes a while), and the sanitized hostile tests at nice 19"
# shellcheck disable=SC2016
setsid sh -c 'echo 19 >/proc/self/autogroup 2>/dev/null; exec nice -n 19 "$@"' sanitized \
  ctest --test-dir "$build" --output-on-failure -j "$jobs" -L sanitized >"$logs/sanitized.log" 2>&1 &
sanitized=$!
run_ctest rest -LE '^(unit|debug|sanitized|bench)$'
if kill -0 "$sanitized" 2>/dev/null; then say "waiting for the sanitized hostile tests"; fi
rc=0
wait "$sanitized" || rc=$?
sanitized=
say "sanitized hostile tests:"
cat "$logs/sanitized.log"
count sanitized "$rc"

booted=$(cat "$build"/tests/{vm,xen}/results/*/console.log 2>/dev/null | tr -d '\r' |
  sed -n 's/.*dmu-init: booted \(Linux [^ ]*\) as \([a-z0-9]*\).*/\1 (\2)/p' | sort | uniq -c || true)
say "kernels booted (count, release, role):"
echo "${booted:-  none}"
say "done in $((SECONDS / 60))m$((SECONDS % 60))s; logs in $logs"
echo "suite: $passed passed, $failed failed"
exit "$status"
