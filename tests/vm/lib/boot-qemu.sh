#!/usr/bin/env bash
# Usage: boot-qemu.sh [--verbose] TIMEOUT CONSOLE_LOG QEMU_ARG...
# Runs one headless QEMU guest whose serial console goes to CONSOLE_LOG, kills
# it after TIMEOUT seconds (exit status 124), and never leaves it running: if
# this script is interrupted, QEMU goes with it. --verbose streams the console
# to stdout while the guest runs. Exit status: QEMU's, or 124 on timeout.
set -euo pipefail
verbose=0
if [ "${1:-}" = --verbose ]; then verbose=1; shift; fi
timeout_s=${1:?usage: boot-qemu.sh [--verbose] TIMEOUT CONSOLE_LOG QEMU_ARG...}
console=${2:?}
shift 2

: >"$console"
timeout -k 5 "$timeout_s" qemu-system-x86_64 -nodefaults -nographic -display none \
  -no-reboot -monitor none -serial "file:$console" "$@" </dev/null &
qemu=$!
tailer=
cleanup() {
  kill "$qemu" 2>/dev/null || true
  [ -z "$tailer" ] || kill "$tailer" 2>/dev/null || true
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
exit "$rc"
