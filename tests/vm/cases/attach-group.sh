#!/bin/sh
# One mapping process serves a group of devices (dmu attach --group, the
# shape of a Xen domain's disks): two images (qcow2, vmdk) attached into group
# g1 are served by one supervisor and one mapping process; fio writes and
# verifies on both while that process is killed -9 (the supervisor restarts
# it; no I/O error, data verifies); a third image joins the running group
# (the same process serves it) and leaves it again with dmu detach while the
# others keep being served; a member whose dm device is removed under it is
# released alone (b keeps its process); one released with uncommitted
# allocations is detached once rebound (commit, not refusal); a group's
# mapping process whose supervisor is killed -9 hands its members over to a
# new supervised process; when the last member is detached the group's
# processes exit.
# qemu-img check finds every image clean afterwards and the images hold
# what the devices showed.
# vm: kernels=6.1,6.12 timeout=900 mem=1024 disks=2G boot=attach-long
. /src/tests/kmod/vm-lib.sh
. /src/tests/vm/lib/guest/attach-lib.sh
export DMU_TEST_SEAMS=1   # inherited by the group processes: see ge's step

# group_procs G: pids of processes running `dmu serve --group G`.
group_procs() {
  for _c in /proc/[0-9]*/cmdline; do
    { tr '\0' ' ' <"$_c"; } 2>/dev/null | grep -q "^dmu serve --group $1 " && echo "${_c%/cmdline}" | sed 's|/proc/||'
  done
}
# remove_under_group NAME G: removes NAME's dm device while group G's process
# serves it, and waits until the process has let NAME go.
remove_under_group() {
  dmsetup remove "$1" || fail "dmsetup remove $1"
  wait_log "$2" "$1: released after a channel error"
}
# wait_log G TEXT: until group G's log holds TEXT (10 s).
wait_log() {
  _i=0
  until grep -q "$2" "/run/dmu/$1.group.log"; do
    _i=$((_i + 1)); [ $_i -lt 100 ] || { cat "/run/dmu/$1.group.log"; fail "no '$2' in $1's log"; }
    sleep 0.1
  done
}
# lock_held NAME: some process holds NAME's lock (serves or sets it up).
lock_held() { [ -e "/run/dmu/$1.lock" ] && ! flock -n "/run/dmu/$1.lock" true; }
# served_by NAME: the mapping process pid in NAME's record.
served_by() { record_field "$1" pid; }

step "three images; a and b attached into group g1"
data_fs
cd /data || fail "cd /data"
qemu-img create -q -f qcow2 a.qcow2 128M || fail "qemu-img create a"
qemu-img create -q -f vmdk b.vmdk 128M || fail "qemu-img create b"
qemu-img create -q -f qcow2 c.qcow2 64M || fail "qemu-img create c"
out=$(dmu attach --group g1 --name ga /data/a.qcow2) || fail "dmu attach --group g1 a"
expect_eq "attach output" /dev/mapper/ga "$out"
out=$(dmu attach --group g1 --name gb /data/b.vmdk) || fail "dmu attach --group g1 b"
expect_eq "attach output" /dev/mapper/gb "$out"
grep -q '"group": "g1"' /run/dmu/ga.json || fail "ga's record names no group"
expect_eq "one mapping process for both" "$(served_by ga)" "$(served_by gb)"
expect_eq "processes of group g1 (supervisor + mapping process)" 2 "$(group_procs g1 | wc -l)"
serving ga && fail "ga has a process of its own"
sup=$(record_field ga supervisor)
[ -n "$sup" ] && [ "$sup" != 0 ] || fail "no supervisor recorded"
dmu list

