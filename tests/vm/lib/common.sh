# Sourced by the VM and Xen harness scripts: paths, logging, locking and the
# content stamps that let every preparation step be skipped when nothing changed.
# Not executable on its own.

vm_lib=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src_root=$(cd "$vm_lib/../../.." && pwd)
cache_root=${DMU_CACHE_DIR:-/var/cache/dmu}

log() { echo "${log_prefix:-vm}: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# with_lock FILE CMD...: runs CMD while holding an exclusive flock on FILE, so
# parallel CTest runs build each shared piece once.
with_lock() {
  local lock=$1
  shift
  mkdir -p "$(dirname "$lock")"
  (
    flock 9
    "$@"
  ) 9>"$lock"
}

# files_stamp FILE...: one line per file (name, size, mtime) hashed; changes
# whenever any input file changes.
files_stamp() {
  stat -L -c '%n %s %Y' "$@" | sha256sum | cut -d' ' -f1
}

# tree_stamp DIR: hash over the contents of every file below DIR.
tree_stamp() {
  (cd "$1" && find . -type f ! -name '*.o' ! -name '*.ko' -print0 | sort -z |
    xargs -0 -r sha256sum) | sha256sum | cut -d' ' -f1
}

# up_to_date OUT STAMP: true if OUT exists and was made from inputs with STAMP.
up_to_date() {
  [ -f "$1" ] && [ -f "$1.stamp" ] && [ "$(cat "$1.stamp")" = "$2" ]
}

# pack_cpio DIR OUT: the tree under DIR as a zstd-compressed newc cpio archive.
pack_cpio() {
  local dir=$1 out=$2
  (cd "$dir" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
    cpio --null -o -H newc --quiet --owner=0:0) | zstd -q -1 -T0 -f -o "$out.tmp"
  mv "$out.tmp" "$out"
}

# kernel_env BUILD LINE: sources the kernel fixture's result (KREL, KROOT) for LINE.
kernel_env() {
  local env=$1/tests/vm/kernels/$2.env
  [ -f "$env" ] || return 1
  # shellcheck disable=SC1090
  . "$env"
}

# read_header CASE KIND: sets h_<key>=<value> for each key=value on the
# "# KIND:" header line within the first 20 lines of CASE (KIND: vm or xen).
read_header() {
  local line kv
  line=$(head -n 20 "$1" | grep -m1 "^# $2:" || true)
  for kv in ${line#"# $2:"}; do
    case $kv in
      [a-z]*=*) printf -v "h_${kv%%=*}" '%s' "${kv#*=}" ;;
      *) die "$1: bad header item '$kv' (want key=value)" ;;
    esac
  done
}

# result_of CONSOLE_LOG: the guest's exit status from its @@DMU-RESULT marker,
# or nothing if the guest never printed one.
result_of() {
  tr -d '\r' <"$1" | sed -n 's/.*@@DMU-RESULT rc=\([0-9]*\)@@$/\1/p' | tail -1
}

# boot_case [--verbose] TIMEOUT CONSOLE_LOG QEMU_ARG...: boot-qemu.sh, and
# once more if the kernel died before our /init printed "dmu-init: booted".
# Nothing of ours has run by then (dm-userspace is loaded by /init), so such a
# death is the emulator's: CI saw Xen's dom0 oops at 3 s on a stale int3 left
# by boot-time code patching under TCG.  The first console is kept as
# CONSOLE_LOG.boot1 and its tail printed.  A timeout is not retried.
boot_case() {
  local opt=() rc
  if [ "$1" = --verbose ]; then opt=(--verbose); shift; fi
  local timeout_s=$1 console=$2
  shift 2
  rc=0
  "$vm_lib/boot-qemu.sh" "${opt[@]}" "$timeout_s" "$console" "$@" || rc=$?
  if [ "$rc" = 124 ] || grep -q "dmu-init: booted" "$console"; then
    return "$rc"
  fi
  mv "$console" "$console.boot1"
  log "the kernel died before /init ran (QEMU status $rc), not the case's doing; booting once more. Its last console lines:"
  tr -d '\r' <"$console.boot1" | tail -n 25 | sed 's/^/  | /' >&2 || true
  rc=0
  "$vm_lib/boot-qemu.sh" "${opt[@]}" "$timeout_s" "$console" "$@" || rc=$?
  return "$rc"
}

# report NAME CONSOLE_LOG QEMU_RC SECONDS: prints the outcome of one boot and
# returns the test's exit status (the guest's, 124 timeout, 125 no result).
report() {
  local name=$1 console=$2 qemu_rc=$3 secs=$4 rc booted
  booted=$(tr -d '\r' <"$console" | sed -n 's/.*dmu-init: booted \(Linux [^ ]*\).*/\1/p' | head -1)
  rc=$(result_of "$console")
  if [ "$qemu_rc" = 124 ] && [ "$rc" != 93 ]; then
    log "TIMEOUT after ${secs}s; QEMU killed. Last console lines:"
    rc=124
  elif [ -z "$rc" ]; then
    log "guest ended without a result (QEMU status $qemu_rc, ${secs}s). Last console lines:"
    rc=125
  elif [ "$rc" != 0 ]; then
    log "FAILED with status $rc (${booted:-no Linux booted}, ${secs}s). Last console lines:"
  fi
  if [ "$rc" = 93 ]; then   # the guest's hang report: blocked tasks and device state
    log "the guest reported a HANG; its report, then QEMU's virtqueues:"
    # || true: report() also runs under set -e/pipefail (the Xen lane); a
    # missing host view or head closing the pipe must not end it early.
    tr -d '\r' <"$console" | sed -n '/dmu-init: HANG/,$p' | grep -v '^host-virtio: ' | head -n 500 | sed 's/^/  | /' >&2 || true
    grep "^host-virtio: " "$console" | sed 's/^/  | /' >&2 || true
  fi
  if [ "$rc" != 0 ]; then
    tr -d '\r' <"$console" | tail -n 60 | sed 's/^/  | /' >&2
  else
    log "passed (${booted}, ${secs}s)"
  fi
  return "$rc"
}
