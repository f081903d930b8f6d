#!/bin/sh
# QEMU is the oracle for what dmu attach writes.  For raw, qcow (alone and
# over a backing file), qcow2 (compat=0.10, compat=1.1, over a backing chain
# of two, over a compressed base, extended_l2=on over a backing file, an
# external data file), vmdk (monolithicSparse, twoGbMaxExtentSparse across
# its extent boundary) and a qcow2 overlay on a streamOptimized vmdk: a
# seeded sequence of 100 O_DIRECT writes through the attached device (512-byte
# multiples, mostly unaligned, crossing cluster boundaries, rewriting earlier
# ones, some all zeros, some followed by fsync) leaves an image qemu-img
# compare finds identical to a copy that got the same writes from qemu-io,
# and qemu-img check (dmu check for qcow) finds both clean.  The device shows the oracle's bytes
# before detach too.  Read-only attaches (streamOptimized, a compressed
# qcow2, and some of the written images) read exactly what qemu-img convert
# -O raw gives, and refuse writes.  (qemu-img's qcow has 512-byte clusters:
# metadata and data share pages, where any page cache use beside the loop
# devices' direct I/O shows as EIO on fsync; fileio/direct_env.h.)
# vm: kernels=6.1,6.12 timeout=600 mem=1024 disks=2G boot=attach-long
. /src/tests/kmod/vm-lib.sh
. /src/tests/vm/lib/guest/attach-lib.sh

# The seed of the first image's write sequence; image N uses SEED + N.  The
# same seed gives the same writes on every run and kernel.
SEED=20130613
NWRITES=100
M=1048576

# --- data every image starts from -----------------------------------------

# text_sectors FILE SECTORS TAG: each 512-byte sector a distinct line of text,
# so a misplaced sector never matches by accident, yet it compresses (a
# compressed base made of random bytes would be stored uncompressed).
text_sectors() {
  awk -v n="$2" -v tag="$3" 'BEGIN {
    for (i = 0; i < n; i++) printf "%-511s\n", "sector " i " of " tag
  }' >"$1" || fail "generate $1"
}

# The write sources: random bytes, each sector distinct from every other.
# dd writes the first LEN bytes of one, and qemu-io's write -s does the same.
mk_sources() {
  for _k in 0 1 2 3; do
    dd if=/dev/urandom of="/data/src$_k" bs=64k count=4 status=none || fail "src$_k"
  done
  SRC_MAX=262144 # bytes: no write is longer than a source
}

# The shared backing images (read-only under every overlay).
mk_bases() {
  # 32 MiB: 8 MiB of text at 0, 8 MiB of random bytes at 16 MiB, holes else.
  text_sectors /data/text.raw 16384 "base.raw"
  truncate -s 32M /data/base.raw
  dd if=/data/text.raw of=/data/base.raw conv=notrunc status=none || fail "base.raw text"
  dd if=/dev/urandom of=/data/base.raw bs=1M seek=16 count=8 conv=notrunc status=none ||
    fail "base.raw random"
  qemu-img convert -O qcow /data/base.raw /data/base.qcow || fail "base.qcow"
  qemu-img convert -O qcow2 -o cluster_size=64k /data/base.raw /data/base.qcow2 ||
    fail "base.qcow2"
  # Two levels under a top: base.raw <- mid.qcow2 (4 KiB clusters, some of
  # them written, some zeroed) <- top.
  qemu-img create -q -f qcow2 -o cluster_size=4k -b base.raw -F raw /data/mid.qcow2 ||
    fail "mid.qcow2"
  qemu-io -f qcow2 -c "write -s /data/src0 1536k 128k" -c "write -s /data/src1 2100k 200k" \
    -c "write -z 2500k 64k" -c "write -s /data/src2 17m 100k" /data/mid.qcow2 >/dev/null ||
    fail "fill mid.qcow2"
  # Compressed images of the text alone (random bytes would only cost time):
  # every cluster compressed (8 KiB clusters), and a streamOptimized vmdk.
  truncate -s 32M /data/text.raw
  qemu-img convert -c -O qcow2 -o cluster_size=8k /data/text.raw /data/comp.qcow2 ||
    fail "comp.qcow2"
  qemu-img convert -O vmdk -o subformat=streamOptimized /data/text.raw /data/stream.vmdk ||
    fail "stream.vmdk"
  qemu-img info /data/comp.qcow2 | grep -q "cluster_size: 8192" || fail "comp.qcow2 cluster size"
}

