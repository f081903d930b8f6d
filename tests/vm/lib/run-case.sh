#!/usr/bin/env bash
# Usage: run-case.sh [--build DIR] [--kernel 6.1|6.12|6.1-debug] [--verbose]
#                    [--boot NAME] CASE.sh [CASE.sh ...]
# Runs VM test cases on one kernel line: prepares what is missing (kernel,
# kmod build, initramfs pieces), assembles the initrd and the case's disks,
# boots QEMU, and exits with the guest's status (124 timeout, 125 no result).
# Several cases share one boot (--boot NAME names it): the guest runs them
# one after the other (guest/run-cases.sh), stops at the first that fails,
# and fails a case that leaves anything behind; their headers must agree on
# everything but the timeout, and their timeouts add up.
# On a debug kernel (line *-debug) the case gets more memory and time
# (debug-lane.env), and a passing guest still fails with status 123 when
# debug-checks.sh finds a lockdep/KASAN/kernel report or a kmemleak leak.
# Results: BUILD/tests/vm/results/<case or boot>.<line>/ (console.log +
# /results).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
build=$src_root/build line=6.12 verbose=${DMU_VM_VERBOSE:-0} boot=
usage="usage: run-case.sh [--build DIR] [--kernel LINE] [--verbose] [--boot NAME] CASE.sh [CASE.sh ...]"
while [ $# -gt 0 ]; do
  case $1 in
    --build) build=$2; shift 2 ;;
    --kernel) line=$2; shift 2 ;;
    --verbose) verbose=1; shift ;;
    --boot) boot=$2; shift 2 ;;
    --*) die "unknown option $1" ;;
    *) break ;;
  esac
