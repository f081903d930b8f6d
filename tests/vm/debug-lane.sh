#!/usr/bin/env bash
# tests/vm/debug-lane.sh — the debug-kernel lane: every kmod-* VM case on a
# Debian 6.1 kernel built with lockdep, KASAN, kmemleak, DEBUG_LIST and
# DEBUG_OBJECTS (kernel line 6.1-debug), plus the lane's self-test. A case
# fails if it fails, or if the kernel printed a lockdep/KASAN/other report,
# or kmemleak found a leak after it (tests/vm/README.md, "The debug-kernel
# lane"). Not part of scripts/test.sh: the kernel takes long to build once
# (cached in $DMU_CACHE_DIR/debug-kernels) and the guests run ~4x slower.
# Usage: tests/vm/debug-lane.sh [CTEST_ARG...]   e.g. -R kmod-flush
# Environment: DMU_BUILD_DIR (default ./build), DMU_JOBS (default: nproc),
# DMU_CACHE_DIR (default /var/cache/dmu), DMU_KERNEL_JOBS (kernel build, 2).
# Exit status 0 only if every test passed.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=$(realpath -m "${DMU_BUILD_DIR:-$root/build}")
jobs=${DMU_JOBS:-$(nproc)}
logs=$build/test-logs
say() { printf 'debug-lane [%dm%02ds]: %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }

say "1/4 host packages"
"$root/scripts/lib/setup-host.sh"
say "2/4 configure and build in $build"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDMU_WERROR=ON >/dev/null
cmake --build "$build" -j "$jobs"
say "3/4 debug kernel (built once into ${DMU_CACHE_DIR:-/var/cache/dmu}/debug-kernels; the first time takes long)"
t0=$SECONDS
krel=$("$root/tests/vm/lib/build-debug-kernel.sh" 6.1)
say "kernel $krel ready after $((SECONDS - t0))s"
say "4/4 ctest -L debug $*"
mkdir -p "$logs"
set +e
ctest --test-dir "$build" -L debug --output-on-failure -j "$jobs" "$@" 2>&1 | tee "$logs/debug.log"
rc=${PIPESTATUS[0]}
set -e

say "summary (test, result, seconds):"
grep -E '^ *[0-9]+/[0-9]+ Test +#[0-9]+: ' "$logs/debug.log" |
  sed -E 's/^ *[0-9]+\/[0-9]+ Test +#[0-9]+: ([^ ]+) \.+ *(\*\*\*)?([A-Za-z]+[A-Za-z ]*[A-Za-z])? +([0-9.]+) sec$/  \1  \3  \4/' || true
for d in "$build"/tests/vm/results/*.6.1-debug; do
  [ -f "$d/console.log" ] || continue
  if tr -d '\r' <"$d/console.log" | grep -qE '^\[ *[0-9.]+\] .*(WARNING:|BUG:|inconsistent lock state|ODEBUG:)|^unreferenced object'; then
    say "kernel reports in $d/console.log"
  fi
done
line=$(grep -E 'tests passed, [0-9]+ tests? failed out of [0-9]+' "$logs/debug.log" | tail -1 || true)
say "done in $((SECONDS / 60))m$((SECONDS % 60))s; log in $logs/debug.log"
echo "debug lane: ${line:-no tests ran}"
exit "$rc"
