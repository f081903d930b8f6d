#!/usr/bin/env bash
# Usage: selftest/debug-run.sh BUILD
# Proves the debug lane (kernel line 6.1-debug) fails when it should, with the
# modules in this folder standing in for kmod/ (DMU_KMOD_DIR) and a case that
# itself passes (exit 0), so only the debug checks can fail it:
#   1. clean module (good/): passes, kmemleak clean;
#   2. leak/: kmemleak reports the module's lost buffers (status 123);
#   3. lock-inversion/: lockdep reports a possible circular dependency (123);
#   4. kasan-oob/: KASAN reports a slab-out-of-bounds read (123);
#   5. atomic-sleep/: GFP_KERNEL under a spinlock: "sleeping function called
#      from invalid context" (123).
# Each failure must print the report itself, not just a status.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
vm_lib=$here/../lib
build=$(realpath -m "${1:?usage: debug-run.sh BUILD}")
line=${DMU_DEBUG_SELFTEST_LINE:-6.1-debug}
work=$build/tests/vm/debug-selftest
rm -rf "$work"
mkdir -p "$work/cases"
export DMU_VM_PIECES=$build/tests/vm/pieces   # reuse the main tools piece
failures=0
check() {   # check WHAT EXPECTED_STATUS ACTUAL_STATUS OUTPUT_FILE PATTERN...
  local what=$1 want=$2 got=$3 out=$4 pat ok=1
  shift 4
  [ "$want" = "$got" ] || ok=0
  for pat in "$@"; do grep -qE -- "$pat" "$out" || { ok=0; echo "selftest: missing in output: '$pat'"; }; done
  if ((ok)); then
    echo "selftest: ok: $what (status $got)"
  else
    echo "selftest: FAILED: $what: status $got (want $want)"
    sed 's/^/  | /' "$out"
    failures=$((failures + 1))
  fi
}
run() {   # run KMOD_VARIANT: status of run-case.sh, output in $work/<variant>.out
  local rc=0
  DMU_KMOD_DIR=$here/$1 "$vm_lib/run-case.sh" --build "$work/$1" --kernel "$line" \
    "$work/cases/pass.sh" >"$work/$1.out" 2>&1 || rc=$?
  echo "$rc"
}

printf '#!/bin/sh\n# vm: timeout=120\necho "case ran"\nexit 0\n' >"$work/cases/pass.sh"

check "clean module passes" 0 "$(run good)" "$work/good.out" \
  "kmemleak clean" "passed \(Linux"
check "leaked kmalloc fails the case" 123 "$(run leak)" "$work/leak.out" \
  "kmemleak: [0-9]+ suspected leaks" "unreferenced object .*\(size 192\)" "selftest_leak"
check "inverted lock order fails the case" 123 "$(run lock-inversion)" "$work/lock-inversion.out" \
  "WARNING: possible circular locking dependency detected" "selftest_[ab]"
check "out-of-bounds read fails the case" 123 "$(run kasan-oob)" "$work/kasan-oob.out" \
  "BUG: KASAN: slab-out-of-bounds in selftest_init" "Read of size 1"
check "sleeping in atomic context fails the case" 123 "$(run atomic-sleep)" "$work/atomic-sleep.out" \
  "BUG: sleeping function called from invalid context" "selftest_init"
if pgrep -f "qemu-system-x86_64.*$work" >/dev/null; then
  echo "selftest: FAILED: a QEMU process of the self-test is still running"
  failures=$((failures + 1))
fi

[ "$failures" = 0 ] && echo "selftest: all debug-lane checks passed" && rm -rf "$work"
exit "$failures"
