#!/usr/bin/env bash
# tests/demo-check.sh BUILD_DIR [--kernel-only] — README command 1 keeps its
# promises: scripts/demo.sh (the Xen demo; or its kernel-only variant) exits 0
# by itself, prints each of its steps and the console of what it booted, and
# leaves nothing behind on the host: no QEMU or test daemon process, no loop
# device, no mount, no dm device that was not there before.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
build=$(realpath "${1:?usage: $0 BUILD_DIR [--kernel-only]}")
mode=${2:-}
out=$build/test-logs/demo${mode:+-kernel-only}.log
mkdir -p "$(dirname "$out")"

# host_state: what the demo could leave behind, one item per line.
host_state() {
  pgrep -a -f 'qemu-system|dmu-test-daemon|dmu-daemon' | sed 's/^[0-9]* /process: /' || true
  for b in /sys/block/loop*/loop/backing_file; do
    [ -e "$b" ] && echo "loop: $b -> $(cat "$b")"
  done
  sed 's/^/mount: /' /proc/mounts
  [ -d /dev/mapper ] && ls /dev/mapper | sed 's/^/dm: /'
  true
}

before=$(host_state | sort)
rc=0
timeout 1200 env DMU_BUILD_DIR="$build" "$src/scripts/demo.sh" $mode >"$out" 2>&1 || rc=$?
after=$(host_state | sort)

fail=0
problem() { echo "demo-check: $*" >&2; fail=1; }
[ "$rc" = 0 ] || problem "scripts/demo.sh exited with $rc (124: still running after 1200 s)"
if [ -n "$mode" ]; then
  boot="4/4 boot it under QEMU" console='dmu-init: booted Linux 6\.12.* as vm'
else
  boot="4/4 Xen 4.17" console='dmu-init: booted Linux 6\.12.* as dom0'
fi
for step in "1/4 host packages" "2/4 build" "3/4 Debian 12's 6.12 kernel" "$boot" "done:"; do
  grep -q "^demo \[[0-9]*s\]: $step" "$out" || problem "the demo did not print its step '$step'"
done
grep -q "$console" "$out" || problem "the console of what the demo booted is not in its output"
leftover=$(comm -13 <(echo "$before") <(echo "$after"))
[ -z "$leftover" ] || problem "left behind on the host:"$'\n'"$leftover"
if [ "$fail" = 1 ]; then
  echo "--- tail of $out" >&2
  tail -30 "$out" >&2
  exit 1
fi
echo "demo-check: the demo passed in $(grep -o '^demo \[[0-9]*s\]: done' "$out" | grep -o '[0-9]*')s and left nothing behind"
