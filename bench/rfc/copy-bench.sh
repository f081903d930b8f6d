#!/bin/sh
# vm: kernels=6.1,6.12 timeout=3600 disks=2G mem=1024
# Guest half of bench/rfc/run.sh (not a test): the RFC's first experiment.
# "I copy about 20MB of data to a dm-userspace device [...] I compare this
# with a 'control' of a single loop-mounted image file [...] I measured the
# time to mount, copy, and unmount the device": 1 s on the loop device,
# 10 s on dm-userspace/qcow in 2006.
# Each run starts from a fresh empty 256 MiB image, so every write the file
# system makes allocates: mkfs.ext4, mount, cp -a of a 20 MiB tree (2048
# files of 4 KiB, 128 of 64 KiB, 4 of 1 MiB) from tmpfs, sync, umount.
# mkfs as data_fs does it (no discard, inode tables and journal zeroed by
# mkfs): the kernel's lazy init thread would otherwise zero them at a
# random moment, sometimes inside the timed window, and a discard of the
# whole device costs each device differently (qemu-nbd ignores it).
# Devices, in an order that rotates per repetition:
#   loop   the control: a direct-I/O loop device over a fresh sparse raw
#          file (the kind of loop device dmu's data goes through)
#   qcow2, qcow, vmdk, raw   `dmu attach` of a fresh empty image of that
#          format (raw: a fresh sparse file, mapped one to one)
#   nbd    the same empty qcow2 served by qemu-nbd (cache=none,
#          aio=native) through the kernel's nbd client
# One line per run in /results/copy.csv: rep,device,mkfs_ms,rfc_ms,requests
# (rfc_ms: mount to umount, the RFC's measure; mkfs_ms before it;
# requests: the mapping process's during both).  After the first
# repetition's run on each device the copy is checked (mounted again and
# compared with the source), and every image passes qemu-img check (dmu
# check for qcow, which qemu-img cannot check).
. /src/tests/kmod/vm-lib.sh
. /src/tests/vm/lib/guest/attach-lib.sh
. /src/bench/lib/guest-lib.sh
REPS=${REPS:-12}  # a multiple of the devices: each runs in each position
DEVICES="loop qcow2 qcow vmdk raw nbd"
[ -f /src/bench/rfc/settings ] && . /src/bench/rfc/settings
SIZE_MB=256

step "the source: a 20 MiB tree on tmpfs; /data: ext4 for the images"
mkdir -p /tmp/tree/small /tmp/tree/mid /tmp/tree/big
dd if=/dev/urandom of=/tmp/blob bs=1M count=20 status=none || fail "random data"
# carve DIR COUNT BYTES: COUNT files of BYTES each in DIR, read in turn from
# standard input (the guest has no split).
carve() {
  _i=0
  while [ $_i -lt "$2" ]; do
    dd bs="$3" count=1 of="$1/f$_i" status=none || return 1
    _i=$((_i + 1))
  done
}
{ carve /tmp/tree/small 2048 4096 && carve /tmp/tree/mid 128 65536 && carve /tmp/tree/big 4 1048576; } \
  </tmp/blob || fail "carve the tree"
rm -f /tmp/blob
echo "source: $(find /tmp/tree -type f | wc -l) files, $(du -sk /tmp/tree | cut -f1) KiB"
data_fs
modprobe nbd nbds_max=1 || fail "modprobe nbd"
mkdir -p /mnt/copy

# attach_u IMAGE FORMAT: IMAGE as /dev/mapper/u, its push finished.
attach_u() {
  dmu attach --name u -f "$2" "$1" >/dev/null || fail "dmu attach $1"
  wait_until 60 "the end of $1's push" grep -q "pushed [0-9]* extents" /run/dmu/u.log
}
# up DEVICE: a fresh empty image for DEVICE, its block device in $dev.
up() {
  rm -f /data/img
  case $1 in
    loop) truncate -s ${SIZE_MB}M /data/img && dev=$(loop_dio /data/img) ;;
    raw) truncate -s ${SIZE_MB}M /data/img && attach_u /data/img raw && dev=/dev/mapper/u ;;
    nbd) qemu-img create -q -f qcow2 /data/img ${SIZE_MB}M && nbd_up /data/img && dev=/dev/nbd0 ;;
    *) qemu-img create -q -f "$1" /data/img ${SIZE_MB}M && attach_u /data/img "$1" &&
      dev=/dev/mapper/u ;;
  esac || fail "$1: no device"
}
# down DEVICE BLOCKDEV: its device gone, the image checked and removed.
down() {
  case $1 in
    loop) losetup -d "$2" || fail "losetup -d $2" ;;
    nbd) nbd_down ;;
    *) dmu detach u || fail "dmu detach u" ;;
  esac
  case $1 in
    loop | raw) ;;
    nbd) qemu-img check -q /data/img || fail "qemu-img check after nbd" ;;
    qcow) dmu check /data/img >/dev/null || fail "dmu check of the qcow image" ;; # qemu-img has none
    *) qemu-img check -q -f "$1" /data/img || fail "qemu-img check of the $1 image" ;;
  esac
  rm -f /data/img
}
requests() {
  case $1 in loop | nbd) echo - ;; *) daemon_counter u requests ;; esac
}

echo "rep,device,mkfs_ms,rfc_ms,requests" >/results/copy.csv
for rep in $(seq 1 "$REPS"); do
  # shellcheck disable=SC2086
  order=$(rotate $((rep - 1)) $DEVICES)
  step "rep $rep (order $order)"
  for d in $order; do
    up "$d"
    sync
    echo 3 >/proc/sys/vm/drop_caches
    # The mapping process rewrites its counters at most ~1.5 s after a change.
    sleep 2
    r0=$(requests "$d")
    t0=$(now_ms)
    mkfs.ext4 -q -F -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 "$dev" ||
      fail "mkfs.ext4 on $d"
    t1=$(now_ms)
    mount -t ext4 "$dev" /mnt/copy || fail "mount $d"
    cp -a /tmp/tree /mnt/copy/ || fail "copy to $d"
    sync
    umount /mnt/copy || fail "umount $d"
    t2=$(now_ms)
    sleep 2
    r1=$(requests "$d")
    [ "$r0" = - ] || r1=$((r1 - r0))
    echo "$rep,$d,$((t1 - t0)),$((t2 - t1)),$r1" | tee -a /results/copy.csv
    if [ "$rep" = 1 ]; then
      mount -o ro -t ext4 "$dev" /mnt/copy || fail "mount $d again"
      diff -r /tmp/tree /mnt/copy/tree >/dev/null || fail "$d: the copy differs from the source"
      umount /mnt/copy || fail "umount $d"
    fi
    down "$d" "$dev"
  done
done
step "ok"
