#!/bin/sh
# A hostile daemon cannot hurt the kernel.  For every kind of bad answer the
# daemon checks write() returns what the protocol header promises, and this
# case checks the fate the header promises for each request a hostile
# answer was written for (the daemon logs them, fates=id:block:fate):
#   fails     the bad message names the request: its I/O fails with EIO at
#             once (well under daemon_timeout)
#   pending   the bad bytes name no request (foreign id, id 0, a push id, a
#             write() of the wrong length): the request stays pending until
#             daemon_timeout fails its I/O with EIO
#   succeeds  the request was answered validly before the bad message
# No COMPLETE follows a hostile answer: the answer alone decides.  I/O
# outside the hostile range succeeds, errno values from COMPLETE reach the
# caller (and a read that joined a write's MAP is not failed with the
# write's), a flood of valid pushes keeps the kernel's memory bounded, dmesg
# stays free of oops/warnings, the module's slab caches return to their
# baseline after removal and the module unloads.  slab_nomerge keeps the
# module's caches visible by name.
# vm: kernels=6.1,6.12 timeout=480 debug_timeout=6300 disks=256M cmdline=slab_nomerge
. /src/tests/kmod/vm-lib.sh
LOG=/tmp/daemon.log
TMO=5        # daemon_timeout of the hostile tables (s): six kinds wait it out
FAST_MS=3000 # "at once": well under daemon_timeout, with room for TCG
# A debug kernel (lockdep, KASAN) under TCG took up to 7 s from the start
# of a reader to its failure with a second debug guest running: 9 s there,
# under a 15 s timeout.  (Its slow device is slower too, below.)
# The push flood must outgrow max_extents (1024) at least once: 20 batches
# of 256 extents in 8 s on a normal kernel, and at least 5 (1280 extents)
# on a debug kernel, which managed 9 in a lane run.
FLOOD_MIN_BATCHES=20
case $(uname -r) in *debug*) TMO=15 FAST_MS=9000 FLOOD_MIN_BATCHES=5 ;; esac

# Active objects of the module's slab caches, "name=count ...".  Shrinking
# first moves objects parked in per-CPU slabs back, so the count is exact.
dmu_slabs() {
  for c in $(awk '$1 ~ /^dmu/ {print $1}' /proc/slabinfo); do
    [ -w "/sys/kernel/slab/$c/shrink" ] && echo 1 >"/sys/kernel/slab/$c/shrink"
  done
  awk '$1 ~ /^dmu/ {printf "%s=%s ", $1, $2}' /proc/slabinfo
}
slab_objs() { # CACHE: active objects
  [ -w "/sys/kernel/slab/$1/shrink" ] && echo 1 >"/sys/kernel/slab/$1/shrink"
  awk -v c="$1" '$1 == c {print $2}' /proc/slabinfo
}
now_ms() { awk '{printf "%d\n", $1 * 1000}' /proc/uptime; }
block_md5() { # DEV BLOCK: md5sum of one direct 4 KiB read
  dd if="$1" bs=4096 skip="$2" count=1 iflag=direct status=none | md5sum
}
mem_avail_kb() { awk '$1 == "MemAvailable:" {print $2}' /proc/meminfo; }

# io_bg r|w BLOCK: one direct 4 KiB read or write of BLOCK of /dev/mapper/h
# in the background; /tmp/io.BLOCK gets "rc ms" when it ends.
io_bg() {
  (
    t0=$(now_ms)
    if [ "$1" = r ]; then
      read_block /dev/mapper/h 4096 "$2" 2>"/tmp/io.$2.err"
    else
      dd if=/dev/zero of=/dev/mapper/h bs=4096 seek="$2" count=1 oflag=direct conv=notrunc \
        status=none 2>"/tmp/io.$2.err"
    fi
    rc=$?
    echo "$rc $(($(now_ms) - t0))" >"/tmp/io.$2"
  ) &
}

