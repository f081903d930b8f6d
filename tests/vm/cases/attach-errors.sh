#!/bin/sh
# dmu attach fails with one line naming the problem, and leaves no loop
# device, dm device, mapping process or /run/dmu record behind, for: a
# missing image, a corrupt image, an image qemu-io holds for writing, a name
# already in use (which keeps working), and an image naming a backing file
# that does not exist.  Detaches of one name queue, and one queued before the
# name was detached and attached again leaves the new device alone; a device
# left by an attach killed before it wrote its record is removed by the next
# attach or detach of the name; with no dm-userspace module, or its control
# device gone, attach says so.  Then the image's file system runs out of space under
# the device: the guest gets errors on the writes that need space, never a
# corrupt image, and once space is freed writes work again.
# vm: kernels=6.1,6.12 timeout=900 mem=1024 disks=1G boot=attach-short
. /src/tests/kmod/vm-lib.sh
. /src/tests/vm/lib/guest/attach-lib.sh

# refused NAME IMAGE WHAT: dmu attach --name NAME IMAGE must fail with one
# line matching WHAT and leave nothing of NAME behind (its log may stay: the
# message names it).
refused() {
  _loops=$(losetup -a | wc -l)
  _out=$(dmu attach --name "$1" "$2" 2>&1) && fail "attach of $2 succeeded"
  echo "refused: $_out"
  expect_eq "lines of the refusal of $2" 1 "$(printf '%s\n' "$_out" | wc -l)"
  printf '%s\n' "$_out" | grep -q -- "$3" || fail "the refusal of $2 does not say '$3'"
  [ ! -e "/dev/mapper/$1" ] || fail "/dev/mapper/$1 left behind"
  dmsetup info "$1" >/dev/null 2>&1 && fail "dm device $1 left behind"
  for _s in json lock stats.json scratch; do
    [ ! -e "/run/dmu/$1.$_s" ] || fail "/run/dmu/$1.$_s left behind"
  done
  serving "$1" && fail "a mapping process of $1 left behind"
  expect_eq "loop devices after the refusal of $2" "$_loops" "$(losetup -a | wc -l)"
}

step "images on ext4"
data_fs
cd /data || fail "cd /data"

step "a missing image"
refused m1 /data/nope.qcow2 "nope.qcow2"

step "no dm-userspace module, then the module without its control device"
qemu-img create -q -f qcow2 /data/fine.qcow2 16M || fail "create fine.qcow2"
if [ "${DMU_KMOD:-load}" = load ]; then
  rmmod dm_userspace || fail "rmmod dm_userspace"
  # Nor may the kernel load it on demand (dm core asks modprobe for a
  # target it does not know).
  modprobe_was=$(cat /proc/sys/kernel/modprobe)
  echo /bin/false >/proc/sys/kernel/modprobe
  refused m7 /data/fine.qcow2 "/dev/dm-userspace: no such control device: the dm-userspace module is not loaded"
  # Refused before anything was set up: no mapping process ever logged.
  [ ! -e /run/dmu/m7.log ] || fail "attach set m7 up before it found the module missing"
  echo "$modprobe_was" >/proc/sys/kernel/modprobe
  . /usr/lib/dmu-test/init-lib.sh
  load_dmu || fail "load dm-userspace again"
fi
mv /dev/dm-userspace /dev/dm-userspace.away || fail "move the control device away"
refused m7 /data/fine.qcow2 "/dev/dm-userspace: no such control device, though the dm-userspace module is loaded"
[ ! -e /run/dmu/m7.log ] || fail "attach set m7 up before it found the control device missing"
mv /dev/dm-userspace.away /dev/dm-userspace || fail "put the control device back"
dmu attach --name m7 /data/fine.qcow2 >/dev/null || fail "attach once the control device is back"
dmu detach m7 || fail "dmu detach m7"

step "a corrupt image (an L1 table offset that is not cluster aligned)"
qemu-img create -q -f qcow2 bad.qcow2 64M || fail "create bad.qcow2"
printf '\000\000\000\000\000\003\000\001' | dd of=bad.qcow2 bs=1 seek=40 conv=notrunc status=none
refused m2 /data/bad.qcow2 "bad.qcow2"

step "an image whose backing file is missing"
qemu-img create -q -f qcow2 -u -b /data/gone.qcow2 -F qcow2 orphan.qcow2 64M || fail "create orphan"
refused m3 /data/orphan.qcow2 "gone.qcow2"

