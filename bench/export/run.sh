#!/bin/bash
# Export benchmark: `dmu export` of a 2 GiB qcow2 image, half of it allocated
# (random data in every other MiB), against `qemu-img convert -O raw` of the
# same image, interleaved in the same run (alternating which goes first) so
# both see the same machine and page cache.  Prints each time and the medians,
# then exports once more with each tool, untimed, and compares the outputs.
#
# Every timed run writes the same output path, deleted (and the deletion
# written back) just before: the new file's page cache then reuses the pages
# the last output freed.  Without that, whichever run came second in a pair
# wrote into memory never touched before, which in a virtual machine costs
# the host a fault per page (measured here: 1.2-2 s instead of 0.4 s, the
# kernel's copy into new page-cache folios being 78% of the profile), and
# the position in the pair decided the result.
#
# usage: bench/export/run.sh [DMU_BINARY]
#   DMU_BINARY      default: build/cli/dmu under the source tree
#   BENCH_DIR       scratch directory (default /tmp/dmu-bench-export); needs
#                   about 4 GiB free; removed at the end
#   REPS=N          repetitions (default 3)
#   DROP_CACHES=1   drop the page cache before every run (root only), to time
#                   cold reads instead of warm ones
set -euo pipefail

here=$(cd "$(dirname "$0")/../.." && pwd)
dmu=${1:-$here/build/cli/dmu}
dir=${BENCH_DIR:-/tmp/dmu-bench-export}
reps=${REPS:-3}

[ -x "$dmu" ] || { echo "run.sh: $dmu: no dmu binary (build it or pass its path)" >&2; exit 1; }
dmu=$(realpath "$dmu")
command -v qemu-img >/dev/null || { echo "run.sh: qemu-img is needed" >&2; exit 1; }

rm -rf "$dir"
mkdir -p "$dir"
trap 'rm -rf "$dir"' EXIT
cd "$dir"

echo "making a 2 GiB qcow2 with 1 GiB of random data in every other MiB..." >&2
truncate -s 2G src.raw
for ((mib = 0; mib < 2048; mib += 2)); do
  head -c 1M /dev/urandom | dd of=src.raw bs=1M seek=$mib conv=notrunc status=none
done
qemu-img convert -O qcow2 src.raw image.qcow2
rm -f src.raw
qemu-img info image.qcow2 | sed -n 's/^\(virtual size\|disk size\): /  \1: /p' >&2

# Outside the timed region: delete the last output and write back what the
# previous run left dirty (so no run pays for another's writeback), and
# optionally drop the page cache.
settle() {
  rm -f out.raw
  sync
  if [ "${DROP_CACHES:-0}" = 1 ]; then
    echo 3 >/proc/sys/vm/drop_caches
  fi
}

# Seconds taken by a command, to the millisecond.
timed() {
  local start end
  start=$(date +%s%N)
  "$@" || { echo "run.sh: $* failed" >&2; return 1; }
  end=$(date +%s%N)
  echo "scale=3; ($end - $start) / 1000000000" | bc
}

run_dmu() { settle && timed "$dmu" export image.qcow2 out.raw; }
run_qemu() { settle && timed qemu-img convert -O raw image.qcow2 out.raw; }

dmu_times=()
qemu_times=()
for ((i = 1; i <= reps; i++)); do
  # Alternate which tool goes first.
  if ((i % 2)); then
    d=$(run_dmu) || exit 1
    q=$(run_qemu) || exit 1
  else
    q=$(run_qemu) || exit 1
    d=$(run_dmu) || exit 1
  fi
  dmu_times+=("$d")
  qemu_times+=("$q")
  printf 'run %d: dmu export %6.3f s   qemu-img convert %6.3f s\n' "$i" "$d" "$q"
done
rm -f out.raw

"$dmu" export image.qcow2 dmu.raw
qemu-img convert -O raw image.qcow2 qemu.raw
qemu-img compare -q -f raw -F raw dmu.raw qemu.raw ||
  { echo "run.sh: the two exports differ" >&2; exit 1; }

median() { printf '%s\n' "$@" | sort -n | sed -n "$(((${#@} + 1) / 2))p"; }
dm=$(median "${dmu_times[@]}")
qm=$(median "${qemu_times[@]}")
printf 'median:  dmu export %6.3f s   qemu-img convert %6.3f s   (dmu/qemu-img = %.2f)\n' \
  "$dm" "$qm" "$(echo "scale=4; $dm / $qm" | bc)"
printf 'outputs identical; allocated blocks: dmu %s, qemu-img %s\n' \
  "$(stat -c %b dmu.raw)" "$(stat -c %b qemu.raw)"
