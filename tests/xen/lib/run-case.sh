#!/usr/bin/env bash
# Usage: run-case.sh [--build DIR] [--kernel LINE] [--verbose] CASE.sh
# Runs one Xen test case: boots Xen 4.17 under QEMU with the Debian 6.12
# kernel (or LINE, e.g. 6.1, by hand) as dom0 and domU kernel, whose initramfs is the VM harness's pieces + the Xen piece +
# the case; the case runs in dom0 once xenstored and xenconsoled are up.
# Exits with the case's status (124 timeout, 125 no result).
# Results: BUILD/tests/xen/results/<case>/ (console.log + dom0's /results).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/../../vm/lib/common.sh"
build=$src_root/build verbose=${DMU_VM_VERBOSE:-0} line=6.12
while [ $# -gt 1 ]; do
  case $1 in
    --build) build=$2; shift 2 ;;
    --kernel) line=$2; shift 2 ;;
    --verbose) verbose=1; shift ;;
    *) die "unknown option $1" ;;
  esac
done
case_file=$(realpath "${1:?usage: run-case.sh [--build DIR] [--kernel LINE] [--verbose] CASE.sh}")
build=$(realpath -m "$build")
name=$(basename "$case_file" .sh)
# The suite's dom0 is 6.12; a run on another line keeps its own results.
[ "$line" = 6.12 ] || name=$name.$line
h_timeout=600 h_mem=1024 h_kmod=load
read_header "$case_file" xen
log_prefix="xen.$name"

"$vm_lib/prepare-kernel.sh" "$line" "$build"
kernel_env "$build" "$line" || die "kernel $line was not prepared"
xen_dir=$("$here/fetch-xen.sh")
pieces=$build/tests/vm/pieces
# dom0 gets the VM tools without fio: its libraries (ceph, icu) would triple
# the initramfs, and unpacking it dominates dom0's boot under Xen PV on TCG.
mkdir -p "$pieces"
grep -v '/fio$' "$vm_lib/tools.list" >"$pieces/tools-dom0.list.new"
if cmp -s "$pieces/tools-dom0.list.new" "$pieces/tools-dom0.list"; then
  rm "$pieces/tools-dom0.list.new"
else
  mv "$pieces/tools-dom0.list.new" "$pieces/tools-dom0.list"
fi
with_lock "$pieces/tools-dom0.lock" "$vm_lib/make-tools-piece.sh" "$pieces/tools-dom0.list" "$pieces/tools-dom0.cpio.zst"
with_lock "$pieces/progs.lock" "$vm_lib/make-progs-piece.sh" "$build/tests/guest-programs.txt" "$pieces/progs.cpio.zst"
with_lock "$pieces/xen.lock" "$here/make-xen-piece.sh" "$xen_dir" "$build/tests/vm/kernels/$line.env" "$pieces/xen-$line.cpio.zst"

run=$build/tests/xen/runs/$name
results=$build/tests/xen/results/$name
rm -rf "$run" "$results"
mkdir -p "$run/case/etc/dmu" "$results"
cp "$case_file" "$run/case/test.sh"
cat >"$run/case/etc/dmu/run.conf" <<EOT
DMU_ROLE=dom0
DMU_CASE=$name
DMU_KERNEL_LINE=$line
DMU_MODULES="virtio_pci 9pnet_virtio 9p xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xenfs xen-blkback dm-mod dm-log-writes dm-flakey loop crc32c_generic ext4"
DMU_KMOD=$h_kmod
DMU_SHARES="results src"
DMU_INIT_DEBUG=${DMU_VM_DEBUG:-}
DMU_CASE_TIMEOUT=$h_timeout
EOT
pack_cpio "$run/case" "$run/case.cpio.zst"
cat "$pieces/tools-dom0.cpio.zst" "$MODULES_PIECE" "$pieces/progs.cpio.zst" "$pieces/xen-$line.cpio.zst" \
  "$run/case.cpio.zst" >"$run/initrd"

# QEMU splits -initrd at commas (module list) and the first space (cmdline).
dom0_cmdline="console=hvc0 earlyprintk=xen quiet panic=-1 oops=panic mitigations=off"
args=(-accel "$("$vm_lib/kvm-probe.sh" "$KERNEL_IMAGE")" -m $((h_mem + 1024)) -smp 2
  -kernel "$xen_dir/xen.elf"
  -append "dom0_mem=${h_mem}M,max:${h_mem}M console=com1 com1=115200,8n1 loglvl=warning guest_loglvl=warning"
  -initrd "$KERNEL_IMAGE $dom0_cmdline,$run/initrd"
  -virtfs "local,path=$results,mount_tag=results,security_model=none,id=results"
  -virtfs "local,path=$src_root,mount_tag=src,security_model=none,readonly=on,id=src")

log "booting Xen $(basename "$xen_dir") with dom0 $KREL (timeout ${h_timeout}s, dom0 ${h_mem} MiB)"
start=$SECONDS
qemu_rc=0
opt=()
[ "$verbose" = 1 ] && opt=(--verbose)
boot_case "${opt[@]}" "$h_timeout" "$run/console.log" "${args[@]}" || qemu_rc=$?
cp "$run/console.log"* "$results/"
[ "${DMU_VM_KEEP:-0}" = 1 ] || rm -rf "$run"
report "xen.$name" "$results/console.log" "$qemu_rc" $((SECONDS - start))