step "a raw image is attached writable only with its format named (QEMU's probing rule)"
truncate -s 64M plain.img
refused m5 /data/plain.img "probed as raw"
dmu attach --name m5 --read-only /data/plain.img >/dev/null || fail "read-only attach of the probed plain.img"
dmu detach m5 >/dev/null || fail "detach m5 (read-only)"
dmu attach --name m5 -f raw /data/plain.img >/dev/null || fail "attach -f raw plain.img"
# Named raw, the guest may write what it likes, here a qcow2 header naming a
# host file as its backing file: a restarted mapping process serves the
# recorded format, it does not probe again.
qemu-img create -q -f qcow2 -u -b /etc/passwd -F raw /tmp/evil.qcow2 1G || fail "create evil.qcow2"
dd if=/tmp/evil.qcow2 of=/dev/mapper/m5 bs=4096 count=1 oflag=direct conv=notrunc status=none ||
  fail "write a qcow2 header through m5"
qemu-img info -U /data/plain.img | grep -q '^file format: qcow2' || fail "plain.img does not probe as qcow2 now"
pid=$(record_field m5 pid)
kill -9 "$pid"
ms=$(wait_replaced m5 "$pid") || fail "$ms"
expect_eq "m5's size after the restart (sectors)" $((64 * 2048)) "$(blockdev --getsz /dev/mapper/m5)"
cmp -n 4096 /tmp/evil.qcow2 /dev/mapper/m5 || fail "m5 no longer shows the header it was given"
grep -q '"format": "raw"' /run/dmu/m5.json || fail "m5's record no longer says raw"
dmu detach m5 >/dev/null || fail "detach m5"
rm -f plain.img /tmp/evil.qcow2
# An image smaller than a sector: one line, no crash (dmu-xen-helper runs
# attach in its own process).
head -c 100 /dev/zero >tiny.img
for mode in "-f raw" --read-only; do
  # shellcheck disable=SC2086
  out=$(dmu attach --name m6 $mode /data/tiny.img 2>&1) && fail "attach $mode of tiny.img succeeded"
  echo "refused: $out"
  printf '%s\n' "$out" | grep -q "less than one sector" || fail "attach $mode of tiny.img: '$out'"
  [ ! -e /dev/mapper/m6 ] || fail "/dev/mapper/m6 left behind"
done
rm -f tiny.img

step "an image qemu-io holds for writing"
qemu-img create -q -f qcow2 held.qcow2 64M || fail "create held.qcow2"
qemu-io -c "sleep 600000" held.qcow2 >/tmp/qio.log 2>&1 &
QIO=$!
# Held: our probe is refused while qemu-io lives and has not said its open
# failed, twice in a row (a probe and qemu-io's open can refuse each other
# at the same moment, and then qemu-io exits).
held_now() { ! qemu-img info held.qcow2 >/dev/null 2>&1 && kill -0 $QIO 2>/dev/null &&
  ! grep -qiE 'lock|error|fail' /tmp/qio.log; }
i=0
until held_now && sleep 0.2 && held_now; do
  i=$((i + 1))
  if ! kill -0 $QIO 2>/dev/null || grep -qiE 'lock|error|fail' /tmp/qio.log; then
    # Our own qemu-img info probe may have held the image as qemu-io opened it.
    grep -q "lock" /tmp/qio.log || { cat /tmp/qio.log; fail "qemu-io exited"; }
    kill $QIO 2>/dev/null
    wait $QIO 2>/dev/null
    qemu-io -c "sleep 600000" held.qcow2 >/tmp/qio.log 2>&1 &
    QIO=$!
  fi
  [ $i -lt 600 ] || fail "qemu-io never locked held.qcow2"
  sleep 0.1
done
echo "qemu-io holds held.qcow2 after $i rounds"
refused m4 /data/held.qcow2 "lock"
kill $QIO
wait $QIO 2>/dev/null

step "a name already in use"
qemu-img create -q -f qcow2 one.qcow2 64M || fail "create one.qcow2"
qemu-img create -q -f qcow2 two.qcow2 64M || fail "create two.qcow2"
dmu attach --name n1 /data/one.qcow2 >/dev/null || fail "attach one.qcow2"
loops=$(losetup -a | wc -l)
out=$(dmu attach --name n1 /data/two.qcow2 2>&1) && fail "a second image attached as n1"
echo "refused: $out"
expect_eq "lines of the refusal" 1 "$(printf '%s\n' "$out" | wc -l)"
echo "$out" | grep -q "n1" || fail "the refusal does not name n1"
expect_eq "loop devices after the refusal" "$loops" "$(losetup -a | wc -l)"
dd if=/dev/urandom of=/dev/mapper/n1 bs=64k count=4 oflag=direct status=none ||
  fail "n1 stopped working after the refused attach"