step "attach again: as attached succeeds and changes nothing; anything else is refused"
out=$(dmu attach --group g1 --name ga -f qcow2 /data/a.qcow2 2>/tmp/again.err) || fail "attach ga again"
expect_eq "attach again output" /dev/mapper/ga "$out"
grep -q "served already" /tmp/again.err || fail "attach again did not say so: $(cat /tmp/again.err)"
expect_eq "same mapping process after attach again" "$(served_by gb)" "$(served_by ga)"
# refused_again WHAT ARGS...: dmu attach ARGS of ga fails and names WHAT.
refused_again() {
  _what=$1; shift
  if dmu attach --name ga "$@" 2>/tmp/again.err; then fail "attach ga $* succeeded"; fi
  grep -q "$_what" /tmp/again.err || fail "attach ga $*: $(cat /tmp/again.err)"
}
refused_again "read-write" --group g1 --read-only /data/a.qcow2
refused_again "not in group g2" --group g2 /data/a.qcow2
refused_again "not vmdk" --group g1 -f vmdk /data/a.qcow2
refused_again "not /data/c.qcow2" --group g1 /data/c.qcow2
expect_eq "ga still served by the group" "$(served_by gb)" "$(served_by ga)"
# Two attaches of one new disk at once (block-dmu's fallback racing the Xen
# helper): both succeed, one sets it up, the other finds it served.  The
# first pauses with its record written (test seam) so the second comes while
# it holds the name; before, the second failed ("another dmu process serves
# or sets up").
qemu-img create -q -f qcow2 /data/x.qcow2 64M || fail "qemu-img create x"
DMU_TEST_ATTACH_DELAY_MS=1000 dmu attach --group g1 --name gx /data/x.qcow2 >/tmp/x1.out 2>/tmp/x1.err &
x1=$!
i=0
until [ -e /run/dmu/gx.json ]; do i=$((i + 1)); [ $i -lt 100 ] || fail "gx's record never appeared"; sleep 0.05; done
dmu attach --group g1 --name gx /data/x.qcow2 >/tmp/x2.out 2>/tmp/x2.err &
x2=$!
wait $x1 || fail "the first of two attaches at once failed: $(cat /tmp/x1.err)"
wait $x2 || fail "the second of two attaches at once failed: $(cat /tmp/x2.err)"
expect_eq "both attaches print the node" "/dev/mapper/gx /dev/mapper/gx" "$(cat /tmp/x1.out) $(cat /tmp/x2.out)"
expect_eq "attaches that found gx served" 1 "$(cat /tmp/x1.err /tmp/x2.err | grep -c 'served already')"
grep -q 'served already' /tmp/x2.err || fail "the second attach did not find gx served"
expect_eq "gx served by the group's process" "$(served_by gb)" "$(served_by gx)"
dmu detach gx || fail "dmu detach gx"

