#!/usr/bin/env bash
# Usage: fetch-xen.sh
# Downloads Xen 4.17 (hypervisor, tools, xenstore tools and the libraries xl
# needs) with `apt-get download`, unpacks them with dpkg -x (nothing is
# installed on the host) and turns the gzipped hypervisor into an ELF that
# QEMU's -kernel accepts. Prints the cache directory:
# ${DMU_CACHE_DIR:-/var/cache/dmu}/xen/<version>/ with root/ and xen.elf.
# A complete entry is reused without downloading.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../../vm/lib/common.sh"
log_prefix=fetch-xen
pkgs=(xen-hypervisor-4.17-amd64 xen-utils-4.17 xen-utils-common xenstore-utils
  libxenmisc4.17 libxenstore4 libxencall1 libxenevtchn1 libxenforeignmemory1 libxengnttab1
  libxentoollog1 libxendevicemodel1 libxentoolcore1 libxenhypfs1 libyajl2)

candidate() { apt-cache policy "$1" | awk '/Candidate:/{print $2}'; }
version=$(candidate xen-hypervisor-4.17-amd64)
if [ -z "$version" ] || [ "$version" = "(none)" ]; then
  log "xen-hypervisor-4.17-amd64 unknown; running apt-get update"
  apt-get update -qq >&2
  version=$(candidate xen-hypervisor-4.17-amd64)
fi
[ -n "$version" ] && [ "$version" != "(none)" ] || die "no xen-hypervisor-4.17-amd64 package"
dir=$cache_root/xen/$version

fetch() {
  [ -f "$dir/complete" ] && return 0
  log "downloading Xen $version: ${pkgs[*]}"
  rm -rf "$dir"
  mkdir -p "$dir/debs" "$dir/root"
  (cd "$dir/debs" && apt-get download -qq -o APT::Sandbox::User=root "${pkgs[@]}" >&2)
  for d in "$dir"/debs/*.deb; do dpkg -x "$d" "$dir/root"; done
  rm -rf "$dir/debs"
  local gz
  gz=$(find "$dir/root/boot" -name 'xen-4.17*-amd64.gz' | head -1)
  [ -n "$gz" ] || die "no hypervisor image in the xen-hypervisor package"
  gunzip -c "$gz" >"$dir/xen.elf"
  touch "$dir/complete"
  log "cached in $dir"
}
mkdir -p "$cache_root/xen"
with_lock "$cache_root/xen/$version.lock" fetch
echo "$dir"