# logged_fates LOG: "block:fate" for every request the daemon logging to LOG
# claimed a fate for.
logged_fates() {
  grep "event=hostile " "$1" | tr ' ,' '\n\n' |
    sed -n 's/^\(fates=\)\{0,1\}[0-9]*:\([0-9]*:[a-z]*\)$/\2/p'
}

# fates_sorted: $FATES sorted, comma-separated (as the expected lists are).
fates_sorted() {
  echo $FATES | tr ' ' '\n' | sort | tr '\n' ',' | sed 's/,$//'
}

# check_fate KIND BLOCK: the I/O of BLOCK met the fate the daemon's hostile
# answer claims for it (its request's fate; the daemon logs fates=...).
check_fate() {
  _k=$1 _b=$2
  # open-msgs-limit's failing read waits until all 65 readers reached the
  # daemon (seconds on a busy guest); its daemon_timeout is 120 s.
  _fast=$FAST_MS
  [ "$_k" != open-msgs-limit ] || _fast=60000
  read -r _rc _ms <"/tmp/io.$_b" || fail "$_k: no result for the I/O of block $_b"
  _fate=$(logged_fates $LOG | sed -n "s/^$_b://p" | tail -1)
  [ -n "$_fate" ] || { cat $LOG; fail "$_k: the daemon claimed no fate for block $_b"; }
  echo "$_k: block $_b rc=$_rc ms=$_ms fate=$_fate"
  case $_fate in
    succeeds)
      [ "$_rc" = 0 ] || { cat "/tmp/io.$_b.err"; fail "$_k: block $_b answered validly first, I/O failed"; } ;;
    fails)
      [ "$_rc" != 0 ] || fail "$_k: block $_b: a bad answer naming it, yet the I/O succeeded"
      grep -q "Input/output error" "/tmp/io.$_b.err" || { cat "/tmp/io.$_b.err"; fail "$_k: block $_b: not EIO"; }
      [ "$_ms" -lt "$_fast" ] || fail "$_k: block $_b failed only after $_ms ms, not at once" ;;
    pending)
      [ "$_rc" != 0 ] || fail "$_k: block $_b: bad bytes naming no request, yet the I/O succeeded"
      grep -q "Input/output error" "/tmp/io.$_b.err" || { cat "/tmp/io.$_b.err"; fail "$_k: block $_b: not EIO"; }
      [ "$_ms" -ge $(((TMO - 1) * 1000)) ] || fail "$_k: block $_b failed after $_ms ms, before daemon_timeout ($TMO s)"
      [ "$_ms" -lt $(((TMO + 20) * 1000)) ] || fail "$_k: block $_b failed only after $_ms ms (daemon_timeout $TMO s)" ;;
    *) fail "$_k: unknown fate '$_fate'" ;;
  esac
  FATES="$FATES $_fate"
}

step "data files, loop devices, a slow (dm-delay) device, slab baseline"
data_fs
make_file /data/disk.img 16 /dev/urandom
make_file /data/ro.img 16 /dev/urandom
LOOP=$(loop_dio /data/disk.img)
LOOP2=$(loop_dio /data/ro.img)
SZ=$(blockdev --getsz "$LOOP")
# Writes (and so kcopyd's zero fills) take 500 ms: fills are still running
# when the rest of the same write() is processed.  On the debug kernel one
# write() of 65 pushes took longer than that (push-fill-limit saw its first
# fills done before the 65th push): 3 s there.
slow_ms=500
case $(uname -r) in *debug*) slow_ms=3000 ;; esac
echo "0 $SZ delay $LOOP 0 0 $LOOP 0 $slow_ms" | dmsetup create slow || fail "dmsetup create slow"
dmsetup mknodes
SLOW=/dev/mapper/slow
base=$(dmu_slabs)
echo "slab baseline: $base"
[ -n "$base" ] || { grep -i dmu /proc/slabinfo; fail "no dmu slab caches in /proc/slabinfo"; }

