#!/usr/bin/env bash
# Usage: boot-qemu.sh [--verbose] TIMEOUT CONSOLE_LOG QEMU_ARG...
# Runs one headless QEMU guest whose serial console goes to CONSOLE_LOG, kills
# it after TIMEOUT seconds (exit status 124), and never leaves it running: if
# this script is interrupted, QEMU goes with it. --verbose streams the console
# to stdout while the guest runs. When the guest prints its hang report
# ("dmu-init: HANG"), QEMU's own view of every virtqueue is read over QMP
# (virtio-state.py) and appended to CONSOLE_LOG as "host-virtio:" lines.
# Exit status: QEMU's, or 124 on timeout.
set -euo pipefail
verbose=0
if [ "${1:-}" = --verbose ]; then verbose=1; shift; fi
timeout_s=${1:?usage: boot-qemu.sh [--verbose] TIMEOUT CONSOLE_LOG QEMU_ARG...}
console=${2:?}
shift 2

: >"$console"
# A short path: a UNIX socket's must stay under 108 bytes, build dirs need not.
qmp=$(mktemp -u "${TMPDIR:-/tmp}/dmu-qmp.XXXXXX")
rm -f "$console.host"
timeout -k 5 "$timeout_s" qemu-system-x86_64 -nodefaults -nographic -display none \
  -no-reboot -monitor none -serial "file:$console" -qmp "unix:$qmp,server=on,wait=off" \
  "$@" </dev/null &
qemu=$!
tailer=
(
  until grep -q "dmu-init: HANG" "$console" 2>/dev/null; do
    kill -0 "$qemu" 2>/dev/null || exit 0
    sleep 1
  done
  "$(dirname "${BASH_SOURCE[0]}")/virtio-state.py" "$qmp" >"$console.host" 2>&1
) &
watcher=$!
cleanup() {
  kill "$qemu" "$watcher" 2>/dev/null || true
  [ -z "$tailer" ] || kill "$tailer" 2>/dev/null || true
  rm -f "$qmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
if ((verbose)); then
  # Without carriage returns and the BIOS's terminal escape sequences.
  tail -n +1 -f --pid="$qemu" "$console" | tr -d '\r' |
    sed -u -e 's/\x1bc//g' -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' &
  tailer=$!
fi
rc=0
wait "$qemu" || rc=$?
if [ -n "$tailer" ]; then wait "$tailer" 2>/dev/null || true; tailer=; fi
wait "$watcher" 2>/dev/null || true
if [ -s "$console.host" ]; then
  sed 's/^/host-virtio: /' "$console.host" >>"$console"
  rm -f "$console.host"
fi
exit "$rc"