# --- the images under test: mk_NAME PREFIX makes PREFIX.EXT --------------
# Each is made twice (dev-NAME, ref-NAME), the same way: a plain cp would
# leave a vmdk's extents and a qcow2's data file shared by both copies.

# preload IMG FMT: some data and zeros before the device ever sees the image,
# so the writes also land on clusters that are already allocated.
preload() {
  qemu-io -f "$2" -c "write -s /data/src3 1m 192k" -c "write -s /data/src2 2040k 16k" \
    -c "write -s /data/src1 6m 64k" "$1" >/dev/null || fail "preload $1"
}

mk_raw() {
  truncate -s 32M "$1.raw"
  preload "$1.raw" raw
}
mk_qcow() {
  qemu-img create -q -f qcow "$1.qcow" 32M || fail "create $1.qcow"
  preload "$1.qcow" qcow
}
mk_qcowback() {
  qemu-img create -q -f qcow -b base.qcow -F qcow "$1.qcow" || fail "create $1.qcow"
}
mk_v2() {
  qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=4k "$1.qcow2" 32M ||
    fail "create $1.qcow2"
  preload "$1.qcow2" qcow2
}
mk_v3() {
  qemu-img create -q -f qcow2 -o compat=1.1 "$1.qcow2" 32M || fail "create $1.qcow2"
  preload "$1.qcow2" qcow2
  # Zero clusters (compat=1.1 only), to be written over.
  qemu-io -f qcow2 -c "write -z 1792k 256k" "$1.qcow2" >/dev/null || fail "zero $1.qcow2"
}
mk_chain() {
  qemu-img create -q -f qcow2 -o cluster_size=16k -b mid.qcow2 -F qcow2 "$1.qcow2" ||
    fail "create $1.qcow2"
}
mk_overcomp() {
  qemu-img create -q -f qcow2 -o cluster_size=32k -b comp.qcow2 -F qcow2 "$1.qcow2" ||
    fail "create $1.qcow2"
}
mk_extl2() {
  # 32 KiB clusters of 32 subclusters of 1 KiB, over a backing file: a write
  # to part of a cluster allocates only its subclusters.
  qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=32k -b base.qcow2 -F qcow2 \
    "$1.qcow2" || fail "create $1.qcow2"
  qemu-io -f qcow2 -c "write -s /data/src3 1m 3k" -c "write -z 2047k 2k" "$1.qcow2" \
    >/dev/null || fail "preload $1.qcow2"
}
mk_datafile() {
  qemu-img create -q -f qcow2 -o data_file="$1.data",cluster_size=4k "$1.qcow2" 32M ||
    fail "create $1.qcow2"
  preload "$1.qcow2" qcow2
}
mk_sparse() {
  qemu-img create -q -f vmdk "$1.vmdk" 32M || fail "create $1.vmdk"
  preload "$1.vmdk" vmdk
}
mk_twogb() {
  # Two extents: 2 GiB and 64 MiB.  The writes cluster around the boundary.
  qemu-img create -q -f vmdk -o subformat=twoGbMaxExtentSparse "$1.vmdk" 2112M ||
    fail "create $1.vmdk"
  qemu-io -f vmdk -c "write -s /data/src0 2047m 1m" "$1.vmdk" >/dev/null || fail "preload $1.vmdk"
}
mk_overstream() {
  qemu-img create -q -f qcow2 -o cluster_size=4k -b stream.vmdk -F vmdk "$1.qcow2" ||
    fail "create $1.qcow2"
}

# --- the write sequence ----------------------------------------------------

# plan SEED LO HI HOT: NWRITES lines "KIND OFFSET LENGTH SOURCE SYNC" (bytes)
# in [LO, HI).  A Park-Miller generator (exact in awk's doubles).  Most
# writes fall in the 1 MiB around HOT, so they overlap and rewrite each other
# and cross whatever boundary HOT is; most are 512-byte aligned only; a fifth
# write zeros; a tenth are followed by fsync.
plan() {
  awk -v x="$1" -v lo="$2" -v hi="$3" -v hot="$4" -v n="$NWRITES" -v srcmax="$SRC_MAX" '
  function rnd(m) { x = (x * 16807) % 2147483647; return x % m }
  BEGIN {
    los = lo / 512; his = hi / 512
    wlo = hot / 512 - 1024
    if (wlo < los) wlo = los
    for (i = 0; i < n; i++) {
      r = rnd(8)
      if (r < 4) len = 1 + rnd(8)
      else if (r < 7) len = 1 + rnd(128)
      else len = 8 * (1 + rnd(srcmax / 4096))
      r = rnd(8)
      if (r == 0) off = los + rnd(his - los - len)
      else if (r == 1) off = wlo + 8 * rnd(256)
      else if (r == 2 && i > 0) off = prev[rnd(i)]
      else off = wlo + rnd(2048)
      if (off + len > his) off = his - len
      if (off < los) off = los
      prev[i] = off
      kind = rnd(5) == 0 ? "z" : "w"
      # %.0f: busybox awk prints %d through a 32-bit int (offsets reach 2 GiB).
      printf "%s %.0f %.0f %d %d\n", kind, off * 512, len * 512, rnd(4), rnd(10) == 0
    }
  }'
}