# open-msgs-limit: 65 reads at once; 64 answers fill the kernel's room for
# open answers, the 65th finds no room, then the 64 get their FINAL.  The
# daemon answers once all 65 arrived, which takes a slow guest seconds to
# start: daemon_timeout 120 there.
OPEN_IO=$(i=0; while [ $i -le 64 ]; do printf 'r%d,' $i; i=$((i + 1)); done | sed 's/,$//')
OPEN_WANT=fails$(i=0; while [ $i -lt 64 ]; do printf ',succeeds'; i=$((i + 1)); done)

# KIND FATES DEVICE(S) OPTIONS IO...: the fates the kind's answers must
# claim (sorted), the table's devices and options, the hostile I/O (rN/wN,
# all at once; the hostile range is blocks 0 to the highest of them, at
# least 0:4).
while read -r kind want devs opts io; do
  [ -n "$kind" ] || continue
  step "hostile kind $kind"
  : >$LOG
  rm -f /tmp/io.*
  case $devs in
    fast) devlist=$LOOP ;;
    slow) devlist=$SLOW ;;
    ro) devlist="$LOOP $LOOP2" ;;
  esac
  # shellcheck disable=SC2086
  dmu_create h "hk-$kind" 8 "$(echo "$opts" | tr , ' ')" $devlist
  last=$(echo "$io" | tr , '\n' | cut -c2- | sort -n | tail -n 1)
  [ "$last" -ge 3 ] || last=3
  daemon_start $LOG --key "hk-$kind" --mode hostile --hostile "$kind" --blocks "0:$((last + 1))"
  t0=$(now_ms)
  blocks=
  for x in $(echo "$io" | tr , ' '); do
    b=${x#?} # rN or wN: b is N, ${x%"$b"} the r or w (no forks: 65 of them)
    io_bg "${x%"$b"}" "$b"
    blocks="$blocks $b"
  done
  wait_i=0
  for b in $blocks; do
    while [ ! -s "/tmp/io.$b" ]; do
      wait_i=$((wait_i + 1))
      [ $wait_i -lt $(((TMO + 60) * 10)) ] || { cat $LOG; fail "$kind: I/O of block $b hangs"; }
      sleep 0.1
    done
  done
  echo "$kind: hostile I/O done after $(($(now_ms) - t0)) ms"
  # A daemon that sends FINALs after its hostile bytes logs the fates after them.
  wait_until 60 "$kind: the daemon logged no fates" grep -q "event=hostile " $LOG
  FATES=
  for b in $blocks; do check_fate "$kind" "$b"; done
  expect_eq "$kind: fates of its requests" "$want" "$(fates_sorted)"
  read_block /dev/mapper/h 4096 100 || fail "$kind: read outside the hostile range failed"
  dd if=/dev/zero of=/dev/mapper/h bs=4096 seek=101 count=1 oflag=direct conv=notrunc status=none ||
    fail "$kind: write outside the hostile range failed"
  # Read while the daemon is bound: once it is gone, daemon_timeout later
  # the target counts a timeout of its own (nothing waits, but new misses
  # fail from then on), and a slow guest takes that long for the checks.
  bad=$(dmu_stat h bad) timeouts=$(dmu_stat h timeouts)
  daemon_stop $LOG
  grep "event=hostile" $LOG
  sent=$(daemon_value $LOG counters hostile_sent)
  expect_ge "$kind: hostile answers sent" 1 "$sent"
  expect_eq "$kind: answers with the promised write() result" "$sent" \
    "$(daemon_value $LOG counters hostile_as_promised)"
  expect_eq "$kind: broken promises" 0 "$(daemon_value $LOG counters hostile_broken)"
  case $kind in
    truncated) expect_eq "$kind: bad messages (refused whole, none looked at)" 0 "$bad" ;;
    *) expect_gt "$kind: kernel counted bad messages" 0 "$bad" ;;
  esac
  case $want in
    *pending*) expect_gt "$kind: timeouts" 0 "$timeouts" ;;
    *) expect_eq "$kind: timeouts" 0 "$timeouts" ;;
  esac
  timeout 60 dmsetup remove h || fail "$kind: dmsetup remove"
