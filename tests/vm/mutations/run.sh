#!/usr/bin/env bash
# Usage: tests/vm/mutations/run.sh [--build DIR] [--kernel 6.1|6.12] [NAME...]
# Shows that the kernel target's tests can fail: each patch here takes one
# guarantee out of kmod/ (its first lines name the VM case that must catch
# it and why), the module is built from a patched copy (DMU_KMOD_DIR), and
# that case is booted on it.  A mutation the case does not catch ("survived")
# makes this script fail.  Not part of the suite: one boot per mutation.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../../.." && pwd)
build=$root/build kernel=6.12
while [ $# -gt 0 ]; do
  case $1 in
    --build) build=$2; shift 2 ;;
    --kernel) kernel=$2; shift 2 ;;
    *) break ;;
  esac
done
names=("$@")
if [ ${#names[@]} = 0 ]; then
  for p in "$here"/*.patch; do names+=("$(basename "$p" .patch)"); done
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
logs=$build/tests/vm/mutations
mkdir -p "$logs"
# A build dir of its own (the patched module must not land in $build's),
# with $build's programs and tools piece.
mkdir -p "$work/build/tests"
cp "$build/tests/guest-programs.txt" "$work/build/tests/"
export DMU_VM_PIECES=$build/tests/vm/pieces
survived=0
for name in "${names[@]}"; do
  patch=$here/$name.patch
  case_name=$(sed -n 's/^# case: //p' "$patch")
  rm -rf "$work/kmod" && cp -a "$root/kmod" "$work/kmod"
  patch -s -p1 -d "$work/kmod" <"$patch"
  start=$SECONDS
  if DMU_KMOD_DIR=$work/kmod "$root/tests/vm/lib/run-case.sh" --build "$work/build" --kernel "$kernel" \
    "$root/tests/vm/cases/$case_name.sh" >"$logs/$name.log" 2>&1; then
    echo "mutation $name: SURVIVED ($case_name passed on it)"
    survived=1
  else
    why=$(grep -m1 -E 'FAIL:|write_stalled|timed out|panic' "$logs/$name.log" | sed 's/^ *| *//' || true)
    echo "mutation $name: caught by $case_name in $((SECONDS - start)) s: ${why:-see $logs/$name.log}"
  fi
done
exit $survived
