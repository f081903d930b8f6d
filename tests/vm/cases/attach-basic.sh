#!/bin/sh
# dmu attach turns a qcow2 image (and an overlay on a read-only backing
# image) into /dev/mapper/NAME that a file system and fio with verify run on;
# dmu stats and dmsetup table show the device; detach refuses while it is
# mounted, is idempotent, and leaves an image qemu-img check finds clean whose
# contents qemu-img compare finds equal to what the device showed.  While
# attached, QEMU's tools cannot write the image (locks held by the loop
# devices), nor a qcow2 file whose data is in an external data file or a
# vmdk descriptor whose extents are files of their own (metadata loops),
# also after kill -9 of the mapping processes and their supervisors, until
# detach; an image naming a host block device is refused.  With a syslog
# daemon running, the mapping process logs there too.
# vm: kernels=6.1,6.12 timeout=900 mem=1024 disks=2G boot=attach-long
. /src/tests/kmod/vm-lib.sh
. /src/tests/vm/lib/guest/attach-lib.sh

# attach_ok NAME IMAGE [ARGS]: dmu attach, which must print exactly the node.
attach_ok() {
  _n=$1 _img=$2
  shift 2
  _out=$(dmu attach --name "$_n" "$@" "$_img") || fail "dmu attach --name $_n $* $_img"
  expect_eq "attach output" "/dev/mapper/$_n" "$_out"
  [ -b "/dev/mapper/$_n" ] || fail "no block device /dev/mapper/$_n"
}

# detach_ok NAME: detach, and nothing of the device may remain.
detach_ok() {
  dmu detach "$1" || fail "dmu detach $1"
  [ ! -e "/dev/mapper/$1" ] || fail "/dev/mapper/$1 still exists after detach"
  dmsetup info "$1" >/dev/null 2>&1 && fail "dm device $1 still exists after detach"
  [ ! -e "/run/dmu/$1.json" ] || fail "/run/dmu/$1.json still exists after detach"
  serving "$1" && fail "a mapping process of $1 still runs"
  return 0
}

# no_loops_of FILE: no loop device is bound to FILE any more.
no_loops_of() {
  if losetup -j "$1" | grep -q .; then
    losetup -a
    fail "a loop device still holds $1"
  fi
}

step "ext4 on /dev/vda for the images"
data_fs
cd /data || fail "cd /data"

step "a syslog daemon runs (busybox syslogd): the mapping process logs there too"
busybox syslogd -n -O /tmp/messages &
SYSLOGD=$!
i=0
until [ -S /dev/log ]; do
  i=$((i + 1)); [ $i -lt 50 ] || fail "busybox syslogd made no /dev/log"; sleep 0.1
done

step "a 256 MiB qcow2 image, attached"
qemu-img create -q -f qcow2 disk.qcow2 256M || fail "qemu-img create"
t0=$(now_ms)
attach_ok d1 /data/disk.qcow2
echo "attach took $(( $(now_ms) - t0 )) ms"
pid=$(record_field d1 pid)
i=0
until grep -q "dmu\[$pid\]: d1: " /tmp/messages 2>/dev/null; do
  i=$((i + 1)); [ $i -lt 50 ] || { cat /tmp/messages; fail "nothing of d1's process $pid in syslog"; }; sleep 0.1
done
grep "dmu\[$pid\]: d1: " /tmp/messages | tail -2
grep -q "d1: " /run/dmu/d1.log || fail "nothing in /run/dmu/d1.log beside syslog"
kill "$SYSLOGD" && rm -f /dev/log
expect_eq "device size" $((256 * 1024 * 1024)) "$(blockdev --getsize64 /dev/mapper/d1)"
expect_eq "logical block size" 512 "$(blockdev --getss /dev/mapper/d1)"
table=$(dmsetup table d1)
echo "table: $table"
echo "$table" | grep -q " userspace dmu:d1 " || fail "table is not a userspace target with key dmu:d1"
echo "$table" | grep -q "writable_devs 1" || fail "table does not limit writes to the image"
dmu list || fail "dmu list"
dmu list --output=json | grep -q '"name": "d1"' || fail "dmu list --output=json misses d1"
[ -s /run/dmu/d1.json ] || fail "no state record /run/dmu/d1.json"
grep -q '"pid": [1-9]' /run/dmu/d1.json || fail "the record has no mapping process pid"