done <<EOF
bad-dev            fails,fails,fails          fast 2,daemon_timeout,$TMO  r1,r2,w3
past-end           fails,fails,fails          fast 2,daemon_timeout,$TMO  r1,r2,w3
zero-length        fails,fails,fails          fast 2,daemon_timeout,$TMO  r1,r2,w3
overlong           fails,fails,fails          fast 2,daemon_timeout,$TMO  r1,r2,w3
unknown-id         pending,pending,pending    fast 2,daemon_timeout,$TMO  r1,r2,w3
duplicate-final    succeeds,succeeds,succeeds fast 2,daemon_timeout,$TMO  r1,r2,w3
truncated          pending,pending,pending    fast 2,daemon_timeout,$TMO  r1,r2,w3
garbage            fails,fails,fails          fast 2,daemon_timeout,$TMO  r1,r2,w3
reserved           fails,fails,fails          fast 2,daemon_timeout,$TMO  r1,r2,w3
copy-outside-new   fails,fails,fails          fast 2,daemon_timeout,$TMO  r1,r2,w3
extent-block-wrap  fails,fails,fails          fast 2,daemon_timeout,$TMO  r1,r2,w3
extent-sector-wrap fails,fails,fails          fast 2,daemon_timeout,$TMO  r1,r2,w3
copy-wrap          fails,fails,fails,fails    fast 2,daemon_timeout,$TMO  r0,r1,r2,w3
invalidate-wrap    pending,pending,pending    fast 2,daemon_timeout,$TMO  r1,r2,w3
writable-readonly  fails,fails,fails          ro   4,daemon_timeout,$TMO,writable_devs,1  r1,r2,w3
answer-too-long    fails,fails,fails          fast 2,daemon_timeout,$TMO  r1,r2,w3
push-open-limit    pending,pending,pending    fast 2,daemon_timeout,$TMO  r1,r2,w3
push-too-long      pending,pending,pending    fast 2,daemon_timeout,$TMO  r1,r2,w3
push-fill-limit    pending,pending            slow 2,daemon_timeout,$TMO  r1,w3
new-over-busy      fails,succeeds             slow 2,daemon_timeout,$TMO  w1,w2
push-new-over-busy succeeds,succeeds          slow 2,daemon_timeout,$TMO  r1,w3
open-msgs-limit    $OPEN_WANT fast 2,daemon_timeout,120 $OPEN_IO
EOF

# A daemon that dies with answers open: the kernel drops them and gives
# their room back.  The first daemon leaves 64 answers of 255 messages open
# (the whole room; the 65th read is refused) and dies.  The second answers
# the 64 reads sent to it again, then fills the whole room again with 64
# new open answers (blocks 65-129): one message's room kept from the first
# would have it refuse one of those 64.
step "a daemon dying with 64 open answers leaves their room to the next"
DLOG=/tmp/daemon-die.log
: >$DLOG
: >$LOG
rm -f /tmp/io.*
dmu_create h hk-open-die 8 "2 daemon_timeout 120" "$LOOP"
daemon_start $DLOG --key hk-open-die --mode hostile --hostile open-msgs-limit --die-open \
  --blocks 0:65
for x in $(echo "$OPEN_IO" | tr , ' '); do io_bg r "${x#r}"; done
wait_until 120 "open-die: the daemon never sent its open answers" \
  grep -q "event=hostile .*died_open=1.* ok=1\$" $DLOG
wait "$DAEMON_PID" 2>/dev/null
expect_eq "open-die: the first daemon's end" 137 $?
# The last of the 65 requests to arrive found no room; its read failed.
refused=$(logged_fates $DLOG | sed -n 's/:fails$//p')
[ -n "$refused" ] || { cat $DLOG; fail "open-die: the first daemon named no refused request"; }
wait_until 60 "open-die: the refused read of block $refused" test -s "/tmp/io.$refused"
read -r rc ms <"/tmp/io.$refused"
[ "$rc" != 0 ] || { cat $DLOG; fail "open-die: block $refused, refused for want of room, was read"; }
bad0=$(dmu_stat h bad)
daemon_start $LOG --key hk-open-die --mode hostile --hostile open-msgs-limit --blocks 65:65 \
  --bind-wait-ms 5000