step "a device opened between detach's check and its removal stays attached and served"
DMU_TEST_SEAMS=1 DMU_TEST_DETACH_DELAY_MS=4000 dmu detach n1 2>/tmp/detach.err &
DET=$!
sleep 2
exec 3</dev/mapper/n1
wait $DET && fail "detach removed a device that was open"
cat /tmp/detach.err
grep -q "in use" /tmp/detach.err || fail "detach did not say the device is in use"
[ -b /dev/mapper/n1 ] || fail "the open device is gone"
dd if=/dev/mapper/n1 of=/dev/null bs=64k count=4 iflag=direct status=none ||
  fail "the device is not served after the failed detach"
dmu list | grep -q "n1 .*served by" || fail "dmu list does not show n1 served"
exec 3<&-

step "two detaches of one device at once: the second waits for the first, then has nothing to do"
# The first holds NAME's lock in the seam's pause; a second that did not
# wait for it would flush a device nobody serves and remove what the first
# removes (or fail on its lock).
DMU_TEST_SEAMS=1 DMU_TEST_DETACH_DELAY_MS=3000 dmu detach n1 2>/tmp/detach1.err &
DET=$!
sleep 1
t0=$(now_ms)
dmu detach n1 >/tmp/detach2.out 2>&1 || { cat /tmp/detach2.out; fail "the second detach of n1 failed"; }
t1=$(now_ms)
wait $DET || { cat /tmp/detach1.err; fail "the first detach of n1 failed"; }
cat /tmp/detach2.out
grep -q "not attached; nothing to do" /tmp/detach2.out || fail "the second detach did not find n1 gone"
[ $((t1 - t0)) -ge 1000 ] || fail "the second detach did not wait for the first ($((t1 - t0)) ms)"
[ ! -e /dev/mapper/n1 ] || fail "n1 is still there"
[ -z "$(ls /run/dmu | grep '^n1\.')" ] || fail "left in /run/dmu: $(ls /run/dmu | grep '^n1\.')"
qemu-img check -q two.qcow2 || fail "two.qcow2 was touched"

step "a detach queued before n1 went and came back leaves the new n1 alone"
# It notes n1's attach id, then (seam) waits 8 s before it queues; meanwhile
# another detach removes n1 and an attach sets n1 up again.
attach_id() { sed -n 's/.*"attach-id": *"\([0-9a-f]*\)".*/\1/p' "/run/dmu/$1.json"; }
dmu attach --name n1 /data/two.qcow2 >/dev/null || fail "attach two.qcow2 as n1"
old=$(attach_id n1)
[ -n "$old" ] || fail "no attach-id in /run/dmu/n1.json"
DMU_TEST_SEAMS=1 DMU_TEST_DETACH_QUEUE_DELAY_MS=8000 dmu detach n1 >/tmp/detach3.out 2>&1 &
DET=$!
sleep 1
dmu detach n1 >/dev/null || fail "detach n1"
dmu attach --name n1 /data/two.qcow2 >/dev/null || fail "attach two.qcow2 as n1 again"
new=$(attach_id n1)
[ -n "$new" ] && [ "$new" != "$old" ] || fail "the new attach has attach id '$new' (the old one: $old)"
kill -0 $DET 2>/dev/null || fail "test timing: the queued detach ended before n1 was attached again"
wait $DET || { cat /tmp/detach3.out; fail "the queued detach failed"; }
cat /tmp/detach3.out
grep -q "attached again since, left alone" /tmp/detach3.out ||
  fail "the queued detach did not say it left the new n1 alone"
[ -b /dev/mapper/n1 ] || fail "the queued detach removed the new n1"
expect_eq "n1's attach id" "$new" "$(attach_id n1)"
dd if=/dev/mapper/n1 of=/dev/null bs=64k count=4 iflag=direct status=none || fail "the new n1 is not served"
dmu detach n1 >/dev/null || fail "detach the new n1"
qemu-img check -q two.qcow2 || fail "two.qcow2 after the second attach"

