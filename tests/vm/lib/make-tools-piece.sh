#!/usr/bin/env bash
# Usage: make-tools-piece.sh LIST OUT
# Builds the kernel-independent initramfs piece OUT (zstd cpio): the host
# programs named in LIST with their libraries, dash as /bin/sh, kmod's
# modprobe & co., the guest /init and /usr/lib/dmu-test/ (lib.sh, debug-checks.sh,
# init-lib.sh, ksymbolize).
# Skipped when neither the programs nor these scripts changed.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
list=${1:?usage: make-tools-piece.sh LIST OUT}
out=${2:?usage: make-tools-piece.sh LIST OUT}

mapfile -t progs < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$list")
stamp=$(files_stamp "${progs[@]}" "$list" "$vm_lib"/guest/* "$vm_lib/make-tools-piece.sh" \
  "$vm_lib/copy-with-libs.sh" /etc/mke2fs.conf)
up_to_date "$out" "$stamp" && exit 0

log "building $(basename "$out") from $(basename "$list")"
stage=$out.d
rm -rf "$stage"
"$vm_lib/copy-with-libs.sh" "$stage" "${progs[@]}"
ln -sf dash "$stage/usr/bin/sh"
if [ -e "$stage/usr/bin/kmod" ]; then
  for t in modprobe insmod rmmod lsmod modinfo depmod; do ln -sf ../bin/kmod "$stage/usr/sbin/$t"; done
fi
install -D -m 755 "$vm_lib/guest/init" "$stage/init"
install -D -m 644 "$vm_lib/guest/lib.sh" "$stage/usr/lib/dmu-test/lib.sh"
install -D -m 644 "$vm_lib/guest/debug-checks.sh" "$stage/usr/lib/dmu-test/debug-checks.sh"
install -D -m 644 "$vm_lib/guest/init-lib.sh" "$stage/usr/lib/dmu-test/init-lib.sh"
install -D -m 755 "$vm_lib/guest/ksymbolize" "$stage/usr/lib/dmu-test/ksymbolize"
install -D -m 644 /etc/mke2fs.conf "$stage/etc/mke2fs.conf"
mkdir -p "$stage/etc/dmu/init.d" "$stage/usr/local/bin" "$stage/var/log" "$stage/var/tmp"
ln -s ../run "$stage/var/run"
ln -s ../run/lock "$stage/var/lock"
echo 'root:x:0:0:root:/root:/bin/sh' >"$stage/etc/passwd"
echo 'root:x:0:' >"$stage/etc/group"
pack_cpio "$stage" "$out"
rm -rf "$stage"
echo "$stamp" >"$out.stamp"
log "$(basename "$out"): $(du -h "$out" | cut -f1)"
