#!/bin/sh
# Crash consistency of the image file: the ext4 holding an empty qcow2 image
# sits on dm-log-writes; the image is attached with `dmu attach` and the
# flush auditor's writer runs on /dev/mapper/NAME (4 threads of stamped
# 4 KiB writes, fdatasync every 1..8 writes, then a mark in the log under
# ext4).  For marks spread over the run, the log replayed up to the mark is
# the host disk as a crash right then left it: ext4 recovers its journal on
# a snapshot of it, qemu-img check must find the image consistent (leaks
# allowed), every block synced before the mark must read back with its
# stamp through the image (qemu-img convert, an independent reader), and
# nothing may hold data of another place.  Two images, one after the other:
# 4 KiB clusters, where every first write to a block allocates a cluster and
# changes L2 and refcount tables, and QEMU's default 64 KiB clusters, where
# it also makes the kernel fill the rest of the cluster with zeros.  A
# mapping stack that acknowledges a guest flush before the image's data and
# metadata are durable in the host file system fails, naming the mark and
# the block.
# vm: kernels=6.1,6.12 timeout=720 mem=1024 disks=512M,2G,512M,64M
. /src/tests/kmod/vm-lib.sh
. /src/tests/vm/lib/guest/attach-lib.sh

OUT=/tmp/crash
mkdir -p $OUT /data /mnt/crash
# vda: the host disk under dm-log-writes; vdb: its log; vdc: the replay of
# the log (a crash state, advanced mark by mark); vdd: the copy-on-write
# store of the snapshot ext4 recovers its journal into, so vdc stays the
# crash state for the next replay.
DISK=/dev/vda LOG=/dev/vdb REPLAY=/dev/vdc COW=/dev/vdd
# The images: name, cluster size, virtual size = writer's region (MiB),
# writer seconds, marks checked at most.
IMAGES="alloc4k:4k:64:12:14 cow64k:64k:128:8:8"

# field SPEC N: the N-th colon-separated field of an IMAGES entry.
field() {
  echo "$1" | cut -d: -f"$2"
}

# What a mark means with the image between the writer and the log: the mark
# is a message to lw, sent once fdatasync on /dev/mapper/NAME returned.  By
# then the target flushed the loop device (an fsync of the image file: ext4
# commits its journal with PREFLUSH/FUA writes to lw) and the mapping
# process answered COMMIT (the image's tables written and fdatasync()ed,
# ext4 again).  dm-log-writes logs a flush when it completes, behind every
# write that completed before it was issued, and queues a mark behind
# everything logged so far: the entries before the mark are exactly what the
# host disk held durably once the guest's flush was acknowledged.
#
# write_image SPEC: the image created empty, attached, written, detached;
# as detach left it, it must hold every write exactly.  Its marks follow
# the mark begin-NAME in the log (mark texts repeat from image to image).
write_image() {
  _n=$(field "$1" 1) _mib=$(field "$1" 3)
  step "$_n: an empty qcow2 image, $(field "$1" 2) clusters, attached"
  dmsetup message lw 0 mark "begin-$_n" || fail "mark begin-$_n"
  qemu-img create -q -f qcow2 -o cluster_size="$(field "$1" 2)" "/data/$_n.qcow2" "${_mib}M" ||
    fail "qemu-img create $_n"
  # The empty image is durable before its first mark: every crash state has it.
  sync
  _dev=$(dmu attach --name "$_n" "/data/$_n.qcow2") || fail "dmu attach $_n"
  expect_eq "attach output" "/dev/mapper/$_n" "$_dev"

  step "$_n: the writer, 4 threads, $(field "$1" 4) s, fdatasync every 1..8 writes, then a mark"
  dmu-flush-audit write --device "$_dev" --mark-device lw --threads 4 --region-mib "$_mib" \
    --seconds "$(field "$1" 4)" --fsync-every 8 --journal "$OUT/$_n.journal" >"$OUT/$_n.writer" 2>&1
  _rc=$?
  cat "$OUT/$_n.writer"
  [ $_rc = 0 ] || fail "$_n: dmu-flush-audit write exited with $_rc"
  expect_gt "$_n: syncs" 0 "$(grep -c '^s ' "$OUT/$_n.journal")"
  dmu stats "$_n" | grep -E "commit|alloc|grow" || true

  step "$_n: detach; the image as it left it holds every write"
  dmu detach "$_n" || fail "dmu detach $_n"
  image_holds "/data/$_n.qcow2" "$_n" "" || fail "$_n: the detached image"
}