step "a bind slower than the attach's --timeout: it ends near its deadline, the device goes once let go"
# The set-up of the new device is held up 8 s with its lock held (test
# seam, inherited by the processes attach starts).  attach --timeout 4 must
# give up after about 4 s, not wait for the lock up to 10 s more (it once
# did, so block-dmu's attach outlived libxl's 40 s), and leave a detach in
# the background that removes everything once the process lets the device
# go: nobody else would (block-dmu has no record of a failed attach), and
# the image would stay locked.  Once in a group (slowg, its own process)
# and once with a process of its own.
# slow_attach NAME ARGS...: the attach fails within 7 s; NAME goes by itself.
slow_attach() {
  _n=$1; shift
  _t0=$(now_ms)
  if DMU_TEST_SET_UP_DELAY_MS=8000 dmu attach --timeout 4 --name "$_n" "$@" 2>/tmp/slow.err; then
    fail "attach $_n succeeded despite the slow bind"
  fi
  _ms=$(( $(now_ms) - _t0 ))
  echo "attach --timeout 4 of $_n failed after $_ms ms: $(cat /tmp/slow.err)"
  [ "$_ms" -le 7000 ] || fail "attach of $_n took $_ms ms with --timeout 4"
  grep -q "$_n is detached in the background" /tmp/slow.err ||
    fail "attach of $_n did not say what becomes of it: $(cat /tmp/slow.err)"
  [ -e "/dev/mapper/$_n" ] || fail "$_n went before its process let it go"
  if [ -n "${AGAIN:-}" ]; then
    # Attached again at once (a user retrying), while the late process is
    # still setting up: it writes its pid into the record before it stops,
    # which looked served, and the background detach then removed the
    # device this attach had reported.  It must wait for the detach and
    # attach anew.
    dmu attach --name "$_n" "$@" >/dev/null 2>/tmp/again.err || fail "attach $_n again: $(cat /tmp/again.err)"
    grep -q "served already" /tmp/again.err && fail "attach $_n again took the going device as served"
    sleep 2
    serving "$_n" || fail "$_n, attached again, has no mapping process"
    [ "$(record_field "$_n" pid)" != 0 ] || fail "$_n, attached again, is not served"
    dmu detach "$_n" || fail "dmu detach $_n"
  fi
  _i=0
  until [ ! -e "/dev/mapper/$_n" ] && [ ! -e "/run/dmu/$_n.json" ]; do
    _i=$((_i + 1)); [ $_i -lt 300 ] || fail "$_n was not detached in the background: $(ls /run/dmu)"
    sleep 0.1
  done
  echo "$_n detached $(( $(now_ms) - _t0 )) ms after the attach started"
  [ ! -e "/run/dmu/$_n.leave" ] || fail "$_n's leave marker is left"
  eval "_img=\${$#}"
  qemu-io -f qcow2 -c 'write -z 0 512' "$_img" >/dev/null || fail "$_img is still locked (or damaged)"
  qemu-img check -q "$_img" || fail "qemu-img check $_img"
}
qemu-img create -q -f qcow2 /data/y.qcow2 64M || fail "qemu-img create y"
slow_attach gy --group slowg /data/y.qcow2
i=0
while [ -n "$(group_procs slowg)" ]; do i=$((i + 1)); [ $i -lt 100 ] || fail "group slowg's processes outlived its last member"; sleep 0.1; done
AGAIN=1 slow_attach sy /data/y.qcow2
expect_eq "ga still served by the group" "$(served_by gb)" "$(served_by ga)"

step "fio with verify on both while the group's mapping process is killed -9"
for d in ga gb; do
  depth=4
  [ $d = gb ] && depth=8   # writes meeting in a grain being allocated wait (map service)
  fio --name=$d --filename=/dev/mapper/$d --rw=randwrite --bsrange=4k-64k --size=96M \
    --direct=1 --ioengine=libaio --iodepth=$depth --verify=crc32c --verify_fatal=1 --do_verify=1 \
    --fsync=64 >/tmp/fio-$d.log 2>&1 &
  eval "fio_$d=\$!"
done
sleep 3
pid=$(served_by ga)
kill -9 "$pid" || fail "kill -9 $pid"
replaced_within_a_second "group process, kill -9" ga "$pid"
ms=$(wait_replaced gb "$pid") || fail "$ms"
expect_eq "still one mapping process for both" "$(served_by ga)" "$(served_by gb)"
expect_eq "same supervisor" "$sup" "$(record_field gb supervisor)"

