#!/usr/bin/env bash
# Usage: copy-with-libs.sh ROOT FILE...
# Copies each program (and every shared library `ldd` reports for it, with the
# ELF interpreter) into the staging root ROOT at the same path it has on the
# host, with /bin, /sbin, /lib, /lib64 folded into /usr as on Debian 12, so the
# guest's dynamic loader finds everything at its default paths.
# Extra libraries that are loaded with dlopen (ldd cannot see them) can be
# passed as FILEs too. With PROGRAM_DIR set (e.g. /usr/local/bin), the FILEs
# themselves go there instead, under their own names; libraries stay put.
# With STRIP_PREFIX set (an unpacked package tree, found through
# LD_LIBRARY_PATH), files below it are placed as if it were the root.
set -euo pipefail
root=${1:?usage: copy-with-libs.sh ROOT FILE...}
shift

# usr_path PATH: PATH with its directory resolved (merged /usr), name kept.
usr_path() {
  local dir
  dir=$(readlink -f "$(dirname "$1")")
  [ -z "${STRIP_PREFIX:-}" ] || dir=${dir#"$(readlink -f "$STRIP_PREFIX")"}
  echo "$dir/$(basename "$1")"
}

copy_one() {
  local dest
  dest=$root${2:-$(usr_path "$1")}
  [ -e "$dest" ] && return 0
  mkdir -p "$(dirname "$dest")"
  cp -L "$1" "$dest"
}

mkdir -p "$root/usr/bin" "$root/usr/sbin" "$root/usr/lib" "$root/usr/lib64"
for link in bin sbin lib lib64; do
  [ -e "$root/$link" ] || ln -s "usr/$link" "$root/$link"
done

for f in "$@"; do
  [ -e "$f" ] || { echo "copy-with-libs: $f: no such file" >&2; exit 1; }
  if [ -n "${PROGRAM_DIR:-}" ]; then copy_one "$f" "$PROGRAM_DIR/$(basename "$f")"; else copy_one "$f"; fi
  # Statically linked programs and scripts have no libraries to copy.
  if libs=$(ldd "$f" 2>/dev/null); then
    while read -r lib; do
      copy_one "$lib"
    done < <(awk '/=> \//{print $3} /^\t\/[^ ]+ \(/{print $1}' <<<"$libs")
  fi
done
