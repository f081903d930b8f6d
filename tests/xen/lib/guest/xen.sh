# dom0 helpers for Xen cases: . /usr/lib/dmu-test/xen.sh  (POSIX sh, dash)
# domu_start / domu_wait / domu_run / domu_console: see tests/xen/README.md.
# Per-domU files live in /var/lib/dmu-test/domu/NAME/ (never in /vm, which is
# the case's).

domu_console() {
  echo "/var/log/xen/console/guest-$1.log"
}

# domu_start NAME SCRIPT [DISK ...]: builds NAME's ramdisk with SCRIPT as its
# /test.sh, writes /etc/xen/NAME.cfg and runs xl create; returns xl's status.
domu_start() {
  _name=$1 _script=$2
  shift 2
  _dir=/var/lib/dmu-test/domu/$_name
  rm -rf "$_dir" "$(domu_console "$_name")"
  mkdir -p "$_dir/root/etc/dmu"
  cp "$_script" "$_dir/root/test.sh"
  cat >"$_dir/root/etc/dmu/run.conf" <<EOT
DMU_ROLE=domu
DMU_CASE=$_name
DMU_KERNEL_LINE=$DMU_KERNEL_LINE
DMU_MODULES="xen-blkfront"
DMU_KMOD=no
DMU_SHARES=""
DMU_INIT_DEBUG=
EOT
  (cd "$_dir/root" && find . | cpio -o -H newc 2>/dev/null | gzip -1) >"$_dir/case.cpio.gz"
  cat /vm/domu-base.cpio.zst "$_dir/case.cpio.gz" >"$_dir/ramdisk"
  _disks=
  for _d in "$@"; do _disks="$_disks'$_d', "; done
  cat >"/etc/xen/$_name.cfg" <<EOT
name = "$_name"
type = "pv"
kernel = "/vm/vmlinuz"
ramdisk = "$_dir/ramdisk"
extra = "console=hvc0 quiet panic=-1 oops=panic"
memory = ${DOMU_MEM:-256}
vcpus = 1
disk = [ $_disks]
on_poweroff = "destroy"
on_crash = "destroy"
${DOMU_EXTRA_CFG:-}
EOT
  echo "--- [$(cut -d' ' -f1 /proc/uptime)s] xl create $_name: disks: $*"
  _rc=0
  xl create "/etc/xen/$_name.cfg" >"/var/log/xen/xl-create-$_name.log" 2>&1 || _rc=$?
  sed "s/^/[xl create $_name] /" "/var/log/xen/xl-create-$_name.log"
  echo "--- [$(cut -d' ' -f1 /proc/uptime)s] xl create $_name returned $_rc"
  return $_rc
}

# domu_result NAME: the status in NAME's @@DMU-RESULT marker, if printed yet.
domu_result() {
  tr -d '\r' <"$(domu_console "$1")" 2>/dev/null | sed -n 's/.*@@DMU-RESULT rc=\([0-9]*\)@@.*/\1/p' | tail -1
}

# domu_wait NAME [TIMEOUT]: waits for NAME's result and for the domain to be
# gone; prints its console; returns its status (124 timeout, 125 no result).
domu_wait() {
  _name=$1 _limit=${2:-300} _t=0 _rc=
  while [ -z "$_rc" ]; do
    _rc=$(domu_result "$_name")
    [ -n "$_rc" ] && break
    if ! xl domid "$_name" >/dev/null 2>&1; then
      sleep 1   # xenconsoled may still be writing the last lines
      _rc=$(domu_result "$_name")
      [ -n "$_rc" ] || { echo "domu_wait: $_name ended without a result"; _rc=125; }
      break
    fi
    if [ "$_t" -ge "$_limit" ]; then
      echo "domu_wait: $_name gave no result within ${_limit}s; destroying it"
      _rc=124
      break
    fi
    sleep 1
    _t=$((_t + 1))
  done
  _t=0   # the domU powers itself off after its marker; give it 20 s
  while xl domid "$_name" >/dev/null 2>&1 && [ "$_t" -lt 20 ]; do sleep 1; _t=$((_t + 1)); done
  if xl domid "$_name" >/dev/null 2>&1; then
    echo "domu_wait: $_name still exists ${_t}s after its result; destroying it"
    xl destroy "$_name"
  fi
  [ -d /results ] && cp "$(domu_console "$_name")" "/results/domu-$_name.log" 2>/dev/null
  tr -d '\r' <"$(domu_console "$_name")" 2>/dev/null | sed "s/^/[$_name] /"
  echo "--- [$(cut -d' ' -f1 /proc/uptime)s] domU $_name finished with status $_rc"
  return "$_rc"
}

# domu_run NAME SCRIPT [DISK ...]: domu_start + domu_wait.
domu_run() {
  domu_start "$@" || return $?
  domu_wait "$1"
}