# qemu_io_ref FMT IMG PLAN: the oracle, every write in one qemu-io run.
qemu_io_ref() {
  _fmt=$1 _img=$2 _plan=$3
  set --
  while read -r _k _off _len _src _sync; do
    if [ "$_k" = z ]; then
      set -- "$@" -c "write -z $_off $_len"
    else
      set -- "$@" -c "write -s /data/src$_src $_off $_len"
    fi
    [ "$_sync" = 1 ] && set -- "$@" -c flush
  done <"$_plan"
  qemu-io -f "$_fmt" "$@" "$_img" >/tmp/qio.log || { tail /tmp/qio.log; fail "qemu-io on $_img"; }
}

# dd_device DEV PLAN: the same writes, each one O_DIRECT write(2) of its whole
# length at its offset (seek_bytes; bs is the length).
dd_device() {
  while read -r _k _off _len _src _sync; do
    _if=/data/src$_src
    [ "$_k" = z ] && _if=/dev/zero
    _conv=notrunc
    [ "$_sync" = 1 ] && _conv=notrunc,fsync
    dd if="$_if" of="$1" bs="$_len" count=1 seek="$_off" iflag=fullblock \
      oflag=direct,seek_bytes conv="$_conv" status=none ||
      fail "write of $_len bytes at $_off through $1"
  done <"$2"
}

# --- checks ------------------------------------------------------------------

# check_clean FMT IMG: qemu-img check finds no error or leak; qcow (v1),
# which qemu-img cannot check, is checked by dmu check (tested against QEMU
# in the unit tests); raw has nothing to check.
check_clean() {
  case $1 in
    qcow2 | vmdk)
      qemu-img check -f "$1" "$2" >/tmp/check.log 2>&1 || { cat /tmp/check.log; fail "qemu-img check $2"; }
      ;;
    qcow)
      dmu check -f qcow "$2" >/tmp/check.log 2>&1 || { cat /tmp/check.log; fail "dmu check $2"; }
      ;;
  esac
}

# ro_check NAME FMT IMG: attached read-only, the device reads what QEMU
# converts the image to, a write fails, and the image is not changed.
ro_check() {
  _sum=$(sha256sum "$3")
  _out=$(dmu attach --name "$1" --read-only -f "$2" "$3") || fail "read-only attach of $3"
  expect_eq "attach output" "/dev/mapper/$1" "$_out"
  qemu-img convert -f "$2" -O raw "$3" /tmp/ro.raw || fail "qemu-img convert $3"
  expect_eq "device size of $3" "$(stat -c %s /tmp/ro.raw)" "$(blockdev --getsize64 "/dev/mapper/$1")"
  dd if="/dev/mapper/$1" of=/tmp/ro.dev bs=1M iflag=direct status=none || fail "read /dev/mapper/$1"
  cmp /tmp/ro.dev /tmp/ro.raw || fail "read-only $3: the device differs from qemu-img convert"
  if dd if=/dev/zero of="/dev/mapper/$1" bs=512 seek=8 count=1 oflag=direct conv=notrunc \
    status=none 2>/dev/null; then
    fail "a write to the read-only device of $3 succeeded"
  fi
  dmu detach "$1" || fail "detach $1"
  expect_eq "$3 after the read-only attach" "$_sum" "$(sha256sum "$3")"
  rm -f /tmp/ro.raw /tmp/ro.dev
}

