#!/usr/bin/env bash
# Usage: prepare-kernel.sh LINE BUILD
# The per-kernel fixture: fetches the newest Debian 12 kernel of LINE (6.1 or
# 6.12) into the cache -- or, for LINE 6.1-debug, builds the debug kernel from
# Debian's sources (build-debug-kernel.sh; cached, an hour the first time) --,
# builds the project's module (kmod/, or $DMU_KMOD_DIR) against it in
# BUILD/kmod/<release>/, builds the modules initramfs piece and records the
# result in BUILD/tests/vm/kernels/LINE.env for run-case.sh.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
line=${1:?usage: prepare-kernel.sh LINE BUILD}
build=$(realpath -m "${2:?usage: prepare-kernel.sh LINE BUILD}")
kmod_src=${DMU_KMOD_DIR:-$src_root/kmod}

case $line in
  *-debug)
    krel=$("$vm_lib/build-debug-kernel.sh" "${line%-debug}")
    kroot=$cache_root/debug-kernels/$krel/root
    modules_list=$vm_lib/modules-debug.list
    debug=1 ;;
  *)
    krel=$("$vm_lib/fetch-kernel.sh" "$line")
    kroot=$cache_root/kernels/$krel/root
    modules_list=$vm_lib/modules.list
    debug=0 ;;
esac
ko_dir=$build/kmod/$krel
with_lock "$build/kmod/$krel.lock" "$vm_lib/build-kmod.sh" "$kroot" "$krel" "$kmod_src" "$ko_dir"
modules_piece=$build/tests/vm/kernels/modules-$krel.cpio.zst
with_lock "$modules_piece.lock" "$vm_lib/make-modules-piece.sh" "$kroot" "$krel" "$ko_dir" "$modules_piece" "$modules_list"
env_file=$build/tests/vm/kernels/$line.env
mkdir -p "$(dirname "$env_file")"
cat >"$env_file.tmp" <<EOT
KREL='$krel'
KROOT='$kroot'
KERNEL_IMAGE='$kroot/boot/vmlinuz-$krel'
MODULES_PIECE='$modules_piece'
DEBUG_KERNEL=$debug
EOT
mv "$env_file.tmp" "$env_file"
log "kernel $line: $krel ready, module built from $kmod_src"
