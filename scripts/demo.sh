#!/usr/bin/env bash
# scripts/demo.sh — the dmu demo, from a fresh Debian 12 machine: installs
# missing host packages, builds the project, fetches Debian's 6.12 kernel and
# Xen 4.17, builds the dm-userspace module, boots Xen with a Debian dom0 under
# QEMU and, in dom0, starts a PV guest whose disk is a qcow2 file served by dmu
# through blkback (scripts/lib/demo-xen-dom0.sh).
#   scripts/demo.sh                the Xen demo (a few minutes)
#   scripts/demo.sh --kernel-only  the faster kernel-only demo: dmu attach of a
#                                  qcow2 image in a plain VM (scripts/lib/demo-guest.sh)
# Everything runs inside QEMU: on the host nothing stays behind (no process,
# loop device or mount). Idempotent; the second run reuses caches.
# Environment: DMU_BUILD_DIR (default ./build), DMU_CACHE_DIR (/var/cache/dmu).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${DMU_BUILD_DIR:-$root/build}
say() { printf '\ndemo [%ds]: %s\n' "$SECONDS" "$*"; }
mode=xen
case ${1:-} in
  "") ;;
  --kernel-only) mode=kernel ;;
  -h | --help) sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: scripts/demo.sh [--kernel-only]" >&2; exit 2 ;;
esac

say "1/4 host packages (apt-get install of whatever is missing)"
"$root/scripts/lib/setup-host.sh"
say "2/4 build the project (cmake) in $build"
cmake -S "$root" -B "$build" >/dev/null
cmake --build "$build" -j "$(nproc)"
say "3/4 Debian 12's 6.12 kernel (apt-get download into the cache) and the module built for it"
"$root/tests/vm/lib/prepare-kernel.sh" 6.12 "$build"
rc=0
if [ "$mode" = xen ]; then
  say "4/4 Xen 4.17 (apt-get download into the cache), booted under QEMU with dom0 on 6.12; dom0's console follows"
  "$root/tests/xen/lib/run-case.sh" --build "$build" --verbose "$root/scripts/lib/demo-xen-dom0.sh" || rc=$?
  run=demo-xen-dom0 results=$build/tests/xen/results/demo-xen-dom0/
else
  say "4/4 boot it under QEMU; the guest's console follows"
  "$root/tests/vm/lib/run-case.sh" --build "$build" --kernel 6.12 --verbose \
    "$root/scripts/lib/demo-guest.sh" || rc=$?
  run=demo-guest results=$build/tests/vm/results/demo-guest.6.12/
fi
if pgrep -f "qemu-system-x86_64.*$build/tests/(vm|xen)/runs/$run" >/dev/null; then
  say "ERROR: the demo's QEMU is still running"
  exit 1
fi
if [ "$rc" = 0 ]; then
  say "done: QEMU powered off; nothing is left running on the host"
else
  say "the demo FAILED (status $rc); the console is in $results"
fi
exit "$rc"