step "512-byte direct I/O works"
dd if=/dev/urandom of=/tmp/sector bs=512 count=1 status=none
dd if=/tmp/sector of=/dev/mapper/d1 bs=512 seek=7 count=1 oflag=direct conv=notrunc status=none ||
  fail "512-byte direct write"
dd if=/dev/mapper/d1 of=/tmp/sector.back bs=512 skip=7 count=1 iflag=direct status=none ||
  fail "512-byte direct read"
cmp /tmp/sector /tmp/sector.back || fail "512-byte sector read back differs"

step "mkfs.ext4, files, sync"
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 /dev/mapper/d1 || fail "mkfs.ext4"
mkdir -p /mnt/d1
mount -t ext4 /dev/mapper/d1 /mnt/d1 || fail "mount"
for i in 1 2 3 4; do
  dd if=/dev/urandom of="/mnt/d1/file$i" bs=1M count=$((i * 3)) status=none || fail "write file$i"
done
(cd /mnt/d1 && sha256sum file*) >/tmp/files.sha
sync

step "detach refuses while mounted"
if dmu detach d1 2>/tmp/detach.err; then fail "detach of a mounted device succeeded"; fi
cat /tmp/detach.err
grep -q "in use" /tmp/detach.err || fail "detach did not say the device is in use"
[ -b /dev/mapper/d1 ] || fail "a refused detach removed the device"

step "fio randwrite + verify in a file on the mounted file system"
fio --name=fs --filename=/mnt/d1/fio.dat --size=48M --rw=randwrite --bsrange=4k-64k \
  --direct=1 --ioengine=libaio --iodepth=8 --verify=crc32c --verify_fatal=1 --do_verify=1 \
  --fsync=32 >/tmp/fio1.log 2>&1 || { cat /tmp/fio1.log; fail "fio on the file system"; }
grep -q "err= 0" /tmp/fio1.log || { cat /tmp/fio1.log; fail "fio saw errors"; }
umount /mnt/d1 || fail "umount"
e2fsck -fn /dev/mapper/d1 >/tmp/fsck.log 2>&1 || { cat /tmp/fsck.log; fail "e2fsck after fio"; }

step "dmu stats"
dmu stats d1 || fail "dmu stats d1"
dmu stats --output=json d1 >/tmp/stats.json || fail "dmu stats --output=json d1"
grep -q '"daemon": "bound"' /tmp/stats.json || fail "stats: the kernel does not see a bound daemon"
grep -q '"commits": [1-9]' /tmp/stats.json || fail "stats: no commits counted"
allocs=$(daemon_counter d1 allocations) grows=$(daemon_counter d1 grows)
echo "allocations=$allocs allocated-blocks=$(daemon_counter d1 allocated-blocks) grows=$grows" \
  "commit-us max=$(daemon_counter d1 commit-us-max) total=$(daemon_counter d1 commit-us-total)" \
  "cpu-ms=$(daemon_counter d1 cpu-ms)"
[ "${allocs:-0}" -ge 100 ] || fail "stats: $allocs allocations after fio's random writes"
[ "$(daemon_counter d1 allocated-blocks)" -ge "$allocs" ] || fail "stats: fewer allocated blocks than allocations"
# The qcow2 file grows a chunk at a time, not a loop resize per allocation.
[ $((grows * 10)) -lt "$allocs" ] || fail "stats: $grows loop device growths for $allocs allocations"
[ "$(daemon_counter d1 commit-us-max)" -gt 0 ] || fail "stats: no commit time"
[ "$(daemon_counter d1 commit-us-total)" -ge "$(daemon_counter d1 commit-us-max)" ] ||
  fail "stats: commit time total below its maximum"
