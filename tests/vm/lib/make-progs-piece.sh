#!/usr/bin/env bash
# Usage: make-progs-piece.sh LIST OUT
# Builds the initramfs piece OUT with the project's programs: every path in
# LIST (written by CMake from dmu_guest_program()) lands in /usr/local/bin with
# the shared libraries it needs, without debug info. A missing LIST means no
# programs (empty piece).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
list=${1:?usage: make-progs-piece.sh LIST OUT}
out=${2:?}
progs=()
[ -f "$list" ] && mapfile -t progs < <(sed -e '/^[[:space:]]*$/d' "$list")
for p in "${progs[@]}"; do
  [ -x "$p" ] || die "guest program $p is not built (run cmake --build first)"
done
stamp=$(files_stamp "$vm_lib/make-progs-piece.sh" "$vm_lib/copy-with-libs.sh" "${progs[@]}")
up_to_date "$out" "$stamp" && exit 0
stage=$out.d
rm -rf "$stage"
mkdir -p "$stage/usr/local/bin"
((${#progs[@]} == 0)) || PROGRAM_DIR=/usr/local/bin "$vm_lib/copy-with-libs.sh" "$stage" "${progs[@]}"
# Debug info (RelWithDebInfo) would double the initramfs every guest unpacks;
# symbols stay, so backtraces still name functions.
find "$stage/usr/local/bin" -type f -exec strip --strip-debug {} +
pack_cpio "$stage" "$out"
rm -rf "$stage"
echo "$stamp" >"$out.stamp"
log "$(basename "$out"): ${#progs[@]} project programs, $(du -h "$out" | cut -f1)"