# image_holds QCOW2 NAME MARK: qemu-img check (leaked clusters allowed with
# a MARK: a crash between allocation and commit may leave them), then the
# virtual disk against NAME's journal, at MARK or (none) exactly.  Prints
# why it fails and returns 1.
image_holds() {
  qemu-img check "$1" >$OUT/check.txt 2>&1
  _rc=$?
  if [ $_rc != 0 ] && { [ -z "$3" ] || [ $_rc != 3 ]; }; then
    echo "FAIL ${3:+mark $3 of }$2: qemu-img check exited $_rc"
    tail -15 $OUT/check.txt
    return 1
  fi
  [ $_rc = 3 ] && LEAKY=$((LEAKY + 1))
  if ! qemu-img convert -O raw "$1" $OUT/virtual.raw 2>$OUT/convert.txt; then
    echo "FAIL ${3:+mark $3 of }$2: qemu-img convert"
    cat $OUT/convert.txt
    return 1
  fi
  dmu-flush-audit check-image --image $OUT/virtual.raw --journal "$OUT/$2.journal" \
    ${3:+--mark "$3"} --max-report 10 >$OUT/image.txt 2>&1
  _rc=$?
  rm -f $OUT/virtual.raw
  # Mark texts repeat from image to image: the lines say which image.
  [ $_rc = 0 ] || sed "s/^/$2: /" $OUT/image.txt
  echo "$2 ${3:-final}: $(tail -1 $OUT/image.txt)" >>$OUT/images.txt
  _e=$(sed -n 's/.* expected=\([0-9]*\) .*/\1/p' $OUT/image.txt)
  EXPECTED=$((EXPECTED + ${_e:-0}))
  return $_rc
}

# crash_state NAME MARK: the crash state now in $REPLAY, checked.  Returns
# 1 on a failure rather than stopping, so every sampled mark is seen.
crash_state() {
  echo "0 $(blockdev --getsz $REPLAY) snapshot $REPLAY $COW N 8" | dmsetup create crashfs ||
    fail "$2: snapshot of the replayed disk"
  dmsetup mknodes
  # Read-only mount of a writable device: ext4 still replays its journal
  # (into the snapshot), as the host would after the crash.
  mount -t ext4 -o ro /dev/mapper/crashfs /mnt/crash || fail "$2: mount the crash state"
  _bad=0
  image_holds "/mnt/crash/$1.qcow2" "$1" "$2" || _bad=1
  if [ $_bad = 1 ] && [ -z "$FIRST_BAD" ]; then
    FIRST_BAD="$2 of $1"
    cp --sparse=always "/mnt/crash/$1.qcow2" "$OUT/first-bad-$1.qcow2"
  fi
  umount /mnt/crash || fail "$2: umount the crash state"
  dmsetup remove crashfs || fail "$2: remove the snapshot"
  return $_bad
}

# replay_to MARK: the next stretch of the log onto $REPLAY.
replay_to() {
  _pos=$(dmu-log-writes-replay --log $LOG --target $REPLAY --from-entry "$NEXT" \
    ${OFFSET:+--from-offset $OFFSET} ${1:+--to-mark "$1"} 2>>$OUT/replay.txt) ||
    { tail -3 $OUT/replay.txt; fail "replay to ${1:-the end}"; }
  NEXT=$(echo "$_pos" | sed -n 's/^next-entry=\([0-9]*\) .*/\1/p')
  OFFSET=$(echo "$_pos" | sed -n 's/.* next-offset=\([0-9]*\)$/\1/p')
}

step "ext4 on dm-log-writes over $DISK, the log on $LOG"
modprobe dm-snapshot || fail "modprobe dm-snapshot"
echo "0 $(blockdev --getsz $DISK) log-writes $DISK $LOG" | dmsetup create lw ||
  fail "create log-writes"