[ "$(daemon_counter d1 cpu-ms)" -gt 0 ] || fail "stats: no CPU time"
expect_eq "kernel bad answers" 0 "$(dmu_stat d1 bad)"
expect_eq "kernel timeouts" 0 "$(dmu_stat d1 timeouts)"

step "what the device shows, then detach"
dd if=/dev/mapper/d1 of=/data/d1.raw bs=1M iflag=direct status=none || fail "read the device"
t0=$(now_ms)
detach_ok d1
echo "detach took $(( $(now_ms) - t0 )) ms"
no_loops_of /data/disk.qcow2
dmu detach d1 2>/tmp/detach2.err || fail "detaching a detached device failed"
cat /tmp/detach2.err

step "qemu-img check and compare"
qemu-img check disk.qcow2 || fail "qemu-img check disk.qcow2"
qemu-img compare -f raw -F qcow2 d1.raw disk.qcow2 || fail "image differs from what the device showed"
rm -f d1.raw
# The 64 MiB growth steps are gone: the file ends where QEMU would end it.
end=$(qemu-img check --output=json disk.qcow2 | sed -n 's/.*"image-end-offset": \([0-9]*\).*/\1/p')
expect_eq "file size after detach (qemu-img's image end offset)" "$end" "$(stat -c %s disk.qcow2)"

step "attach again: the files are there"
attach_ok d1 /data/disk.qcow2
mount -t ext4 /dev/mapper/d1 /mnt/d1 || fail "mount again"
(cd /mnt/d1 && sha256sum -c /tmp/files.sha) || fail "files changed across detach/attach"

step "SIGTERM under a mounted file system; attach --name rebinds and I/O goes on"
dd if=/dev/urandom of=/mnt/d1/file5 bs=1M count=5 status=none || fail "write file5"
sync
pid=$(sed -n 's/.*"pid": \([0-9][0-9]*\).*/\1/p' /run/dmu/d1.json)
[ -n "$pid" ] || fail "no pid in /run/dmu/d1.json"
kill -TERM "$pid"
i=0
while serving d1 && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
serving d1 && fail "the mapping process did not exit within 30 s of SIGTERM"
[ -b /dev/mapper/d1 ] || fail "SIGTERM removed the device"
dmu list | grep -q "NOT SERVED" || fail "dmu list does not show d1 as unserved"
tail -3 /run/dmu/d1.log
attach_ok d1 /data/disk.qcow2
grep -q "rebind\|bound to key" /run/dmu/d1.log || fail "the new mapping process did not log its bind"
dd if=/dev/urandom of=/mnt/d1/file6 bs=1M count=5 status=none || fail "write file6 after rebind"
(cd /mnt/d1 && sha256sum file5 file6) >/tmp/files56.sha
sync
echo 3 >/proc/sys/vm/drop_caches
(cd /mnt/d1 && sha256sum -c /tmp/files.sha /tmp/files56.sha) || fail "files changed across the restart"
umount /mnt/d1
e2fsck -fn /dev/mapper/d1 >/tmp/fsck.log 2>&1 || { cat /tmp/fsck.log; fail "e2fsck after the restart"; }
detach_ok d1
qemu-img check disk.qcow2 || fail "qemu-img check disk.qcow2 after the restart"

step "an overlay on a backing image"
qemu-img create -q -f qcow2 base.qcow2 64M || fail "create base"
qemu-io -c "write -P 0x5a 0 8M" -c "write -P 0xa5 16M 1M" base.qcow2 >/dev/null || fail "fill base"
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 || fail "create overlay"
base_sum=$(sha256sum base.qcow2)
attach_ok d2 /data/top.qcow2
table=$(dmsetup table d2)
echo "table: $table"
echo "$table" | grep -q " userspace dmu:d2 [0-9]* 3 " ||
  fail "overlay table should list top, base and scratch"
