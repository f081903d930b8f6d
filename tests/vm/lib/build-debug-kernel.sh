#!/usr/bin/env bash
# Usage: build-debug-kernel.sh [6.1]
# Builds, once, the debug kernel of the `6.1-debug` lane from Debian 12's
# linux-source-6.1 package (apt-get download, unpacked with dpkg-deb/tar, never
# installed) with `make defconfig` + debug-kernel.config (lockdep, KASAN,
# kmemleak, DEBUG_LIST, DEBUG_OBJECTS; the harness's drivers built in), and
# prints its release (e.g. 6.1.192-dmu-debug) on stdout.
# Cache: ${DMU_CACHE_DIR:-/var/cache/dmu}/debug-kernels/<release>/
#   src/    the configured and built tree; also the tree out-of-tree modules
#           build against (make -C src M=DIR modules; Module.symvers is there)
#   root/   the layout fetch-kernel.sh gives a Debian kernel: boot/vmlinuz-R,
#           lib/modules/R (modules, modules.builtin, depmod'ed) and
#           usr/src/linux-headers-R -> ../../../src
#   complete  stamp of the inputs (package version, config fragment, this
#           script); a matching stamp is reused without network or make.
# A changed fragment or script rebuilds in the same tree (incremental); a new
# package version starts from a fresh tree. Log: <release>/build.log.
# Environment: DMU_KERNEL_JOBS (default 2), builds run under nice -n 10.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
log_prefix=debug-kernel
line=${1:-6.1}
[ "$line" = 6.1 ] || die "only the 6.1 line has a debug kernel (linux-source-6.1), not '$line'"
pkg=linux-source-$line
fragment=$vm_lib/debug-kernel.config
cache=$cache_root/debug-kernels
jobs=${DMU_KERNEL_JOBS:-2}

candidate() { apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ && $2 != "(none)" {print $2}'; }
version=$(candidate)
if [ -z "$version" ]; then
  log "no candidate for $pkg; running apt-get update"
  apt-get update -qq >&2
  version=$(candidate)
fi
[ -n "$version" ] || die "apt knows no $pkg"
upstream=${version%%-*}                            # 6.1.192-3 -> 6.1.192
localversion=$(sed -n 's/^CONFIG_LOCALVERSION="\(.*\)"$/\1/p' "$fragment")
krel=$upstream$localversion
dir=$cache/$krel
stamp=$( (echo "$pkg=$version"; cat "$fragment" "${BASH_SOURCE[0]}") | sha256sum | cut -d' ' -f1)

if [ "$(cat "$dir/complete" 2>/dev/null)" = "$stamp" ]; then echo "$krel"; exit 0; fi
mkdir -p "$dir"
exec 9>"$dir.lock"
flock 9
if [ "$(cat "$dir/complete" 2>/dev/null)" = "$stamp" ]; then echo "$krel"; exit 0; fi
rm -f "$dir/complete"
start=$SECONDS

# 1. sources: a fresh tree for a new package version.
if [ "$(cat "$dir/src.version" 2>/dev/null)" != "$version" ]; then
  debs=$cache/debs
  deb=$debs/${pkg}_${version}_all.deb
  if [ ! -f "$deb" ]; then
    log "downloading $pkg $version"
    mkdir -p "$debs"
    (cd "$debs" && apt-get download -qq -o APT::Sandbox::User=root "$pkg=$version" >&2)
    [ -f "$deb" ] || die "apt-get download gave no $deb"
  fi
  log "unpacking $deb"
  rm -rf "$dir/src" "$dir/src.version" "$dir/unpack"
  mkdir -p "$dir/unpack"
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$dir/unpack" "./usr/src/$pkg.tar.xz"
  tar -xJf "$dir/unpack/usr/src/$pkg.tar.xz" -C "$dir/unpack"
  mv "$dir/unpack/$pkg" "$dir/src"
  rm -rf "$dir/unpack"
  echo "$version" >"$dir/src.version"
fi
src=$dir/src

# 2. configuration: defconfig + the fragment, then every fragment line checked.
kmake() { nice -n 10 make -C "$src" -j"$jobs" "$@"; }
log "configuring (defconfig + $(basename "$fragment"))"
{
  kmake defconfig
  (cd "$src" && scripts/kconfig/merge_config.sh -m .config "$fragment")
  kmake olddefconfig
} >"$dir/config.log" 2>&1 || { cat "$dir/config.log" >&2; die "configuration failed"; }
bad=0
while read -r want; do
  case $want in
    CONFIG_*=*) opt=${want%%=*} ;;
    "# CONFIG_"*" is not set") opt=${want#\# }; opt=${opt%% *} ;;
    *) continue ;;
  esac
  have=$(grep -E "^($opt=|# $opt is not set)" "$src/.config" || true)
  # An option that is off may also be absent (its menu is off).
  if [ "$have" != "$want" ] && ! { [ -z "$have" ] && [[ $want == "# "* ]]; }; then
    log "config: wanted '$want', got '${have:-nothing (dependency missing?)}'"
    bad=1
  fi
done <"$fragment"
((bad == 0)) || die "the kernel configuration lacks options of $(basename "$fragment") (above)"

# 3. build: the image, the few modules, and what M= builds need.
log "building $krel with -j$jobs (log: $dir/build.log)"
if ! kmake bzImage modules >"$dir/build.log" 2>&1; then
  tail -n 60 "$dir/build.log" >&2
  die "kernel build failed (last lines above, all in $dir/build.log)"
fi
got=$(make -s -C "$src" kernelrelease)
[ "$got" = "$krel" ] || die "built release $got, expected $krel"

# 4. install into root/ the way fetch-kernel.sh lays out a Debian kernel.
rm -rf "$dir/root"
mkdir -p "$dir/root/boot" "$dir/root/usr/src"
make -s -C "$src" modules_install INSTALL_MOD_PATH="$dir/root" >>"$dir/build.log" 2>&1 ||
  { tail -n 20 "$dir/build.log" >&2; die "modules_install failed"; }
cp "$src/arch/x86/boot/bzImage" "$dir/root/boot/vmlinuz-$krel"
cp "$src/System.map" "$dir/root/boot/System.map-$krel"
cp "$src/.config" "$dir/root/boot/config-$krel"
ln -sfn ../../../src "$dir/root/usr/src/linux-headers-$krel"
rm -f "$dir/root/lib/modules/$krel/build" "$dir/root/lib/modules/$krel/source"
ln -s "../../../usr/src/linux-headers-$krel" "$dir/root/lib/modules/$krel/build"
depmod -b "$dir/root" "$krel"
echo "$stamp" >"$dir/complete"
log "$krel built in $(((SECONDS - start) / 60))m$(((SECONDS - start) % 60))s: $(du -sh "$dir/root/boot/vmlinuz-$krel" | cut -f1) image, $(grep -c . "$dir/root/lib/modules/$krel/modules.builtin") built-in and $(find "$dir/root/lib/modules/$krel" -name '*.ko' | wc -l) loadable modules"
echo "$krel"
