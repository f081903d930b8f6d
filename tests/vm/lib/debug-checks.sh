#!/usr/bin/env bash
# Usage: debug-checks.sh CONSOLE_LOG
# The host side of the debug lane's checks, run by run-case.sh after a guest
# on a debug kernel (line *-debug) ended. Fails (status 1), printing each
# report in full, when the console shows a kernel report -- lockdep (circular
# or recursive locking, inconsistent lock state, suspicious RCU usage, ...),
# KASAN, sleeping in atomic context, debug-objects, list corruption, any
# other WARNING/BUG/Oops --, or lockdep was off at the end, or the kmemleak
# scan the guest ran after the case (guest/debug-checks.sh) lists a suspected
# leak, or never ran.
# Only kernel lines count (they start with a printk timestamp), so a case
# that merely prints "WARNING:" does not trip it.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
console=${1:?usage: debug-checks.sh CONSOLE_LOG}
log_prefix=${log_prefix:-debug-checks}
clean=$(mktemp)
trap 'rm -f "$clean"' EXIT
# Without carriage returns and terminal escapes.
tr -d '\r' <"$console" | sed -e 's/\x1bc//g' -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' >"$clean"

kernel_line='^\[ *[0-9]+\.[0-9]+\] '
reports='(WARNING:|BUG:|INFO: (possible|trying to register)|inconsistent lock state|ODEBUG:|list_(add|del) corruption|kernel BUG at|Oops|general protection fault|UBSAN:|Kernel panic)'
status=0

# Each report from its first line, up to 90 lines or the end of the trace.
found=$(grep -cE "$kernel_line.*$reports" "$clean" || true)
if [ "$found" != 0 ]; then
  log "kernel reports on the console ($found report lines):"
  awk -v pat="$reports" -v kl="$kernel_line" '
    { line[NR] = $0 }
    END {
      upto = 0
      for (i = 1; i <= NR; i++) {
        if (i <= upto || line[i] !~ kl || line[i] !~ pat) continue
        print "  +--------"
        for (j = i; j <= NR && j < i + 90; j++) {
          if (j > i && line[j] ~ /@@DMU-/) break
          print "  | " line[j]
          upto = j
          if (line[j] ~ /---\[ end trace/ || (j > i + 2 && line[j] ~ /^(\[ *[0-9.]+\] )?=========+$/)) break
        }
      }
    }' "$clean" >&2
  status=1
fi

# lockdep switches itself off after its first report -- or after running
# out of table space; then nothing later would be checked.
if grep -q '^dmu-debug: lockdep OFF' "$clean" && [ "$status" = 0 ]; then
  log "lockdep was off at the end of the case (it turns itself off on overflow):"
  grep -E "$kernel_line.*(lockdep|debug_locks|MAX_LOCK)" "$clean" | sed 's/^/  | /' >&2 || true
  status=1
fi

# The kmemleak block the guest printed after the case.
if ! grep -q '^@@DMU-KMEMLEAK-END@@' "$clean"; then
  log "kmemleak: the guest never printed its scan result (it did not get that far):"
  grep -E '^dmu-debug: |kmemleak' "$clean" | sed 's/^/  | /' >&2 || true
  status=1
else
  leaks=$(sed -n '/^@@DMU-KMEMLEAK-BEGIN@@/,/^@@DMU-KMEMLEAK-END@@/p' "$clean" | sed '1d;$d')
  if grep -q 'unreferenced object' <<<"$leaks"; then
    log "kmemleak: $(grep -c 'unreferenced object' <<<"$leaks") suspected leaks after the case:"
    sed 's/^/  | /' <<<"$leaks" >&2
    status=1
  fi
fi
[ "$status" = 0 ] && log "no lockdep, KASAN or other kernel report; kmemleak clean"
exit "$status"