# oracle INDEX NAME FMT HOT: images dev-NAME and ref-NAME made by mk_NAME;
# the seeded writes around HOT (bytes) go to ref through qemu-io and to dev
# through the attached device; the device must show ref's bytes before
# detach, and after detach the two images must compare equal and check clean.
oracle() {
  _t0=$(now_ms)
  _seed=$((SEED + $1)) _n=$2 _fmt=$3 _hot=$4
  _dev=dev-$_n.$_fmt _ref=ref-$_n.$_fmt
  mk_"$_n" "dev-$_n"
  mk_"$_n" "ref-$_n"
  # The first virtual-size is the image's (a vmdk lists its extents' after).
  _size=$(qemu-img info -f "$_fmt" --output=json "$_ref" |
    sed -n 's/.*"virtual-size": \([0-9]*\).*/\1/p' | head -n 1)
  _lo=$((_hot - 4 * M)) _hi=$((_hot + 4 * M))
  [ $_lo -ge 0 ] || _lo=0
  [ $_hi -le "$_size" ] || _hi=$_size
  plan $_seed $_lo $_hi $_hot >"/tmp/plan.$_n"
  echo "$_n: seed $_seed, $NWRITES writes in [$_lo, $_hi), $(grep -c '^z' "/tmp/plan.$_n") of zeros"
  qemu_io_ref "$_fmt" "$_ref" "/tmp/plan.$_n"

  _out=$(dmu attach --name "o-$_n" -f "$_fmt" "/data/$_dev") || fail "attach $_dev"
  expect_eq "attach output" "/dev/mapper/o-$_n" "$_out"
  expect_eq "device size of $_dev" "$_size" "$(blockdev --getsize64 "/dev/mapper/o-$_n")"
  dd_device "/dev/mapper/o-$_n" "/tmp/plan.$_n"
  # What the device shows of [LO, HI) before detach is ref's.
  _w=$(((_hi - _lo) / 65536))
  dd if="/dev/mapper/o-$_n" of=/tmp/win.dev bs=64k skip=$((_lo / 65536)) count=$_w \
    iflag=direct status=none || fail "read back /dev/mapper/o-$_n"
  # (qemu-img dd would do, but its count counts from 0, not from skip.)
  qemu-img convert -f "$_fmt" -O raw "$_ref" /tmp/ref.raw || fail "qemu-img convert $_ref"
  dd if=/tmp/ref.raw of=/tmp/win.ref bs=64k skip=$((_lo / 65536)) count=$_w status=none ||
    fail "window of $_ref"
  cmp /tmp/win.dev /tmp/win.ref || fail "$_n: the attached device differs from the oracle"
  expect_eq "bad answers of o-$_n" 0 "$(dmu_stat "o-$_n" bad)"
  dmu detach "o-$_n" || fail "detach o-$_n"

  qemu-img compare -f "$_fmt" -F "$_fmt" "$_dev" "$_ref" ||
    fail "$_n (seed $_seed): the image written through dmu differs from qemu-io's"
  check_clean "$_fmt" "$_dev"
  check_clean "$_fmt" "$_ref"
  rm -f /tmp/win.dev /tmp/win.ref /tmp/ref.raw
  echo "$_n: identical to the oracle, $(($(now_ms) - _t0)) ms"
}

step "images on ext4, sources and backing images"
data_fs
cd /data || fail "cd /data"
mk_sources
mk_bases

step "read-only: streamOptimized vmdk and an all-compressed qcow2"
ro_check r-stream vmdk stream.vmdk
ro_check r-comp qcow2 comp.qcow2

step "raw, qcow, qcow over a backing file"
oracle 0 raw raw $((8 * M))
oracle 1 qcow qcow $((2 * M))
oracle 2 qcowback qcow $((18 * M))

step "qcow2: compat=0.10, compat=1.1, a chain of two, a compressed base"
oracle 3 v2 qcow2 $((2 * M))
oracle 4 v3 qcow2 $((2 * M))
oracle 5 chain qcow2 $((2 * M))
oracle 6 overcomp qcow2 $((4 * M))

step "qcow2: extended L2 over a backing file, an external data file"
oracle 7 extl2 qcow2 $((2 * M))
oracle 8 datafile qcow2 $((2 * M))

step "vmdk: monolithicSparse, twoGbMaxExtentSparse, a qcow2 over streamOptimized"
oracle 9 sparse vmdk $((2 * M))
oracle 10 twogb vmdk $((2048 * M))
oracle 11 overstream qcow2 $((6 * M))

step "read-only: images as the writes left them"
ro_check r-qcowback qcow dev-qcowback.qcow
ro_check r-extl2 qcow2 dev-extl2.qcow2
ro_check r-datafile qcow2 dev-datafile.qcow2

check_dmesg