echo "$table" | grep -q "writable_devs 1" || fail "overlay table should make only the top writable"
# The loop devices hold QEMU's locks: writer on the overlay, reader on the base.
qemu-io -c "write 0 512" top.qcow2 >/tmp/lock.log 2>&1 && fail "qemu-io wrote an attached image"
grep -q 'Failed to get "write" lock' /tmp/lock.log || { cat /tmp/lock.log; fail "no lock message"; }
qemu-img info top.qcow2 >/tmp/lock.log 2>&1 && fail "qemu-img info opened an attached overlay"
qemu-io -c "write 0 512" base.qcow2 >/tmp/lock.log 2>&1 && fail "qemu-io wrote an attached base"
qemu-img info base.qcow2 >/dev/null || fail "qemu-img info of the base (readers share)"
out=$(dmu attach --name d2b /data/top.qcow2 2>&1) && fail "a second attach of top.qcow2: $out"
echo "second attach: $out"
echo "$out" | grep -q "lock" || fail "the second attach does not name the lock"
[ ! -e /dev/mapper/d2b ] && [ ! -e /run/dmu/d2b.json ] || fail "the refused attach left d2b behind"
qemu-io -f raw -r -c "read -P 0x5a 0 8M" -c "read -P 0xa5 16M 1M" -c "read -P 0 8M 8M" \
  /dev/mapper/d2 >/tmp/qio.log || { cat /tmp/qio.log; fail "backing data through the device"; }
qemu-io -f raw -c "write -P 0x33 4M 1M" -c "write -P 0x44 16M 4k" -c flush /dev/mapper/d2 \
  >/tmp/qio.log || { cat /tmp/qio.log; fail "write through the overlay device"; }
fio --name=raw --filename=/dev/mapper/d2 --offset=32M --size=24M --rw=randwrite --bsrange=4k-64k \
  --direct=1 --ioengine=libaio --iodepth=8 --verify=crc32c --verify_fatal=1 --do_verify=1 \
  >/tmp/fio2.log 2>&1 || { cat /tmp/fio2.log; fail "fio on the overlay device"; }
grep -q "err= 0" /tmp/fio2.log || { cat /tmp/fio2.log; fail "fio saw errors"; }
dd if=/dev/mapper/d2 of=/data/d2.raw bs=1M iflag=direct status=none || fail "read the overlay device"
dmu stats d2 || fail "dmu stats d2"
detach_ok d2
no_loops_of /data/top.qcow2
no_loops_of /data/base.qcow2
qemu-img check top.qcow2 || fail "qemu-img check top.qcow2"
qemu-img compare -f raw -F qcow2 d2.raw top.qcow2 || fail "overlay differs from what the device showed"
qemu-io -r -c "read -P 0x5a 0 4M" -c "read -P 0x33 4M 1M" -c "read -P 0x5a 5M 3M" \
  -c "read -P 0x44 16M 4k" -c "read -P 0xa5 16781312 1044480" top.qcow2 >/tmp/qio.log ||
  { cat /tmp/qio.log; fail "qemu-io reads of the overlay"; }
expect_eq "backing image unchanged" "$base_sum" "$(sha256sum base.qcow2)"
rm -f d2.raw

step "read-only attach"
attach_ok d3 /data/base.qcow2 --read-only
if dd if=/dev/zero of=/dev/mapper/d3 bs=4k count=1 oflag=direct status=none 2>/dev/null; then
  fail "a write to a read-only device succeeded"
fi
qemu-io -f raw -r -c "read -P 0x5a 0 8M" /dev/mapper/d3 >/dev/null || fail "read the read-only device"
detach_ok d3
expect_eq "read-only image unchanged" "$base_sum" "$(sha256sum base.qcow2)"

step "files with no guest data are locked too: a qcow2 with an external data file, a vmdk descriptor"
qemu-img create -q -f qcow2 -o data_file=/data/ext.raw,data_file_raw=on ext.qcow2 64M ||
  fail "create ext.qcow2"