t0=$(now_ms)
i=0
while [ $i -le 64 ]; do
  if [ $i != "$refused" ]; then
    wait_until 180 "open-die: the read of block $i hangs" test -s "/tmp/io.$i"
    read -r rc ms <"/tmp/io.$i"
    [ "$rc" = 0 ] || { cat "/tmp/io.$i.err" $LOG; fail "open-die: block $i, answered by the next daemon, failed"; }
  fi
  i=$((i + 1))
done
echo "open-die: the 64 answered again after $(($(now_ms) - t0)) ms"
expect_eq "open-die: bad messages for the 64 answered again" "$bad0" "$(dmu_stat h bad)"
expect_ge "open-die: requests sent again" 64 "$(dmu_stat h resent)"
for x in $(echo "$OPEN_IO" | tr , ' '); do io_bg r $((${x#r} + 65)); done
i=65
while [ $i -le 129 ]; do
  wait_until 180 "open-die: the read of block $i hangs" test -s "/tmp/io.$i"
  i=$((i + 1))
done
# The daemon logs the fates after its FINALs, which end the reads.
wait_until 60 "open-die: the next daemon logged no fates" grep -q "event=hostile .* ok=[01]\$" $LOG
FATES=
i=65
while [ $i -le 129 ]; do
  check_fate open-msgs-limit $i
  i=$((i + 1))
done
expect_eq "open-die: fates in the room given back" "$OPEN_WANT" "$(fates_sorted)"
daemon_stop $LOG
expect_eq "open-die: broken promises" 0 "$(daemon_value $LOG counters hostile_broken)"
timeout 60 dmsetup remove h || fail "open-die: dmsetup remove"

# A push opened before a reload and closed after it: each message was
# valid against the table it met, but the NEW extent on the last block is
# not against the new one (read-only; or shorter, without that block).  The
# kernel must check the whole push again at FINAL, refuse it, and never
# zero-fill that block of the device (random data put there first).
LAST=$((SZ / 8 - 1))
for how in readonly shorter; do
  step "a push across a $how reload is checked again at its FINAL"
  : >$LOG
  rm -f /tmp/gate
  dd if=/dev/urandom of="$LOOP" bs=4096 seek=$LAST count=1 oflag=direct conv=notrunc status=none
  before=$(block_md5 "$LOOP" $LAST)
  dmu_create h "hk-reload-$how" 8 "2 daemon_timeout $TMO" "$LOOP"
  daemon_start $LOG --key "hk-reload-$how" --mode hostile --hostile push-across-reload \
    --blocks 0:4 --gate /tmp/gate
  read_block /dev/mapper/h 4096 1 || fail "$how: the read the push rides on failed"
  wait_until 30 "$how: the daemon never opened its push" grep -q "event=gate_wait" $LOG
  case $how in
    readonly) echo "0 $SZ userspace hk-reload-$how 8 1 $LOOP 2 daemon_timeout $TMO" |
      dmsetup reload --readonly h || fail "reload --readonly" ;;
    shorter) echo "0 $((SZ - 16)) userspace hk-reload-$how 8 1 $LOOP 2 daemon_timeout $TMO" |
      dmsetup reload h || fail "reload shorter" ;;
  esac
  dmsetup resume h || fail "$how: resume"
  bad0=$(dmu_stat h bad)
  touch /tmp/gate
  wait_until 30 "$how: the daemon never sent its FINAL" grep -q "event=hostile " $LOG
  grep "event=hostile " $LOG
  expect_eq "$how: bad messages counted for the FINAL" $((bad0 + 1)) "$(dmu_stat h bad)"
  case $how in
    readonly) why="NEW extent while the table is read-only" ;;
    shorter) why="EXTENT beyond the end of the target" ;;
  esac
  dmesg | tail -5 | grep -q "message 0 of the answer to id .*checked again at its FINAL: $why" ||
    { dmesg | tail -5; fail "$how: the refusal did not name the push's NEW extent ($why)"; }
  read_block /dev/mapper/h 4096 100 || fail "$how: a read after the refused push failed"
  daemon_stop $LOG
  expect_eq "$how: answers with the promised write() result" 1 \
    "$(daemon_value $LOG counters hostile_as_promised)"
  expect_eq "$how: broken promises" 0 "$(daemon_value $LOG counters hostile_broken)"
  # Removal waits for every fill: a wrongly accepted push has landed by now.
  timeout 60 dmsetup remove h || fail "$how: dmsetup remove"
  expect_eq "$how: the last block of the data device" "$before" "$(block_md5 "$LOOP" $LAST)"
