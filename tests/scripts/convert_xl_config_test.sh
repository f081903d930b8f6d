#!/bin/bash
# dmu-convert-xl-config turns every disk spec form of xl-disk-configuration(5)
# that names qcow, qcow2 or vmdk into the block-dmu form, keeps access (default
# w), other keys and flags, and every other byte; converting twice changes
# nothing; specs it cannot convert are reported and left alone; --in-place
# keeps the file's mode.
set -u
conv=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

cat >"$dir/legacy.cfg" <<'CFG'
name = "fc4"
# quoted text in a comment is a spec too: 'qcow2:/vm/c.qcow2,xvdz' and 'it's' here
disk = [ 'qcow:/vm/fc4.qcow,xvda,w', "qcow2:/vm/data.qcow2,xvdb", 'tap:qcow2:/vm/x.qcow2,xvdc,r',
         'tap2:vmdk:/vm/w.vmdk,xvdd,rw', 'phy:/dev/vg/lv,xvde,w', 'file:/vm/raw.img,xvdf,w',
         '/vm/p.qcow2,qcow2,xvdg,w', 'format=qcow2, vdev=xvdh, access=rw, target=/vm/k,1.qcow2',
         '/vm/v.vmdk,vmdk,xvdi', '/root/image.iso,,hdc,cdrom', 'raw:/vm/r.img,xvdj,w',
         'vdev=xvda,access=w,backendtype=phy,script=block-dmu,target=qcow2:/vm/done.qcow2',
         'qcow2:/vm/d.qcow2,xvdk,w,discard', 'tap:aio:/vm/a.img,xvdl,w' ]
vif = [ 'mac=00:16:3e:00:00:01' ]
CFG
cat >"$dir/expected.cfg" <<'CFG'
name = "fc4"
# quoted text in a comment is a spec too: 'vdev=xvdz,access=w,backendtype=phy,script=block-dmu,target=qcow2:/vm/c.qcow2' and 'it's' here
disk = [ 'vdev=xvda,access=w,backendtype=phy,script=block-dmu,target=qcow:/vm/fc4.qcow', "vdev=xvdb,access=w,backendtype=phy,script=block-dmu,target=qcow2:/vm/data.qcow2", 'vdev=xvdc,access=r,backendtype=phy,script=block-dmu,target=qcow2:/vm/x.qcow2',
         'vdev=xvdd,access=rw,backendtype=phy,script=block-dmu,target=vmdk:/vm/w.vmdk', 'phy:/dev/vg/lv,xvde,w', 'file:/vm/raw.img,xvdf,w',
         'vdev=xvdg,access=w,backendtype=phy,script=block-dmu,target=qcow2:/vm/p.qcow2', 'vdev=xvdh,access=rw,backendtype=phy,script=block-dmu,target=qcow2:/vm/k,1.qcow2',
         'vdev=xvdi,access=w,backendtype=phy,script=block-dmu,target=vmdk:/vm/v.vmdk', '/root/image.iso,,hdc,cdrom', 'raw:/vm/r.img,xvdj,w',
         'vdev=xvda,access=w,backendtype=phy,script=block-dmu,target=qcow2:/vm/done.qcow2',
         'vdev=xvdk,access=w,backendtype=phy,script=block-dmu,discard,target=qcow2:/vm/d.qcow2', 'tap:aio:/vm/a.img,xvdl,w' ]
vif = [ 'mac=00:16:3e:00:00:01' ]
CFG
printf 'tail without a newline' | tee -a "$dir/legacy.cfg" >>"$dir/expected.cfg"

"$conv" "$dir/legacy.cfg" >"$dir/out.cfg" 2>"$dir/err" || fail "convert exited $?"
cmp "$dir/expected.cfg" "$dir/out.cfg" || { diff -u "$dir/expected.cfg" "$dir/out.cfg"; fail "converted config differs"; }
[ ! -s "$dir/err" ] || fail "unexpected warnings: $(cat "$dir/err")"

chmod 640 "$dir/legacy.cfg"
"$conv" --in-place "$dir/legacy.cfg" || fail "--in-place exited $?"
cmp "$dir/expected.cfg" "$dir/legacy.cfg" || fail "--in-place result differs"
[ "$(stat -c %a "$dir/legacy.cfg")" = 640 ] || fail "--in-place changed the mode"
"$conv" "$dir/legacy.cfg" | cmp "$dir/expected.cfg" - || fail "converting twice changes the result"

printf '%s\n' "disk = [ 'format=vmdk,target=qcow2:/vm/a.qcow2,xvda', 'qcow2:relative.qcow2,xvdb' ]" >"$dir/bad.cfg"
"$conv" "$dir/bad.cfg" >"$dir/out.cfg" 2>"$dir/err" || fail "convert of unconvertible specs exited $?"
cmp -s "$dir/bad.cfg" "$dir/out.cfg" || fail "unconvertible specs were changed: $(cat "$dir/out.cfg")"
grep -q 'bad.cfg:1: .*disagree' "$dir/err" || fail "no warning about the format/prefix mismatch: $(cat "$dir/err")"
grep -q 'bad.cfg:1: .*not an absolute path' "$dir/err" || fail "no warning about the relative path: $(cat "$dir/err")"

"$conv" "$dir/missing.cfg" 2>"$dir/err" && fail "a missing config was accepted"
grep -q 'missing.cfg: cannot read' "$dir/err" || fail "error does not name the file: $(cat "$dir/err")"
echo ok