step "c joins the running group and leaves it while fio runs on a and b"
before=$(served_by ga)
out=$(dmu attach --group g1 --name gc /data/c.qcow2) || fail "dmu attach --group g1 c"
expect_eq "attach output" /dev/mapper/gc "$out"
expect_eq "c is served by the group's process" "$before" "$(served_by gc)"
expect_eq "processes of group g1" 2 "$(group_procs g1 | wc -l)"
head -c 1048576 /dev/urandom >/tmp/c.bin
dd if=/tmp/c.bin of=/dev/mapper/gc bs=1M seek=5 oflag=direct conv=fsync status=none || fail "write gc"
dmu detach gc || fail "dmu detach gc"
[ ! -e /dev/mapper/gc ] || fail "/dev/mapper/gc still exists"
[ ! -e /run/dmu/gc.json ] || fail "gc's record is left"
expect_eq "a and b still served by the same process" "$before" "$(served_by ga)"
kill -0 "$before" || fail "the group's process exited when c left"
grep -q "gc: left group g1" /run/dmu/g1.group.log || fail "the group's log does not show c leaving"
qemu-img check c.qcow2 || fail "qemu-img check c.qcow2"
qemu-img convert -O raw c.qcow2 /data/c.raw || fail "convert c"
dd if=/data/c.raw bs=1M skip=5 count=1 status=none | cmp - /tmp/c.bin || fail "c.qcow2 lacks the write"
# A member attached again under another image is refused (the step above
# covers the rest), also while fio runs on it.
dmu attach --group g1 --name ga /data/c.qcow2 >/dev/null 2>&1 && fail "attached c.qcow2 as ga"

for d in ga gb; do
  eval "wait \$fio_$d" || { cat /tmp/fio-$d.log; fail "fio on $d failed"; }
  grep -q "err= 0" /tmp/fio-$d.log || { cat /tmp/fio-$d.log; fail "fio on $d saw I/O errors"; }
  expect_eq "$d kernel timeouts" 0 "$(dmu_stat $d timeouts)"
  echo "$d: $(dmu stats $d --output=json | tr -d '\n ' | grep -o '"waited":[0-9]*') (MAPs that waited for a DONE)"
done

step "a's dm device removed under the group: a is released alone, b keeps its process"
dd if=/dev/mapper/ga of=/data/ga.raw bs=1M iflag=direct status=none || fail "read ga"
dd if=/dev/mapper/gb of=/data/gb.raw bs=1M iflag=direct status=none || fail "read gb"
# The channel of a target that is gone fails (ENODEV): only that member is
# let go and bound again with a backoff while it stays in the group; before,
# the whole mapping process exited and the supervisor restarted it.
remove_under_group ga g1
dd if=/data/gb.raw of=/dev/mapper/gb bs=1M count=4 oflag=direct conv=fsync,notrunc status=none ||
  fail "write gb after ga's removal"
expect_eq "b still served by the same process" "$before" "$(served_by gb)"
kill -0 "$before" || fail "the group's process exited when ga's device went"
sleep 2   # at least one rebind attempt (1 s backoff), which must fail and not report to an attach
grep -q "ga: binding again in" /run/dmu/g1.group.log || fail "no rebind attempt for ga"
[ ! -e /run/dmu/ga.bind-error ] || fail "a rebind wrote ga.bind-error"

step "a one-member group whose device is removed, then detached, ends its processes"
out=$(dmu attach --group g2 --name gd /data/c.qcow2) || fail "dmu attach --group g2 c"
expect_eq "processes of group g2" 2 "$(group_procs g2 | wc -l)"
remove_under_group gd g2
# gd waits for its rebind; detach of a member nobody serves sends no SIGHUP,
# so the process itself must notice that nothing is left (at its next try).
dmu detach gd || fail "dmu detach gd"
# Bounded by the clock: one group_procs pass reads every process's cmdline
# and can take seconds under TCG.
t0=$(cut -d. -f1 /proc/uptime)
while [ -n "$(group_procs g2)" ]; do
  [ $(($(cut -d. -f1 /proc/uptime) - t0)) -lt 60 ] ||
    { cat /run/dmu/g2.group.log; fail "group g2's processes did not exit within 60 s of the detach"; }
  sleep 0.5
done
qemu-img check c.qcow2 || fail "qemu-img check c.qcow2 after gd"

