#!/usr/bin/env bash
# Usage: kvm-probe.sh KERNEL
# Prints the QEMU accelerator to use: "kvm" if a KVM guest gets as far as
# printing "Linux version" within 5 s, else "tcg". On some hosts /dev/kvm
# exists but a KVM guest hangs in the BIOS, so merely opening it proves
# nothing. The answer is cached per host boot; DMU_VM_ACCEL overrides it.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
kernel=${1:?usage: kvm-probe.sh KERNEL}
if [ -n "${DMU_VM_ACCEL:-}" ]; then echo "$DMU_VM_ACCEL"; exit 0; fi
if [ ! -w /dev/kvm ]; then echo tcg; exit 0; fi
cached=$cache_root/kvm-probe.$(cat /proc/sys/kernel/random/boot_id)
probe() {
  [ -f "$cached" ] && return 0
  local tmp pid accel=tcg
  tmp=$(mktemp -d)
  qemu-system-x86_64 -accel kvm -m 256 -nographic -no-reboot -monitor none -nodefaults \
    -serial "file:$tmp/log" -kernel "$kernel" -append "console=ttyS0 panic=-1" \
    >/dev/null 2>&1 </dev/null &
  pid=$!
  for _ in $(seq 50); do
    if grep -q 'Linux version' "$tmp/log" 2>/dev/null; then accel=kvm; break; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$tmp"
  log "KVM probe: using $accel"
  echo "$accel" >"$cached.tmp" && mv "$cached.tmp" "$cached"
}
mkdir -p "$cache_root"
with_lock "$cache_root/kvm-probe.lock" probe
cat "$cached"
