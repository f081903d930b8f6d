# shellcheck shell=sh
# Guest helpers shared by bench/kmod/kmod-bench.sh and profile-guest.sh, so
# the profile measures exactly the devices and fio jobs the bench compares.
# Sourced in the guest after /src/tests/kmod/vm-lib.sh.  POSIX sh (dash).

# bench_devices BACKING DAEMON_LOG: a 256 MiB loop file (BACKING=memory: on
# tmpfs, buffered; disk: on ext4 on /dev/vda, direct I/O), dm-linear "lin"
# and the userspace target "u" over the same loop device, and an identity
# daemon that has pushed every mapping.  Sets LOOP.
bench_devices() {
  if [ "$1" = memory ]; then
    step "256 MiB file on tmpfs, loop device, dm-linear and userspace over it"
    mkdir -p /data
    mount -t tmpfs -o size=300m tmpfs /data || fail "mount tmpfs /data"
    make_file /data/disk.img 256
    LOOP=$(losetup -f --show /data/disk.img) || fail "losetup /data/disk.img"
  else
    step "256 MiB file on ext4, direct-I/O loop device, dm-linear and userspace over it"
    data_fs
    make_file /data/disk.img 256
    LOOP=$(loop_dio /data/disk.img)
  fi
  echo "0 $(blockdev --getsz "$LOOP") linear $LOOP 0" | dmsetup create lin ||
    fail "create dm-linear"
  dmu_create u bench 8 "" "$LOOP"
  daemon_start "$2" --key bench --mode identity --push-all --push-extent-blocks 1024
}

# bench_devices_remove DAEMON_LOG: undoes bench_devices.
bench_devices_remove() {
  daemon_stop "$1"
  dmsetup remove u
  dmsetup remove lin
  losetup -d "$LOOP"
}

# fio_job_args JOB: fio's options for randread, randwrite or seqwrite.
fio_job_args() {
  case $1 in
    randread) echo "--rw=randread --bs=4k --iodepth=16" ;;
    randwrite) echo "--rw=randwrite --bs=4k --iodepth=16" ;;
    seqwrite) echo "--rw=write --bs=1M --iodepth=4" ;;
    *) fail "unknown fio job $1" ;;
  esac
}

# fio_run JOB DEVICE RUNTIME [WRAPPER...]: one time-based fio run with
# --minimal output in /tmp/fio.out; WRAPPER (e.g. perf record ... --) runs it.
fio_run() {
  _job=$1 _dev=$2 _runtime=$3
  shift 3
  # shellcheck disable=SC2046  # split on purpose: one word per option
  "$@" fio --name="$_job" --filename="$_dev" $(fio_job_args "$_job") --direct=1 \
    --ioengine=libaio --size=256M --time_based --runtime="$_runtime" --ramp_time=1 \
    --minimal >/tmp/fio.out 2>&1 || { cat /tmp/fio.out; fail "fio $_job on $_dev"; }
}