done

step "push flood: 256-extent pushes as fast as the daemon can, max_extents 1024"
: >$LOG
dmu_create f flood 8 "4 daemon_timeout 10 max_extents 1024" "$LOOP"
sync
echo 3 >/proc/sys/vm/drop_caches
mem0=$(mem_avail_kb)
ext0=$(slab_objs dmu_extent)
echo "before the flood: MemAvailable=${mem0} kB dmu_extent=$ext0"
daemon_start $LOG --key flood --mode hostile --hostile push-flood --blocks 0:1 --flood-ms 8000
# The guest's I/O goes on during the flood (identity map: the device's bytes).
i=0
while ! grep -q "event=flood " $LOG; do
  blk=$(((i * 37) % 4000))
  [ "$(block_md5 /dev/mapper/f $blk)" = "$(block_md5 "$LOOP" $blk)" ] ||
    fail "flood: block $blk reads other data than the device has"
  i=$((i + 1))
  [ $i -lt 20000 ] || fail "flood: the daemon never finished"
done
grep "event=flood " $LOG
batches=$(daemon_value $LOG flood batches)
expect_ge "flood: batches pushed" "$FLOOD_MIN_BATCHES" "$batches"
expect_eq "flood: batches refused" 0 "$(daemon_value $LOG flood refused)"
expect_ge "flood: reads during the flood" 1 "$i"
ext=$(dmu_stat f extents)
echo "flood: cached extents $ext, pushed $(dmu_stat f pushed), evicted $(dmu_stat f evicted)"
expect_ge "flood: extents received" $((batches * 256)) "$(dmu_stat f pushed)"
[ "$ext" -le $((1024 + 256)) ] || fail "flood: $ext cached extents, max_extents 1024 (+ one push's splits)"
expect_gt "flood: extents evicted" 0 "$(dmu_stat f evicted)"
objs=$(slab_objs dmu_extent)
echo 3 >/proc/sys/vm/drop_caches
mem1=$(mem_avail_kb)
echo "after the flood: MemAvailable=${mem1} kB dmu_extent=$objs"
[ "$objs" -le $((ext0 + 1024 + 256 + 64)) ] || fail "flood: $objs dmu_extent objects for <= 1280 extents"
[ $((mem0 - mem1)) -lt 32768 ] || fail "flood: MemAvailable fell by $((mem0 - mem1)) kB"
# I/O still works: write a block, read it back through the target and below.
dd if=/dev/urandom of=/tmp/blk bs=4096 count=1 status=none
dd if=/tmp/blk of=/dev/mapper/f bs=4096 seek=77 count=1 oflag=direct conv=notrunc status=none ||
  fail "flood: write after the flood"
[ "$(block_md5 /dev/mapper/f 77)" = "$(md5sum </tmp/blk)" ] ||
  fail "flood: read back through the target differs"
[ "$(block_md5 "$LOOP" 77)" = "$(md5sum </tmp/blk)" ] ||
  fail "flood: the data device does not have the written block"
daemon_stop $LOG
expect_eq "flood: bad messages" 0 "$(dmu_stat f bad)"
timeout 60 dmsetup remove f || fail "dmsetup remove f"

# error_device KEY ARGS...: device "e" over $LOOP, served by an error-mode
# daemon with ARGS; error_device_remove undoes it.
error_device() {
  _key=$1
  shift
  : >$LOG
  dmu_create e "$_key" 8 "" "$LOOP"
  daemon_start $LOG --key "$_key" --mode error "$@"
}
error_device_remove() {
  daemon_stop $LOG
  dmsetup remove e || fail "dmsetup remove e"
}

