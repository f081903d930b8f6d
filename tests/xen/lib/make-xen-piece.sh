#!/usr/bin/env bash
# Usage: make-xen-piece.sh XEN_DIR KERNEL_ENV OUT
# Builds dom0's Xen initramfs piece OUT: xl, xenstored, xenconsoled,
# xen-init-dom0 and the xenstore tools from the unpacked packages in XEN_DIR
# (with their libraries and libgcc_s, which xl dlopens), Debian's and our
# hotplug scripts in /etc/xen/scripts, the dom0 start-up hook and helpers, and
# the domU kernel + base ramdisk (lean tools + the few modules in
# modules-domu.list) in /vm.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/../../vm/lib/common.sh"
log_prefix=xen
xen_dir=${1:?usage: make-xen-piece.sh XEN_DIR KERNEL_ENV OUT}
kernel_env_file=${2:?} out=${3:?}
# shellcheck disable=SC1090
. "$kernel_env_file"
xroot=$xen_dir/root
lean=$(dirname "$out")/tools-lean.cpio.zst
with_lock "$lean.lock" "$vm_lib/make-tools-piece.sh" "$vm_lib/tools-lean.list" "$lean"
domu_modules=$(dirname "$out")/modules-domu-$KREL.cpio.zst
mkdir -p "$(dirname "$out")/no-ko"
with_lock "$domu_modules.lock" "$vm_lib/make-modules-piece.sh" "$KROOT" "$KREL" \
  "$(dirname "$out")/no-ko" "$domu_modules" "$here/modules-domu.list"

stamp=$(files_stamp "$xen_dir/complete" "$here"/make-xen-piece.sh "$here"/guest/* \
  "$src_root"/hotplug/* "$KERNEL_IMAGE" "$domu_modules" "$lean")
up_to_date "$out" "$stamp" && exit 0
log "building $(basename "$out")"
stage=$out.d
rm -rf "$stage"
bins=(xl xenstored xenconsoled xen-init-dom0 xenconsole libxl-save-helper)
progs=("${bins[@]/#/$xroot/usr/lib/xen-4.17/bin/}")
for f in "$xroot"/usr/bin/xenstore*; do   # xenstore-read & co.: one binary, argv[0]
  [ -L "$f" ] || progs+=("$f")
done
LD_LIBRARY_PATH=$xroot/usr/lib/x86_64-linux-gnu STRIP_PREFIX=$xroot \
  "$vm_lib/copy-with-libs.sh" "$stage" "${progs[@]}" /usr/lib/x86_64-linux-gnu/libgcc_s.so.1
for b in "${bins[@]}"; do ln -sf "../lib/xen-4.17/bin/$b" "$stage/usr/sbin/$b"; done
mkdir -p "$stage/etc/xen/scripts" "$stage/etc/dmu/init.d" "$stage/vm" "$stage/var/lib/xen"
cp -a "$xroot/etc/xen/scripts/." "$stage/etc/xen/scripts/"
install -m 755 "$src_root"/hotplug/* "$stage/etc/xen/scripts/"
echo 'autoballoon="off"' >"$stage/etc/xen/xl.conf"
install -m 644 "$here/guest/50-xen.sh" "$stage/etc/dmu/init.d/50-xen.sh"
install -D -m 644 "$here/guest/xen.sh" "$stage/usr/lib/dmu-test/xen.sh"
cp "$KERNEL_IMAGE" "$stage/vm/vmlinuz"
cat "$lean" "$domu_modules" >"$stage/vm/domu-base.cpio.zst"
pack_cpio "$stage" "$out"
rm -rf "$stage"
echo "$stamp" >"$out.stamp"
log "$(basename "$out"): $(du -h "$out" | cut -f1)"
