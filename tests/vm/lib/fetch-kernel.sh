#!/usr/bin/env bash
# Usage: fetch-kernel.sh 6.1|6.12
# Resolves the newest Debian 12 kernel of that line, downloads the unsigned
# image, its headers and matching kbuild with `apt-get download` (pinned to the
# image's version so kbuild matches), unpacks them into the cache and runs
# depmod.  Prints the kernel release (e.g. 6.1.0-56-amd64) on stdout.
# Cache: ${DMU_CACHE_DIR:-/var/cache/dmu}/kernels/<release>/root; a complete
# entry is reused without touching the network.
set -euo pipefail
line=${1:?usage: fetch-kernel.sh 6.1|6.12}
cache=${DMU_CACHE_DIR:-/var/cache/dmu}/kernels
log() { echo "fetch-kernel: $*" >&2; }

case $line in
  6.1) pattern='^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$' ;;
  6.12) pattern='^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$' ;;
  *) log "unknown kernel line '$line' (want 6.1 or 6.12)"; exit 2 ;;
esac
newest() { apt-cache search --names-only "$pattern" | awk '{print $1}' | sort -V | tail -1; }
image=$(newest)
if [ -z "$image" ]; then   # fresh machine: package lists not downloaded yet
  log "no package matches $pattern; running apt-get update"
  apt-get update -qq >&2
  image=$(newest)
fi
[ -n "$image" ] || { log "no package matches $pattern, even after apt-get update"; exit 1; }
krel=${image#linux-image-}
krel=${krel%-unsigned}
dir=$cache/$krel
if [ -f "$dir/complete" ]; then
  echo "$krel"
  exit 0
fi
# Two builds may want the same kernel at once: one downloads, the other waits.
mkdir -p "$cache"
exec 9>"$cache/$krel.lock"
flock 9
if [ -f "$dir/complete" ]; then
  echo "$krel"
  exit 0
fi

version=$(apt-cache policy "$image" | awk '/Candidate:/{print $2}')
extra=$(apt-cache depends "linux-headers-$krel" | awk '/Depends: linux-(headers-.*-common|kbuild-)/{print $2}')
log "downloading $krel ($version): $image linux-headers-$krel $extra"
rm -rf "$dir"
mkdir -p "$dir/debs" "$dir/root"
pkgs=("$image=$version" "linux-headers-$krel=$version")
for p in $extra; do pkgs+=("$p=$version"); done
(cd "$dir/debs" && apt-get download -qq -o APT::Sandbox::User=root "${pkgs[@]}" >&2)
for d in "$dir"/debs/*.deb; do dpkg -x "$d" "$dir/root"; done
rm -rf "$dir/debs"
# The headers Makefile includes the -common tree by absolute path.
sed -i "s|include /usr/src/|include $dir/root/usr/src/|" "$dir/root/usr/src/linux-headers-$krel/Makefile"
depmod -b "$dir/root" "$krel"
touch "$dir/complete"
log "cached in $dir"
echo "$krel"