qemu-img create -q -f vmdk -o subformat=twoGbMaxExtentSparse split.vmdk 64M || fail "create split.vmdk"
echo "split.vmdk: $(stat -c %s split.vmdk) bytes, extents: $(ls split-s*.vmdk)"
attach_ok m1 /data/ext.qcow2
attach_ok m2 /data/split.vmdk
grep -q '"metadata-loops"' /run/dmu/m1.json || fail "the record of m1 has no metadata loops"
losetup -j /data/ext.qcow2 | grep -q . || fail "no loop device holds ext.qcow2"
losetup -j /data/split.vmdk | grep -q . || fail "no loop device holds split.vmdk"
dd if=/tmp/sector of=/dev/mapper/m1 bs=512 seek=9 count=1 oflag=direct conv=fsync status=none ||
  fail "write through m1"
dd if=/tmp/sector of=/dev/mapper/m2 bs=512 seek=9 count=1 oflag=direct conv=fsync status=none ||
  fail "write through m2"
# meta_locked WHEN: QEMU may write neither file.  Opened as raw, only the
# metadata file itself is asked for (the data file and extents have loop
# devices of their own): that is the open that had nothing to stop it.
meta_locked() {
  for _f in ext.qcow2 split.vmdk; do
    for _fmt in raw probed; do
      _opt=""
      [ $_fmt = raw ] && _opt="-f raw"
      # shellcheck disable=SC2086
      qemu-io $_opt -c "write 0 512" "$_f" >/tmp/lock.log 2>&1 &&
        fail "$1: qemu-io ($_fmt) wrote $_f while it is attached"
      grep -q 'Failed to get "write" lock' /tmp/lock.log ||
        { cat /tmp/lock.log; fail "$1: no lock message from qemu-io ($_fmt) on $_f"; }
    done
  done
  qemu-img create -q -f qcow2 ext.qcow2 64M 2>/tmp/lock.log &&
    fail "$1: qemu-img create overwrote the attached ext.qcow2"
  grep -q 'lock' /tmp/lock.log || { cat /tmp/lock.log; fail "$1: qemu-img create: no lock message"; }
}
meta_locked "attached"
for n in m1 m2; do
  sup=$(record_field $n supervisor)
  pid=$(record_field $n pid)
  kill -9 "$sup" "$pid"
  wait_gone $n
done
meta_locked "mapping processes and supervisors killed"
attach_ok m1 /data/ext.qcow2
attach_ok m2 /data/split.vmdk
meta_locked "rebound"
detach_ok m1
detach_ok m2
for f in ext.qcow2 ext.raw split.vmdk split-s001.vmdk; do no_loops_of /data/$f; done
for f in ext.qcow2 split.vmdk; do
  qemu-img check -q $f || fail "qemu-img check $f"
  # qemu-img dd counts `count` from the start of the input, skip included.
  rm -f /tmp/back.raw
  qemu-img dd -O raw bs=512 skip=9 count=10 if=$f of=/tmp/back.raw || fail "qemu-img dd $f"
  cmp /tmp/sector /tmp/back.raw || fail "$f does not hold the sector written through the device"
  qemu-io -c "write -P 0x77 1M 512" $f >/tmp/qio.log 2>&1 ||
    { cat /tmp/qio.log; fail "qemu-io cannot write $f after detach"; }
done

step "an image naming a block device as its backing file is refused"
loops_before=$(losetup -a | wc -l)
qemu-img create -q -f qcow2 -u -b /dev/vda -F raw evil.qcow2 64M || fail "create evil.qcow2"
out=$(dmu attach --name evil /data/evil.qcow2 2>&1) && fail "attached an image backed by /dev/vda"
echo "refused: $out"
expect_eq "error lines" 1 "$(printf '%s\n' "$out" | wc -l)"
echo "$out" | grep -q "/dev/vda.*not a regular file" || fail "the refusal does not name /dev/vda"
[ ! -e /dev/mapper/evil ] && [ ! -e /run/dmu/evil.json ] || fail "the refused attach left state"
expect_eq "loop devices after the refusal" "$loops_before" "$(losetup -a | wc -l)"

dmu detach never-attached || fail "detach of a name never attached"
save_results attach-basic /tmp/stats.json /tmp/fio1.log /tmp/fio2.log
check_dmesg