step "an attach killed after making its device, before its record: the next attach removes it, failing a read that waits in it"
loops=$(losetup -a | wc -l)
# killed_attach NAME: an attach of two.qcow2 as NAME killed by the seam right
# after it made the dm device, before it wrote the record.
killed_attach() {
  DMU_TEST_SEAMS=1 DMU_TEST_ATTACH_KILL_AFTER_CREATE=1 dmu attach --name "$1" /data/two.qcow2 \
    >/dev/null 2>&1 && fail "the seam did not kill the attach of $1"
  [ -b "/dev/mapper/$1" ] || fail "the killed attach left no device $1 (the step would test nothing)"
  [ ! -e "/run/dmu/$1.json" ] || fail "the killed attach wrote a record for $1 (the step would test nothing)"
}
# read_held NAME: a read of /dev/mapper/NAME in the background, as udev's
# blkid reads every new device; no daemon ever answers it, so it waits (for
# the table's daemon_timeout, 30 s) with the device open.  Returns once the
# read waits in the target (its status counts it pending).
read_held() {
  rm -f /tmp/held.rc
  ( dd if="/dev/mapper/$1" of=/dev/null bs=4k count=1 iflag=direct 2>/tmp/held.err
    echo $? >/tmp/held.rc ) &
  _i=0
  until dmsetup status "$1" | grep -q ' pending=[1-9]'; do
    _i=$((_i + 1))
    [ $_i -lt 200 ] || { cat /tmp/held.rc /tmp/held.err 2>&1; dmsetup status "$1"; fail "the read of $1 is not in flight"; }
    sleep 0.05
  done
}
# read_failed NAME MS: the held read ended with EIO, and the dmu command that
# removed the device took MS ms, well under the 30 s the read would wait.
read_failed() {
  _i=0
  until [ -e /tmp/held.rc ]; do _i=$((_i + 1)); [ $_i -lt 100 ] || fail "the read of $1 still waits"; sleep 0.1; done
  [ "$(cat /tmp/held.rc)" != 0 ] || fail "the read of $1's leftover device succeeded"
  grep -q "Input/output error" /tmp/held.err || { cat /tmp/held.err; fail "the read of $1 did not end with EIO"; }
  [ "$2" -lt 15000 ] || fail "removing $1's leftover device took $2 ms"
}
killed_attach k1
read_held k1
t0=$(now_ms)
dmu attach --name k1 /data/two.qcow2 >/tmp/k1.out 2>&1 || { cat /tmp/k1.out; fail "attach k1 again"; }
read_failed k1 $(($(now_ms) - t0))
cat /tmp/k1.out
grep -q "removed the device an attach killed" /tmp/k1.out ||
  fail "the attach did not say it removed the device left behind"
head -c 262144 /dev/zero | tr '\0' '\245' >/tmp/k1.pat
dd if=/tmp/k1.pat of=/dev/mapper/k1 bs=64k oflag=direct conv=fsync status=none || fail "write to k1"
dmu detach k1 >/dev/null || fail "detach k1"
expect_eq "loop devices after k1 went" "$loops" "$(losetup -a | wc -l)"
[ -z "$(ls /run/dmu | grep '^k1\.')" ] || fail "left in /run/dmu: $(ls /run/dmu | grep '^k1\.')"
qemu-img check -q two.qcow2 || fail "two.qcow2 after k1"
qemu-io -r -c "read -P 0xa5 0 256k" two.qcow2 >/tmp/k1.io 2>&1
grep -q "read 262144/262144" /tmp/k1.io && ! grep -qi "fail" /tmp/k1.io ||
  { cat /tmp/k1.io; fail "k1's write is not in two.qcow2"; }