step "a member released with allocations not yet committed is detached once its group binds it again"
# e's channel fails (the test seam; DMU_TEST_SEAMS is set above) while its
# device stays, with the kernel's allocation record of an unflushed write:
# the group releases e alone.  While e's image is away its rebinds fail;
# detach must wait for the next one (and have it commit) instead of refusing.
# The image moves before the release: the served process holds it open.
qemu-img create -q -f qcow2 e.qcow2 64M || fail "qemu-img create e"
out=$(dmu attach --group g1 --name ge /data/e.qcow2) || fail "dmu attach --group g1 e"
head -c 1048576 /dev/urandom >/tmp/e.bin
dd if=/tmp/e.bin of=/dev/mapper/ge bs=1M seek=3 oflag=direct status=none || fail "write ge"
mv e.qcow2 e.away || fail "mv e.qcow2"
: >/run/dmu/ge.test-channel-error
wait_log g1 "ge: released after a channel error"
wait_log g1 "ge: binding again in"
pending=$(dmsetup status ge | grep -o 'unpublished=[0-9]*' | cut -d= -f2)
echo "ge: unpublished=$pending while no process serves it"
[ "${pending:-0}" -gt 0 ] || fail "no uncommitted allocation left to test with"
expect_eq "ge's recorded pid once released" 0 "$(served_by ge)"
dmu detach ge >/tmp/detach-ge.log 2>&1 &
detach=$!
sleep 1
mv e.away e.qcow2 || fail "mv e.away"
wait $detach || { cat /tmp/detach-ge.log /run/dmu/g1.group.log; fail "dmu detach ge"; }
[ ! -e /dev/mapper/ge ] || fail "/dev/mapper/ge still exists"
# Through a rebind, not around it: e served again, then let go by detach.
expect_eq "times ge was bound by g1" 2 "$(grep -c 'ge: served by group g1' /run/dmu/g1.group.log)"
sed -n '/ge: released after/,$p' /run/dmu/g1.group.log | grep -q "ge: left group g1" ||
  fail "ge did not leave g1 through its process"
expect_eq "b still served by the same process" "$before" "$(served_by gb)"
qemu-img check e.qcow2 || fail "qemu-img check e.qcow2"
qemu-img convert -O raw e.qcow2 /data/e.raw || fail "convert e"
dd if=/data/e.raw bs=1M skip=3 count=1 status=none | cmp - /tmp/e.bin || fail "e.qcow2 lacks the write detach committed"

step "kill -9 of the group's supervisor: the members go over to a new supervised process"
# Before, the orphaned process kept b's lock while the group's lock was free:
# the next attach --group started a second supervisor and process beside it.
kill -9 "$sup" || fail "kill -9 supervisor $sup"
wait_log g1 "supervisor pid $sup is gone; handing the members over"
ms=$(wait_replaced gb "$before") || fail "$ms"
kill -0 "$before" 2>/dev/null && sleep 2
kill -0 "$before" 2>/dev/null && fail "the orphaned mapping process $before did not exit"
before=$(served_by gb)
new_sup=$(record_field gb supervisor)
[ -n "$new_sup" ] && [ "$new_sup" != 0 ] && [ "$new_sup" != "$sup" ] || fail "no new supervisor for gb ($new_sup)"
expect_eq "processes of group g1 (supervisor + mapping process)" 2 "$(group_procs g1 | wc -l)"
dd if=/data/gb.raw of=/dev/mapper/gb bs=1M count=4 oflag=direct conv=fsync,notrunc status=none ||
  fail "write gb after the hand-over"
out=$(dmu attach --group g1 --name gf /data/c.qcow2) || fail "dmu attach --group g1 c after the hand-over"
expect_eq "gf served by the group's process" "$before" "$(served_by gf)"
expect_eq "processes of group g1 after gf joined" 2 "$(group_procs g1 | wc -l)"
dmu detach gf || fail "dmu detach gf"
expect_eq "b still served by the same process" "$before" "$(served_by gb)"

