#!/usr/bin/env bash
# Usage: build-kmod.sh KROOT KREL SRC OUT
# Builds the out-of-tree module sources in SRC (kmod/) against the headers of
# the unpacked kernel KROOT/KREL. The sources are copied to OUT first so no
# build product lands in the source tree. Fails, printing the whole compiler
# output, when the build fails, prints any warning, or produces no .ko.
# Skipped when the sources did not change since the last good build.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
log_prefix=kmod
kroot=${1:?usage: build-kmod.sh KROOT KREL SRC OUT}
krel=${2:?} src=${3:?} out=${4:?}
headers=$kroot/usr/src/linux-headers-$krel
[ -d "$headers" ] || die "no kernel headers in $headers"
[ -f "$src/Kbuild" ] || [ -f "$src/Makefile" ] || die "$src has no Kbuild or Makefile"

# The kernel's .config and Module.symvers too: a debug kernel
# (build-debug-kernel.sh) may be rebuilt in place with the same Makefile.
kfiles=("$headers/Makefile")
for f in "$headers/.config" "$headers/Module.symvers"; do [ -f "$f" ] && kfiles+=("$f"); done
stamp=$(tree_stamp "$src")-$(files_stamp "$vm_lib/build-kmod.sh" "${kfiles[@]}")
if up_to_date "$out/.build" "$stamp" && compgen -G "$out/*.ko" >/dev/null; then
  log "$krel: up to date ($(cd "$out" && echo *.ko))"
  exit 0
fi

rm -rf "$out"
mkdir -p "$out"
cp -a "$src/." "$out/"
# 6.12 builds with x86_64-linux-gnu-gcc-12 and needs pahole (dwarves) for BTF.
if ! LANG=C LC_ALL=C make -C "$headers" M="$out" modules >"$out/.build.log" 2>&1; then
  cat "$out/.build.log" >&2
  die "$krel: building $src failed (log above, also in $out/.build.log)"
fi
if grep -iE '(^|[^a-z])warning' "$out/.build.log" | grep -v 'Skipping BTF generation' >/dev/null; then
  cat "$out/.build.log" >&2
  die "$krel: building $src printed warnings (log above); the module must build warning-free"
fi
compgen -G "$out/*.ko" >/dev/null || { cat "$out/.build.log" >&2; die "$krel: no .ko produced in $out"; }
echo "$stamp" >"$out/.build.stamp"
touch "$out/.build"
log "$krel: built $(cd "$out" && echo *.ko)"
