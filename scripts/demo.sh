#!/usr/bin/env bash
# scripts/demo.sh — the dmu demo, from a fresh Debian 12 machine: installs
# missing host packages, builds the project, fetches Debian's 6.12 kernel,
# builds the dm-userspace module for it, boots it under QEMU and, inside the
# guest, attaches a qcow2 image with dmu attach and uses it (scripts/lib/demo-guest.sh).
# Everything runs inside the guest: on the host nothing stays behind (no
# process, loop device or mount). Idempotent; the second run reuses caches.
# Environment: DMU_BUILD_DIR (default ./build), DMU_CACHE_DIR (/var/cache/dmu).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${DMU_BUILD_DIR:-$root/build}
say() { printf '\ndemo [%ds]: %s\n' "$SECONDS" "$*"; }

say "1/4 host packages (apt-get install of whatever is missing)"
"$root/scripts/lib/setup-host.sh"
say "2/4 build the project (cmake) in $build"
cmake -S "$root" -B "$build" >/dev/null
cmake --build "$build" -j "$(nproc)"
say "3/4 Debian 12's 6.12 kernel (apt-get download into the cache) and the module built for it"
"$root/tests/vm/lib/prepare-kernel.sh" 6.12 "$build"
say "4/4 boot it under QEMU; the guest's console follows"
rc=0
"$root/tests/vm/lib/run-case.sh" --build "$build" --kernel 6.12 --verbose \
  "$root/scripts/lib/demo-guest.sh" || rc=$?
if pgrep -f "qemu-system-x86_64.*$build/tests/vm/runs/demo-guest" >/dev/null; then
  say "ERROR: the demo's QEMU is still running"
  exit 1
fi
if [ "$rc" = 0 ]; then
  say "done: the guest powered off; nothing is left running on the host"
else
  say "the demo FAILED (status $rc); the guest's console is in $build/tests/vm/results/demo-guest.6.12/"
fi
exit "$rc"
