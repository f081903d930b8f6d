#!/usr/bin/env bash
# Kernel hygiene checks of the dm-userspace module: builds kmod/ out of tree
# against the headers of one of Debian 12's kernels (the newest 6.1 or 6.12,
# fetched into the dmu cache by tests/vm/lib/fetch-kernel.sh, as the VM
# fixture does) with one of
#   w1      make W=1   (the kernel's extra compiler warnings; on 6.12 also
#                       modpost's, e.g. a missing MODULE_DESCRIPTION)
#   sparse  make C=1   (sparse over every source file: address spaces such as
#                       __user/__iomem, endianness, locking annotations,
#                       undeclared non-static symbols, ...)
# and fails, printing every warning (file:line: message) and the whole log,
# when the build fails or prints any warning or error.
#
# Usage: scripts/kmod-check.sh [--build DIR] [--src DIR | --rev REV] w1|sparse 6.1|6.12
#   --build DIR  work in DIR/kmod-check/<check>/<release>/ (kept for a look);
#                default: a temporary directory, removed afterwards
#   --src DIR    check the module sources in DIR instead of kmod/
#   --rev REV    check kmod/ as committed in REV (git archive; the working
#                tree and the index are not touched), e.g. --rev HEAD
set -euo pipefail
src_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
vm_lib=$src_root/tests/vm/lib
cache_root=${DMU_CACHE_DIR:-/var/cache/dmu}
log() { echo "kmod-check: $*" >&2; }
die() { log "ERROR: $*"; exit 2; }

build= src=$src_root/kmod rev=
while [ $# -gt 2 ]; do
  case $1 in
    --build) build=$(realpath -m "$2"); shift 2 ;;
    --src) src=$(realpath "$2"); shift 2 ;;
    --rev) rev=$2; shift 2 ;;
    *) die "unknown option $1" ;;
  esac
done
check=${1:?usage: kmod-check.sh [--build DIR] [--src DIR | --rev REV] w1|sparse 6.1|6.12}
line=${2:?usage: kmod-check.sh [--build DIR] [--src DIR | --rev REV] w1|sparse 6.1|6.12}
case $check in
  w1) flags=(W=1) ;;
  sparse)
    command -v sparse >/dev/null || die "sparse is not installed (Debian package sparse; scripts/lib/setup-host.sh)"
    flags=(C=1) ;;
  *) die "unknown check '$check' (want w1 or sparse)" ;;
esac

krel=$("$vm_lib/fetch-kernel.sh" "$line")
headers=$cache_root/kernels/$krel/root/usr/src/linux-headers-$krel
[ -d "$headers" ] || die "no kernel headers in $headers"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ -n "$build" ]; then out=$build/kmod-check/$check/$krel; else out=$tmp/out; fi
rm -rf "$out"
mkdir -p "$out"
if [ -n "$rev" ]; then
  git -C "$src_root" archive "$rev" kmod | tar -x -C "$tmp" || die "cannot read kmod/ at $rev"
  src=$tmp/kmod
fi
[ -f "$src/Kbuild" ] || die "$src has no Kbuild"
# A fresh copy: every file is compiled, so C=1 runs sparse on all of them.
cp -a "$src/." "$out/"
find "$out" \( -name '*.o' -o -name '*.ko' -o -name '.*.cmd' \) -delete

what="$check (make ${flags[*]}) on $krel, sources ${rev:+kmod/ at }${rev:-$src}"
status=0
LANG=C LC_ALL=C make -C "$headers" M="$out" "${flags[@]}" modules >"$out/.check.log" 2>&1 || status=$?
# Compiler and sparse diagnostics (file:line:col: warning|error: ...), modpost's
# WARNING:/ERROR: lines; BTF being skipped (no vmlinux in headers) is not ours.
warnings=$(grep -E '(^|: )(warning|error|WARNING|ERROR)(:| )' "$out/.check.log" |
  grep -v 'Skipping BTF generation' | sed "s|$out/||g" | awk '!seen[$0]++' || true)
if [ "$check" = sparse ] && [ "$status" = 0 ]; then
  nc=$(find "$out" -maxdepth 1 -name '*.c' ! -name '*.mod.c' | wc -l)
  ran=$(grep -c '^  CHECK ' "$out/.check.log" || true)
  if [ "$ran" -lt "$nc" ]; then
    warnings+=$'\n'"sparse checked $ran of $nc .c files"
  fi
fi
if [ "$status" != 0 ] || [ -n "$warnings" ]; then
  log "FAILED: $what"
  if [ -n "$warnings" ]; then
    log "warnings and errors:"
    sed 's/^/  /' <<<"$warnings" >&2
  fi
  n=$(wc -l <"$out/.check.log")
  if [ "$n" -le 200 ]; then
    log "whole log:"
    sed 's/^/  | /' "$out/.check.log" >&2
  else
    log "last 100 of $n log lines${build:+ (all in $out/.check.log)}:"
    tail -n 100 "$out/.check.log" | sed 's/^/  | /' >&2
  fi
  if [ "$status" = 0 ]; then
    log "the build succeeded but printed the warnings above"
  else
    log "the build failed (status $status)"
  fi
  exit 1
fi
log "clean: $what ($(grep -cE '^  (CC|CHECK) ' "$out/.check.log") compile/check steps, no warnings)"
