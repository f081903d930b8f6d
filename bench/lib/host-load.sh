# shellcheck shell=bash
# Host helper of the bench run scripts (sourced): runs one benchmark VM
# while sampling the CPU time everything else on the host uses (vm-recipes
# §6 "Noise"), so the report can flag runs made under load.

# sample_load CASE: every 2 s, "<seconds since QEMU started> <other CPU, %
# of one core>", for the QEMU booted for VM case CASE (e.g. kmod-bench.6.12),
# until it exits.
sample_load() {
  local qpid='' t0 prev_busy=0 prev_total=0 prev_own=0 busy total own ncpu
  ncpu=$(nproc)
  while [ -z "$qpid" ]; do
    qpid=$(pgrep -f -- "^qemu-system-x86_64 .*runs/$1/initrd" | head -1 || true)
    sleep 0.2
  done
  t0=$(date +%s.%N)
  while kill -0 "$qpid" 2>/dev/null; do
    read -r busy total < <(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat)
    own=$(awk '{print $14+$15}' "/proc/$qpid/stat" 2>/dev/null || echo "$prev_own")
    if [ "$prev_total" != 0 ]; then
      awk -v t="$(date +%s.%N)" -v t0="$t0" -v db=$((busy - prev_busy)) -v dt=$((total - prev_total)) \
        -v dq=$((own - prev_own)) -v n="$ncpu" \
        'BEGIN { o = dt > 0 ? (db - dq) * 100 * n / dt : 0; if (o < 0) o = 0; printf "%.1f %.0f\n", t - t0, o }'
    fi
    prev_busy=$busy prev_total=$total prev_own=$own
    sleep 2
  done
}

# run_sampled BUILD LINE GUEST_SCRIPT: boots the guest script through the VM
# harness with the sampler beside it; the samples land in the case's results
# folder as host-load.txt.  Exits with the VM's status if it failed.
run_sampled() {
  local build=$1 line=$2 guest=$3 name samples rc=0 sampler results
  name=$(basename "$guest" .sh).$line
  results=$build/tests/vm/results/$name
  samples=$(mktemp)
  sample_load "$name" >"$samples" &
  sampler=$!
  "$(dirname "${BASH_SOURCE[0]}")/../../tests/vm/lib/run-case.sh" --build "$build" --kernel "$line" "$guest" || rc=$?
  wait "$sampler" || true
  cp "$samples" "$results/host-load.txt"
  rm -f "$samples"
  [ "$rc" = 0 ] || { echo "bench VM failed (rc $rc); console: $results/console.log" >&2; exit "$rc"; }
}