step "error mode: COMPLETE with ENOSPC reaches the reader, only in the range"
error_device err1 --blocks 10:5 --errno 28
if read_block /dev/mapper/e 4096 12 2>/tmp/dd.err; then fail "read in the error range succeeded"; fi
cat /tmp/dd.err
grep -q "No space left on device" /tmp/dd.err || fail "the daemon's errno (ENOSPC) did not reach the reader"
read_block /dev/mapper/e 4096 20 || fail "read outside the error range failed"
read_block /dev/mapper/e 4096 9 || fail "read right before the error range failed"
error_device_remove

step "a read that joined a write's MAP asks again when the daemon fails the write"
# The daemon fails write MAPs of block 40 with ENOSPC (a full image) and
# serves reads; it answers only once /tmp/gate40 exists, so a read of block
# 40 sent meanwhile joins the write's pending MAP.  The write's error is not
# the read's: the read must ask on its own and get the block's data.
rm -f /tmp/gate40
error_device err2 --blocks 40:1 --errno 28 --error-writes-only --gate /tmp/gate40
dd if=/dev/urandom of=/tmp/w40 bs=4096 count=1 status=none
dd if=/tmp/w40 of=/dev/mapper/e bs=4096 seek=40 count=1 oflag=direct conv=notrunc status=none \
  2>/tmp/w40.err &
wpid=$!
wait_until 60 "join: the write's MAP never reached the daemon" grep -q "event=gate_wait" $LOG
r0=$(dmu_stat e requests)
dd if=/dev/mapper/e of=/tmp/r40 bs=4096 skip=40 count=1 iflag=direct status=none 2>/tmp/r40.err &
rpid=$!
# dm calls map() in the submitter's context: once dd sleeps waiting for
# its read (state D, twice in a row), map() has parked the bio.
waits_for_io() { [ "$(awk '{print $3}' /proc/$rpid/stat 2>/dev/null)" = D ]; }
read_parked() { waits_for_io && sleep 0.3 && waits_for_io; }
wait_until 60 "join: the read never reached the target" read_parked
expect_eq "join: requests after the read (it joined the write's MAP)" "$r0" "$(dmu_stat e requests)"
touch /tmp/gate40
if wait $wpid; then fail "join: the write the daemon failed succeeded"; fi
grep -q "No space left on device" /tmp/w40.err || { cat /tmp/w40.err; fail "join: the write did not fail with ENOSPC"; }
wait $rpid || { cat /tmp/r40.err; fail "join: the read failed with the write's error"; }
expect_eq "join: the read's data" "$(block_md5 "$LOOP" 40)" "$(md5sum </tmp/r40)"
expect_eq "join: requests after (the read asked once on its own)" $((r0 + 1)) "$(dmu_stat e requests)"
error_device_remove

step "an errno that means more to the block layer (EREMOTEIO) reaches the reader as EIO"
# -EREMOTEIO is BLK_STS_TARGET, on which dm core turns discards off; a
# daemon's COMPLETE may only fail the I/O.
error_device err3 --blocks 10:5 --errno 121
if read_block /dev/mapper/e 4096 12 2>/tmp/dd.err; then fail "EREMOTEIO: read in the error range succeeded"; fi
grep -q "Input/output error" /tmp/dd.err || { cat /tmp/dd.err; fail "EREMOTEIO: the reader did not get EIO"; }
error_device_remove

step "no oops or warning, slabs back to baseline, module unloads"
check_dmesg
after=$(dmu_slabs)
echo "slab after: $after"
expect_eq "active objects of the module's slab caches" "$base" "$after"
dmsetup remove slow || fail "dmsetup remove slow"
losetup -d "$LOOP" "$LOOP2"
rmmod dm_userspace || fail "rmmod dm_userspace"
grep -q '^dm_userspace ' /proc/modules && fail "dm_userspace still loaded"
save_results kmod-hostile $LOG
step "ok"