step "SIGTERM of the group while a member's channel fails: it is bound again and its writes flushed"
# The group stops (the supervisor forwards SIGTERM) with b's writes still in
# the page cache: the process flushes every member before it exits.  b's
# channel fails once the stop began (test seam): b is released with its
# writeback waiting in the kernel, and must be bound again and served to the
# end of that flush.  Before, it was never bound again: its flush waited out
# the 30 s flush limit (and the kernel's daemon_timeout failed the writes).
echo 400000000 >/proc/sys/vm/dirty_bytes
echo 300000000 >/proc/sys/vm/dirty_background_bytes
echo 360000 >/proc/sys/vm/dirty_expire_centisecs
head -c $((48 * 1048576)) /dev/urandom >/tmp/h.bin
dd if=/tmp/h.bin of=/data/gb.raw bs=1M seek=64 conv=notrunc status=none || fail "update gb.raw"
dd if=/tmp/h.bin of=/dev/mapper/gb bs=1M seek=64 status=none || fail "buffered write to gb"
echo "dirty before the stop: $(sed -n 's/^Dirty: *//p' /proc/meminfo)"
: >/run/dmu/gb.test-channel-error-on-stop
t0=$(now_ms)
kill -TERM "$new_sup" || fail "kill -TERM $new_sup"
while kill -0 "$new_sup" 2>/dev/null || [ -n "$(group_procs g1)" ]; do
  [ $(( $(now_ms) - t0 )) -lt 60000 ] || fail "group g1 did not stop within 60 s"
  sleep 0.1
done
stop_ms=$(( $(now_ms) - t0 ))
echo "group g1 stopped in $stop_ms ms"
sed -n '/stopping: flushing/,$p' /run/dmu/g1.group.log >/tmp/stop.log
grep -q "gb: error: test seam: channel error injected" /tmp/stop.log || { cat /run/dmu/g1.group.log; fail "the seam did not fire during the stop"; }
grep -q "gb: served by group g1" /tmp/stop.log || { cat /tmp/stop.log; fail "gb was not bound again while stopping"; }
grep -q "flush before exit did not finish" /tmp/stop.log && { cat /tmp/stop.log; fail "a stop flush did not finish"; }
[ "$stop_ms" -lt 25000 ] || { cat /tmp/stop.log; fail "the stop took $stop_ms ms: gb's flush waited for the limit"; }
expect_eq "gb kernel timeouts" 0 "$(dmu_stat gb timeouts)"
expect_eq "gb uncommitted allocations after the stop" 0 \
  "$(dmsetup status gb | grep -o 'unpublished=[0-9]*' | cut -d= -f2)"
echo 20 >/proc/sys/vm/dirty_ratio   # back to the kernel's defaults
echo 10 >/proc/sys/vm/dirty_background_ratio
echo 3000 >/proc/sys/vm/dirty_expire_centisecs
# Served again by a new group process (dmu attach rebinds the whole group).
out=$(dmu attach --group g1 --name gb /data/b.vmdk) || fail "dmu attach gb after the stop"
before=$(served_by gb)
kill -0 "$before" || fail "gb is not served after the stop"

step "detach a, then b: the group's processes end with the last member"
dmu detach ga || fail "dmu detach ga"
expect_eq "b still served by the same process" "$before" "$(served_by gb)"
dmu detach gb || fail "dmu detach gb"
i=0
while [ -n "$(group_procs g1)" ]; do
  i=$((i + 1)); [ $i -lt 100 ] || fail "group g1's processes did not exit"; sleep 0.1
done
[ -z "$(ls /run/dmu/*.json 2>/dev/null)" ] || fail "records left: $(ls /run/dmu)"
qemu-img check a.qcow2 || fail "qemu-img check a.qcow2"
qemu-img check b.vmdk || fail "qemu-img check b.vmdk"
qemu-img compare -f raw -F qcow2 ga.raw a.qcow2 || fail "a.qcow2 differs from what ga showed"
qemu-img compare -f raw -F vmdk gb.raw b.vmdk || fail "b.vmdk differs from what gb showed"
check_dmesg