done
[ $# -ge 1 ] || die "$usage"
case_files=()
for c in "$@"; do case_files+=("$(realpath "$c")"); done
build=$(realpath -m "$build")
if [ ${#case_files[@]} -gt 1 ]; then
  [ -n "$boot" ] || die "several cases share a boot: name it with --boot NAME"
  name=$boot
else
  name=$(basename "${case_files[0]}" .sh)
fi
log_prefix="vm.$name.$line"

# First: kernel_env says whether this is a debug kernel (DEBUG_KERNEL),
# which the headers' timeouts, memory and command line depend on.
"$vm_lib/prepare-kernel.sh" "$line" "$build"
kernel_env "$build" "$line" || die "kernel $line was not prepared"
# A -debug line booted without its checks would pass for the lane while
# checking nothing (it did, when the headers were read before kernel_env).
case $line in
  *-debug) [ "${DEBUG_KERNEL:-0}" = 1 ] || die "kernel line $line is not a debug kernel here" ;;
esac
debug_checks=0
if [ "${DEBUG_KERNEL:-0}" = 1 ]; then
  debug_checks=1
  # debug-lane.env, with the caller's environment taking precedence.
  eval "$(sed -n 's/^\(DMU_DEBUG_[A-Z_]*\)=\(.*\)$/\1=${\1:-\2}/p' "$vm_lib/debug-lane.env")"
fi
# Each case's header; the boot's shape (memory, vCPUs, disks, module,
# command line, exclusive) must be one, the timeouts add up (and each case
# keeps its own in a shared boot: case_timeouts).
shape= timeout=0 case_timeouts=()
for c in "${case_files[@]}"; do
  h_timeout=300 h_debug_timeout= h_mem=1024 h_smp=1 h_disks= h_kmod=load h_cmdline= h_exclusive=0
  read_header "$c" vm
  this="mem=$h_mem smp=$h_smp disks=$h_disks kmod=$h_kmod cmdline=$h_cmdline exclusive=$h_exclusive"
  [ -z "$shape" ] || [ "$this" = "$shape" ] ||
    die "$c: its header ($this) differs from the other cases' of boot $name ($shape)"
  shape=$this
  if [ "$debug_checks" = 1 ]; then
    # A case may name its own (debug_timeout=): one whose debug run is much
    # slower than the factor says keeps a short timeout on the normal lanes.
    h_timeout=${h_debug_timeout:-$((h_timeout * DMU_DEBUG_TIMEOUT_FACTOR + DMU_DEBUG_TIMEOUT_EXTRA))}
  fi
  # A soak run of a case with a duration (DMU_CASE_SECONDS) gets that much more time.
  [ -z "${DMU_CASE_SECONDS:-}" ] || h_timeout=$((h_timeout + DMU_CASE_SECONDS))
  case_timeouts+=("$h_timeout")
  timeout=$((timeout + h_timeout))
done
h_timeout=$timeout
if [ "$debug_checks" = 1 ]; then
  h_mem=$((h_mem * DMU_DEBUG_MEM_PERCENT / 100))
  h_cmdline="$h_cmdline+${DMU_DEBUG_CMDLINE// /+}"
fi
pieces=$build/tests/vm/pieces
tools_piece=${DMU_VM_PIECES:-$pieces}/tools.cpio.zst   # the self-test shares the main build's
with_lock "$tools_piece.lock" "$vm_lib/make-tools-piece.sh" "$vm_lib/tools.list" "$tools_piece"
with_lock "$pieces/progs.lock" "$vm_lib/make-progs-piece.sh" "$build/tests/guest-programs.txt" "$pieces/progs.cpio.zst"

run=$build/tests/vm/runs/$name.$line
results=$build/tests/vm/results/$name.$line
rm -rf "$run" "$results"
mkdir -p "$run/case/etc/dmu" "$results"
if [ ${#case_files[@]} = 1 ]; then
  cp "${case_files[0]}" "$run/case/test.sh"
else
  cp "$vm_lib/guest/run-cases.sh" "$run/case/test.sh"
  mkdir "$run/case/cases"
  for i in "${!case_files[@]}"; do
    base=$run/case/cases/$((i + 10))-$(basename "${case_files[$i]}" .sh)
    cp "${case_files[$i]}" "$base.sh"
    echo "${case_timeouts[$i]}" >"$base.timeout"
  done
fi
cat >"$run/case/etc/dmu/run.conf" <<EOT
DMU_ROLE=vm
DMU_CASE=$name
DMU_KERNEL_LINE=$line
DMU_MODULES="virtio_pci virtio_blk 9pnet_virtio 9p dm-mod dm-log-writes dm-flakey loop crc32c_generic ext4"
DMU_KMOD=$h_kmod
DMU_SHARES="results src"
DMU_INIT_DEBUG=${DMU_VM_DEBUG:-}
DMU_DEBUG_CHECKS=$debug_checks
DMU_CASE_SECONDS=${DMU_CASE_SECONDS:-}
DMU_CASE_TIMEOUT=$h_timeout
EOT
pack_cpio "$run/case" "$run/case.cpio.zst"
cat "$tools_piece" "$MODULES_PIECE" "$pieces/progs.cpio.zst" "$run/case.cpio.zst" >"$run/initrd"

args=(-accel "$("$vm_lib/kvm-probe.sh" "$KERNEL_IMAGE")" -m "$h_mem" -smp "$h_smp"
  -kernel "$KERNEL_IMAGE" -initrd "$run/initrd"
  -append "console=ttyS0 panic=-1 oops=panic quiet mitigations=off ${h_cmdline//+/ }"
  -virtfs "local,path=$results,mount_tag=results,security_model=none,id=results"
  -virtfs "local,path=$src_root,mount_tag=src,security_model=none,readonly=on,id=src")
# The disks run without virtio's event index.  With it, under TCG (QEMU 7.2,
# Debian's 6.12 guest, 1 vCPU) the disk under kmod-model-restart's loop
# devices stalled for good in 4 of 5 runs: QEMU had completed every request
# (inuse 0, used.idx past the guest's used_event) while the guest kept them
# in flight and never processed the used ring, so nothing interrupted again.
# Without ioeventfd it stalled too, and with INTx instead of MSI-X (ISR read,
# used_event still behind); without the event index it passed 4 of 4.  The
# cost is an interrupt per completion batch.  boot-qemu.sh records QEMU's view
# of the rings when a guest reports a hang, should this come back.
[ -z "$h_disks" ] || args+=(-global virtio-blk-pci.event_idx=off)
i=0
for size in ${h_disks//,/ }; do
  truncate -s "$size" "$run/disk$i.img"
  args+=(-drive "file=$run/disk$i.img,format=raw,if=virtio,cache=unsafe")
  i=$((i + 1))
done

log "booting $KREL (timeout ${h_timeout}s, ${h_mem} MiB, $h_smp vCPU, disks: ${h_disks:-none})"
start=$SECONDS
qemu_rc=0
opt=()
[ "$verbose" = 1 ] && opt=(--verbose)
boot_case "${opt[@]}" "$h_timeout" "$run/console.log" "${args[@]}" || qemu_rc=$?
cp "$run/console.log"* "$results/"
[ "${DMU_VM_KEEP:-0}" = 1 ] || rm -rf "$run"
rc=0
report "vm.$name.$line" "$results/console.log" "$qemu_rc" $((SECONDS - start)) || rc=$?
if [ "$debug_checks" = 1 ] && ! log_prefix=$log_prefix "$vm_lib/debug-checks.sh" "$results/console.log"; then
  [ "$rc" != 0 ] || { log "FAILED: the debug kernel reported problems (above)"; rc=123; }
fi
exit "$rc"
