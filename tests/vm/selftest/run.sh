#!/usr/bin/env bash
# Usage: selftest/run.sh BUILD
# Proves the VM harness fails when it should, with the modules in this folder
# standing in for kmod/ (DMU_KMOD_DIR) and throw-away cases:
#   1. a module with a syntax error: kmod build fails and shows the compiler error;
#   2. a module whose init fails: the case fails before it runs (status 97);
#   3. a case that exits 3: the test fails with status 3;
#   4. a guest that hangs: QEMU is killed at the case's timeout (status 124)
#      and the console tail is printed; no QEMU process is left behind;
#   5. cases sharing a boot (--boot): one that leaves a loop device and a
#      process behind fails, named, after the one before it passed, and the
#      next one does not run; one that outlives its own timeout ends the run
#      with the hang report (status 93), long before the boot's.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
vm_lib=$here/../lib
build=$(realpath -m "${1:?usage: run.sh BUILD}")
work=$build/tests/vm/selftest
rm -rf "$work"
mkdir -p "$work/cases"
export DMU_VM_PIECES=$build/tests/vm/pieces   # reuse the main tools piece
failures=0
check() {   # check WHAT EXPECTED_STATUS ACTUAL_STATUS OUTPUT_FILE PATTERN
  if [ "$2" = "$3" ] && grep -q -- "$5" "$4"; then
    echo "selftest: ok: $1 (status $3)"
  else
    echo "selftest: FAILED: $1: status $3 (want $2), output matches '$5': $(grep -c -- "$5" "$4")"
    sed 's/^/  | /' "$4"
    failures=$((failures + 1))
  fi
}
run() {   # run KMOD_VARIANT CASE...: status of run-case.sh, output in $work/out
  local rc=0 variant=$1 boot=()
  shift
  [ $# = 1 ] || boot=(--boot shared)   # several cases: one shared boot
  DMU_KMOD_DIR=$here/$variant "$vm_lib/run-case.sh" --build "$work/$variant" --kernel 6.12 \
    "${boot[@]}" "$@" >"$work/out" 2>&1 || rc=$?
  echo "$rc"
}

rc=0
DMU_KMOD_DIR=$here/syntax-error "$vm_lib/prepare-kernel.sh" 6.12 "$work/syntax-error" \
  >"$work/out" 2>&1 || rc=$?
check "module with a syntax error fails the build" 1 "$rc" "$work/out" "error: expected"

printf '#!/bin/sh\n# vm: timeout=120\necho "case ran"\nexit 0\n' >"$work/cases/pass.sh"
check "module that fails to load fails the case" 97 "$(run load-fails "$work/cases/pass.sh")" \
  "$work/out" "FAILED to load dm-userspace"

printf '#!/bin/sh\n# vm: timeout=120\necho "about to fail"\nexit 3\n' >"$work/cases/exit3.sh"
check "case exiting 3 fails with status 3" 3 "$(run good "$work/cases/exit3.sh")" \
  "$work/out" "about to fail"

# On a loaded host the guest may not even reach the case in 20 s; either way
# QEMU must be killed and the console tail shown.
printf '#!/bin/sh\n# vm: timeout=20\necho "hanging now"\nsleep 1000\n' >"$work/cases/hang.sh"
check "hanging guest is killed at its timeout" 124 "$(run good "$work/cases/hang.sh")" \
  "$work/out" "TIMEOUT after .*Last console lines"
printf '#!/bin/sh\n# vm: timeout=120\necho "first case ran"\n' >"$work/cases/first.sh"
printf '#!/bin/sh\n# vm: timeout=120\ntruncate -s 1M /tmp/f\nlosetup -f /tmp/f\nsleep 1000 &\n' \
  >"$work/cases/leaky.sh"
printf '#!/bin/sh\n# vm: timeout=120\necho "third case ran"\n' >"$work/cases/third.sh"
rc=$(run good "$work/cases/first.sh" "$work/cases/leaky.sh" "$work/cases/third.sh")
check "a case of a shared boot that leaves a loop device fails" 1 "$rc" "$work/out" \
  "FAILED: leaky left loop devices: /dev/loop"
if ! grep -q "first passed" "$work/out" || ! grep -q "leaky left process .*sleep 1000" "$work/out" ||
  grep -q "third case ran" "$work/out"; then
  echo "selftest: FAILED: the shared boot did not run first, name leaky's process and stop before third"
  sed 's/^/  | /' "$work/out"
  failures=$((failures + 1))
fi
printf '#!/bin/sh\n# vm: timeout=15\necho "hanging now"\nsleep 1000\n' >"$work/cases/hangs.sh"
check "a case of a shared boot that outlives its timeout ends the run" 93 \
  "$(run good "$work/cases/first.sh" "$work/cases/hangs.sh" "$work/cases/third.sh")" "$work/out" \
  "HANG: hangs still running at uptime .* past its timeout (15 s)"
if pgrep -f "qemu-system-x86_64.*$work" >/dev/null; then
  echo "selftest: FAILED: a QEMU process of the self-test is still running"
  failures=$((failures + 1))
fi

[ "$failures" = 0 ] && echo "selftest: all harness checks passed" && rm -rf "$work"
exit "$failures"
