# Steps shared by xen.dmu-lifecycle (first, in the same boot) and the
# hand-run harness check tests/xen/cases/smoke.sh: dom0 runs on Xen with the
# control plane up; a PV domU whose disk is a raw image file served by
# block-dmu reads the pattern dom0 wrote and writes one back; block-dmu wrote
# the xenstore keys blkback needs; after the domU powers off no loop device,
# state or backend of it remains; and a missing image fails xl create with a
# hotplug-error that names the file.  Needs lib.sh and xen.sh; run it in a
# subshell (it sets variables of its own).
step "dom0 on Xen with xenstored and xenconsoled"
expect_eq "hypervisor" xen "$(cat /sys/hypervisor/type)"
xl list | tee /tmp/xl-list
grep -q '^Domain-0 ' /tmp/xl-list || fail "xl list does not show Domain-0"

step "raw image with a known pattern"
img=/vm/smoke.img
truncate -s 32M "$img"
expect_eq "image size" 33554432 "$(stat -c %s "$img")"
yes dmu-smoke-dom0-pattern | head -c 1048576 >/tmp/dom0.pat
dd if=/tmp/dom0.pat of="$img" conv=notrunc 2>/dev/null
dom0_sum=$(sha256sum </tmp/dom0.pat)
domu_sum=$(yes dmu-smoke-domU-pattern | head -c 1048576 | sha256sum)

cat >/tmp/guest.sh <<EOT
. /usr/lib/dmu-test/lib.sh
step "domU: kernel \$(uname -r)"
[ -b /dev/xvda ] || fail "domU has no /dev/xvda"
expect_eq "size of /dev/xvda" 33554432 "\$(blockdev --getsize64 /dev/xvda)"
expect_eq "pattern read from /dev/xvda" "$dom0_sum" "\$(dd if=/dev/xvda bs=1M count=1 iflag=direct 2>/dev/null | sha256sum)"
yes dmu-smoke-domU-pattern | head -c 1048576 | dd of=/dev/xvda bs=1M seek=1 oflag=direct conv=fsync 2>/dev/null ||
  fail "write to /dev/xvda"
step "domU: pattern read and written"
EOT

step "PV domU with its disk served by block-dmu"
domu_start smoke /tmp/guest.sh "vdev=xvda,access=w,backendtype=phy,script=block-dmu,target=$img" ||
  fail "xl create smoke failed"
domid=$(xl domid smoke)
be=/local/domain/0/backend/vbd/$domid/51712
xenstore-ls -f "$be" | grep -v '^$' | sed 's/^/  /'
expect_eq "hotplug-status" connected "$(xenstore-read "$be/hotplug-status")"
dev=$(xenstore-read "$be/physical-device-path")
expect_eq "physical-device of $dev" "$(stat -L -c '%t:%T' "$dev")" "$(xenstore-read "$be/physical-device")"
expect_eq "file behind $dev" "$img" "$(losetup --noheadings --output BACK-FILE "$dev" | sed 's/ *$//')"
expect_eq "debugging key dmu/image" "$img" "$(xenstore-read "$be/dmu/image")"
domu_wait smoke 300 || fail "domU smoke failed"

step "dom0 sees the domU's write"
expect_eq "pattern the domU wrote" "$domu_sum" "$(dd if="$img" bs=1M skip=1 count=1 2>/dev/null | sha256sum)"
expect_eq "dom0's pattern untouched" "$dom0_sum" "$(dd if="$img" bs=1M count=1 2>/dev/null | sha256sum)"

step "teardown left nothing behind"
t=0
while [ -n "$(losetup --associated "$img")" ] && [ $t -lt 10 ]; do sleep 1; t=$((t + 1)); done
[ -z "$(losetup --associated "$img")" ] || fail "loop device still attached: $(losetup --associated "$img")"
[ -z "$(ls -A /run/dmu/hotplug 2>/dev/null | grep -v '^lock$')" ] || fail "block-dmu state left: $(ls /run/dmu/hotplug)"
! xenstore-exists "$be" || fail "backend $be still in xenstore"

step "a missing image fails xl create, and the error names the file"
if domu_start bad /tmp/guest.sh "vdev=xvda,access=w,backendtype=phy,script=block-dmu,target=/vm/missing.img"; then
  fail "xl create succeeded with a missing image"
fi
grep -q 'block-dmu: /vm/missing.img: no such image file' /var/log/xen/xl-create-bad.log ||
  fail "xl create's output does not carry block-dmu's error naming /vm/missing.img"
! xl domid bad >/dev/null 2>&1 || fail "domain 'bad' still exists after the failed create"
[ -z "$(ls -A /run/dmu/hotplug 2>/dev/null | grep -v '^lock$')" ] || fail "block-dmu state left after the failed add"