# The device of a domain that is gone gets only a detach (block-dmu's
# remove, the helper's clean-up): it removes it too.
killed_attach k2
read_held k2
t0=$(now_ms)
dmu detach k2 >/tmp/k2.out 2>&1 || { cat /tmp/k2.out; fail "detach of the device the killed attach left"; }
read_failed k2 $(($(now_ms) - t0))
cat /tmp/k2.out
[ ! -e /dev/mapper/k2 ] || fail "detach left k2's device"
expect_eq "loop devices after k2 went" "$loops" "$(losetup -a | wc -l)"
[ -z "$(ls /run/dmu | grep '^k2\.')" ] || fail "left in /run/dmu: $(ls /run/dmu | grep '^k2\.')"
# Files a killed attach or mapping process left for a name with no record
# and no device (a lock file, a record's temporary of a writer that is gone
# and older than a minute) go with the next detach of the name; a log stays
# (a failed attach names it in its error).
dead=$(($(cat /proc/sys/kernel/pid_max) + 1))
: >/run/dmu/k3.lock
: >/run/dmu/k3.log
: >"/run/dmu/k3.json.tmp.$dead"
touch -d "@$(($(date +%s) - 120))" "/run/dmu/k3.json.tmp.$dead"
dmu detach k3 >/tmp/k3.out 2>&1 || { cat /tmp/k3.out; fail "detach of k3, not attached"; }
grep -q "not attached; nothing to do" /tmp/k3.out || { cat /tmp/k3.out; fail "detach k3 said something else"; }
expect_eq "k3's files left in /run/dmu" "k3.log" "$(ls /run/dmu | grep '^k3\.')"
rm /run/dmu/k3.log
# An opener that keeps the leftover device open past libdevmapper's retries
# (it ignores the EIO): the detach is refused, naming why, and leaves the
# device with the error table; once it lets go, the next detach removes it.
killed_attach k4
( exec 3</dev/mapper/k4 && touch /tmp/k4.held && exec sleep 12 ) &
k4_holder=$!
i=0
until [ -e /tmp/k4.held ]; do i=$((i + 1)); [ $i -lt 100 ] || fail "could not open k4"; sleep 0.05; done
dmu detach k4 >/tmp/k4.out 2>&1 && { cat /tmp/k4.out; fail "detach of k4 succeeded while it was held open"; }
grep -q "something keeps it open" /tmp/k4.out || { cat /tmp/k4.out; fail "the refused detach of k4 did not say why"; }
expect_eq "k4's table after the refused detach" "error" "$(dmsetup table k4 | awk '{print $3}')"
kill "$k4_holder"
wait "$k4_holder" 2>/dev/null
dmu detach k4 >/tmp/k4.out 2>&1 || { cat /tmp/k4.out; fail "detach of k4 once let go"; }
grep -q "removed the device an attach killed" /tmp/k4.out || { cat /tmp/k4.out; fail "detach k4 said something else"; }
[ ! -e /dev/mapper/k4 ] || fail "detach left k4's device"
expect_eq "loop devices after k4 went" "$loops" "$(losetup -a | wc -l)"

step "the image's file system runs out of space"
mkdir -p /small && mount -t tmpfs -o size=40m tmpfs /small || fail "mount a 40 MiB tmpfs"
qemu-img create -q -f qcow2 /small/s.qcow2 256M || fail "create s.qcow2"
dd if=/dev/zero of=/small/filler bs=1M count=16 status=none || fail "filler"
dmu attach --name s /small/s.qcow2 >/dev/null || fail "attach s.qcow2"
dd if=/dev/urandom of=/tmp/pattern bs=1M count=4 status=none
# 64 MiB do not fit in the ~24 MiB left: some writes must fail.
if dd if=/dev/urandom of=/dev/mapper/s bs=1M count=64 oflag=direct status=none 2>/tmp/enospc.log
then
  fail "64 MiB fitted into a file system with ~24 MiB free"
fi
cat /tmp/enospc.log
grep -q "Input/output error\|No space" /tmp/enospc.log || fail "the writes failed without EIO/ENOSPC"
df -k /small | tail -1
dmu stats s | tail -2
serving s || fail "the mapping process died when space ran out"
# Writes that need no space still work while the file system is full: the
# first MiB was written before it ran out.
dd if=/dev/urandom of=/tmp/over bs=1M count=1 status=none
dd if=/tmp/over of=/dev/mapper/s bs=1M oflag=direct status=none ||
  fail "a rewrite of allocated clusters failed while the file system was full"
dd if=/dev/mapper/s of=/tmp/over.back bs=1M count=1 iflag=direct status=none ||
  fail "read back the rewrite made while the file system was full"
cmp /tmp/over /tmp/over.back || fail "the rewrite made while the file system was full reads back differently"

step "space freed: writes work again and read back"
rm -f /small/filler
dd if=/tmp/pattern of=/dev/mapper/s bs=1M seek=200 oflag=direct conv=fsync status=none ||
  { tail -5 /run/dmu/s.log; fail "a write after space was freed"; }
dd if=/dev/mapper/s of=/tmp/back bs=1M skip=200 count=4 iflag=direct status=none || fail "read back"
cmp /tmp/pattern /tmp/back || fail "what was written after space was freed reads back differently"
dd if=/dev/mapper/s of=/tmp/over.back bs=1M count=1 iflag=direct status=none || fail "read the first MiB"
cmp /tmp/over /tmp/over.back || fail "the rewrite made while the file system was full was lost"
dmu detach s || fail "detach s"
qemu-img check /small/s.qcow2
rc=$?
[ $rc = 0 ] || [ $rc = 3 ] || fail "qemu-img check after ENOSPC: exit $rc (corruption)"
qemu-io -r -c "read -v 200M 16" /small/s.qcow2 | head -2
umount /small || fail "umount /small"
check_dmesg