dmsetup mknodes
mkfs.ext4 -q -F -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 /dev/mapper/lw ||
  fail "mkfs.ext4 on the log-writes device"
mount -t ext4 /dev/mapper/lw /data || fail "mount /data"
LEAKY=0 EXPECTED=0
: >$OUT/images.txt
for spec in $IMAGES; do write_image "$spec"; done
umount /data || fail "umount /data"
dmsetup status lw | tee $OUT/lw-status.txt
grep -q logging_disabled $OUT/lw-status.txt && fail "dm-log-writes stopped logging (log full?)"
dmsetup remove lw || fail "remove lw"

step "the log: one mark per fdatasync the writer saw return"
dmu-log-writes-dump $LOG >$OUT/log.txt || fail "dmu-log-writes-dump"
head -1 $OUT/log.txt
# "NAME MARK" for every synced mark, NAME from the begin-NAME before it.
awk '/ flags=MARK .* mark=/ {
    sub(/.* mark=/, "")
    if (sub(/^begin-/, "")) name = $0
    else if (/^synced-[0-9]+-[0-9]+$/) print name ":" $0
  }' $OUT/log.txt >$OUT/marks.txt
: >$OUT/sample.txt
for spec in $IMAGES; do
  _n=$(field "$spec" 1)
  _syncs=$(grep -c '^s ' "$OUT/$_n.journal")
  expect_eq "$_n: synced marks in the log" "$_syncs" "$(grep -c "^$_n:" $OUT/marks.txt)"
  # Up to the image's bound, evenly spread from its first mark to its last.
  grep "^$_n:" $OUT/marks.txt | awk -v n="$_syncs" -v k="$(field "$spec" 5)" 'BEGIN {
      if (k > n) k = n
      for (j = 0; j < k; j++) pick[1 + int(j * (n - 1) / (k > 1 ? k - 1 : 1))] = 1
    }
    pick[NR]' >>$OUT/sample.txt
done

step "replay to each of $(wc -l <$OUT/sample.txt) marks: recover ext4, check the image and blocks"
NEXT=0 OFFSET='' image='' checked=0 failed=0 FIRST_BAD='' EXPECTED=0 LEAKY=0
t0=$(now_ms)
for s in $(cat $OUT/sample.txt); do
  # Past the image's begin mark first: its mark texts also name marks of
  # the image before it.
  [ "${s%%:*}" = "$image" ] || { image=${s%%:*}; replay_to "begin-$image"; }
  replay_to "${s#*:}"
  checked=$((checked + 1))
  crash_state "$image" "${s#*:}" || failed=$((failed + 1))
done
# Every crash state is one ext4 must recover (it was mounted, its journal
# busy with the image's file): otherwise the replay would not be testing
# the order between its journal and the image's writes.
recovered=$(dmesg | grep -c "EXT4-fs (dm-[0-9]*): recovery complete")
echo "marks checked: $checked ($(( ($(now_ms) - t0) / checked )) ms each), failed: $failed," \
  "ext4 journal recovered: $recovered, with leaked clusters: $LEAKY," \
  "synced blocks checked: $EXPECTED"
if [ $failed != 0 ]; then
  save_results attach-crash $OUT/*.txt $OUT/*.journal $OUT/*.writer $OUT/first-bad-*.qcow2
  fail "$failed of $checked crash states lose synced writes or are inconsistent, the first at" \
    "mark $FIRST_BAD (above; log, journals and that image in results/attach-crash)"
fi
expect_eq "crash states ext4 recovered" "$checked" "$recovered"
expect_gt "synced blocks checked" 0 "$EXPECTED"

step "the whole log replayed holds the images as detach left them"
replay_to ""
mount -t ext4 -o ro $REPLAY /mnt/crash || fail "mount the replayed disk"
for spec in $IMAGES; do
  _n=$(field "$spec" 1)
  image_holds "/mnt/crash/$_n.qcow2" "$_n" "" || fail "$_n: the replayed detached image"
done
umount /mnt/crash
save_results attach-crash $OUT/*.writer $OUT/images.txt $OUT/replay.txt $OUT/lw-status.txt
check_dmesg
step "ok"
