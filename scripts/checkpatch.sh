#!/usr/bin/env bash
# Runs the kernel's checkpatch.pl over the dm-userspace module sources and
# the protocol header; exits non-zero on any error or warning.
#
# checkpatch.pl is not in the kernel headers packages, so the first run
# downloads Debian's linux-source-6.1 package (apt-get download, no root
# install) and keeps only scripts/checkpatch.pl and the two data files it
# reads, in $DMU_CACHE_DIR/checkpatch (default /var/cache/dmu/checkpatch).
#
# Usage: scripts/checkpatch.sh [FILE...]   (default: kmod/*.c kmod/*.h and
#                                           the uapi header)
set -euo pipefail

src_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${DMU_CACHE_DIR:-/var/cache/dmu}/checkpatch
tool=$cache/scripts/checkpatch.pl

fetch_checkpatch() {
  local tmp pkg
  command -v apt-get >/dev/null || { echo "checkpatch: apt-get is needed to fetch checkpatch.pl" >&2; exit 2; }
  mkdir -p "$cache"
  tmp=$(mktemp -d "$cache/fetch.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  echo "checkpatch: fetching linux-source-6.1 for checkpatch.pl into $cache" >&2
  (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root linux-source-6.1 >/dev/null) ||
    { echo "checkpatch: apt-get download linux-source-6.1 failed" >&2; exit 2; }
  pkg=$(ls "$tmp"/linux-source-6.1_*.deb)
  dpkg-deb --fsys-tarfile "$pkg" | tar -x -C "$tmp" --wildcards './usr/src/linux-source-6.1.tar.xz'
  tar -xJf "$tmp/usr/src/linux-source-6.1.tar.xz" -C "$tmp" \
    linux-source-6.1/scripts/checkpatch.pl \
    linux-source-6.1/scripts/spelling.txt \
    linux-source-6.1/scripts/const_structs.checkpatch
  mkdir -p "$cache/scripts"
  cp "$tmp"/linux-source-6.1/scripts/{checkpatch.pl,spelling.txt,const_structs.checkpatch} "$cache/scripts/"
  rm -rf "$tmp"
  trap - EXIT
}

[ -x "$tool" ] || [ -f "$tool" ] || fetch_checkpatch

if [ $# -eq 0 ]; then
  set -- "$src_root"/kmod/*.c "$src_root"/kmod/*.h \
    "$src_root"/kmod/include/uapi/linux/dm-userspace.h
fi

status=0
for f in "$@"; do
  # --no-tree: out-of-tree module; SPDX and file-path checks still apply.
  out=$(perl "$tool" --no-tree --no-summary --terse --show-types \
    --ignore FILE_PATH_CHANGES -f "$f" 2>&1) || true
  if [ -n "$out" ]; then
    echo "$out"
    status=1
  fi
done
if [ $status -eq 0 ]; then
  echo "checkpatch: $# files clean"
fi
exit $status
