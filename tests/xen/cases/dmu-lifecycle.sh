#!/bin/sh
# A running guest's dmu disks through the rest of a domain's life: xl
# block-attach of a qcow2 to a running guest, I/O, xl block-detach, the same
# again; xl reboot of a guest whose disk is a qcow2 (the write of the first
# boot is there in the second); xl save + xl restore with I/O before and
# after. Data intact, and nothing of dmu is left once each domain is gone.
# First, in the same boot, the harness smoke steps (a raw image through
# block-dmu, and a missing image's hotplug-error: lib/guest/raw-disk-steps.sh).
# xen: timeout=1200
. /usr/lib/dmu-test/lib.sh
. /usr/lib/dmu-test/xen.sh
. /src/tests/xen/lib/guest/dmu-disks-lib.sh

( . /src/tests/xen/lib/guest/raw-disk-steps.sh ) || exit 1

step "images"
cd /vm || fail "cd /vm"
for i in sys hot; do qemu-img create -q -f qcow2 "$i.qcow2" 64M || fail "make $i.qcow2"; done
sys_disk='vdev=xvda,access=w,backendtype=phy,script=block-dmu,target=qcow2:/vm/sys.qcow2'
hot_disk='vdev=xvdb,access=w,backendtype=phy,script=block-dmu,target=qcow2:/vm/hot.qcow2'

step "xl block-attach and block-detach of a qcow2, twice, under a running guest"
guest_script /tmp/hot.sh <<'EOT'
for round in 1 2; do
  _t=0
  until [ -b /dev/xvdb ]; do [ $_t -lt 120 ] || fail "round $round: no /dev/xvdb"; sleep 1; _t=$((_t + 1)); done
  step "domU: round $round: /dev/xvdb appeared"
  [ $round = 1 ] || reads /dev/xvdb 1 "$(pattern_sum 061)"
  writes /dev/xvdb $round "$(printf '%03o' $((48 + round)))"
  mark /dev/xvdb "guest-wrote-$round"
  _t=0
  while [ -b /dev/xvdb ]; do [ $_t -lt 120 ] || fail "round $round: /dev/xvdb never went"; sleep 1; _t=$((_t + 1)); done
  step "domU: round $round: /dev/xvdb is gone"
done
EOT
domu_start hot /tmp/hot.sh "$sys_disk" || fail "xl create hot"
for round in 1 2; do
  xl block-attach hot "$hot_disk" || fail "round $round: xl block-attach"
  node=$(mapping_shown hot 51728 /vm/hot.qcow2 qcow2) || exit 1
  await_mark "$node" "guest-wrote-$round"
  xl block-detach hot xvdb || fail "round $round: xl block-detach"
  t=0
  while dmsetup info "${node#/dev/mapper/}" >/dev/null 2>&1; do
    [ $t -lt 60 ] || fail "round $round: $node still there 30 s after block-detach"
    sleep 0.5; t=$((t + 1))
  done
  check_clean hot.qcow2
  expect_eq "round $round: the guest's write in hot.qcow2" "$(pattern_sum "$(printf '%03o' $((48 + round)))")" \
    "$(image_sum hot.qcow2 "$round")"
done
domu_wait hot 300 || { dom0_state; fail "domU hot failed"; }
nothing_left

step "xl reboot: the second boot reads what the first wrote"
guest_script /tmp/reboot.sh <<'EOT'
if has_mark /dev/xvda first-boot-was-here; then
  step "domU: second boot"
  reads /dev/xvda 2 "$(pattern_sum 062)"
  writes /dev/xvda 3 063
else
  step "domU: first boot"
  writes /dev/xvda 2 062
  mark /dev/xvda first-boot-was-here
  sleep 600   # dom0 reboots us
fi
EOT
domu_start rb /tmp/reboot.sh "$sys_disk" || fail "xl create rb"
node=$(mapping_shown rb 51712 /vm/sys.qcow2 qcow2) || exit 1
await_mark "$node" first-boot-was-here
first=$(xl domid rb)
xl reboot rb || fail "xl reboot rb"
t=0
while [ "$(xl domid rb 2>/dev/null)" = "$first" ] || ! xl domid rb >/dev/null 2>&1; do
  [ $t -lt 120 ] || fail "rb did not come back from xl reboot"
  sleep 1; t=$((t + 1))
done
echo "rb rebooted: domid $first -> $(xl domid rb)"
domu_wait rb 300 || { dom0_state; fail "domU rb failed"; }
grep -q 'domU: first boot' "$(domu_console rb)" 2>/dev/null ||
  echo "(the console log of the first boot was not kept across the reboot)"
nothing_left
check_clean sys.qcow2
expect_eq "second boot's write" "$(pattern_sum 063)" "$(image_sum sys.qcow2 3)"

step "xl save and xl restore with I/O before and after"
guest_script /tmp/save.sh <<'EOT'
writes /dev/xvda 4 064
mark /dev/xvda before-save
await_mark /dev/xvda restored
step "domU: running again after restore"
reads /dev/xvda 4 "$(pattern_sum 064)"
writes /dev/xvda 5 065
EOT
DOMU_MEM=128 domu_start sv /tmp/save.sh "$sys_disk" || fail "xl create sv"
node=$(mapping_shown sv 51712 /vm/sys.qcow2 qcow2) || exit 1
await_mark "$node" before-save
xl save sv /tmp/sv.save || fail "xl save sv"
nothing_left
check_clean sys.qcow2
expect_eq "write before save" "$(pattern_sum 064)" "$(image_sum sys.qcow2 4)"
xl restore /tmp/sv.save || fail "xl restore"
rm -f /tmp/sv.save
node=$(mapping_shown sv 51712 /vm/sys.qcow2 qcow2) || exit 1
say "$node" restored
domu_wait sv 300 || { dom0_state; fail "domU sv failed"; }
nothing_left
check_clean sys.qcow2
expect_eq "write after restore" "$(pattern_sum 065)" "$(image_sum sys.qcow2 5)"
expect_eq "reboot's write still there" "$(pattern_sum 063)" "$(image_sum sys.qcow2 3)"
step "ok"
