# Sourced by /init on a debug kernel (DMU_DEBUG_CHECKS=1 in run.conf): the
# guest side of the debug lane's checks. The host (lib/debug-checks.sh) reads
# the console for lockdep, KASAN and other kernel reports and for what this
# prints: the kmemleak result between @@DMU-KMEMLEAK-BEGIN/END@@ and whether
# lockdep was still on at the end.
KMEMLEAK=/sys/kernel/debug/kmemleak

uptime_s() { cut -d' ' -f1 /proc/uptime; }

# debug_baseline: mounts debugfs and forgets every leak suspect from boot, so
# only what leaks from here on (project module load, the case, unload) counts.
# Runs before dm-userspace is loaded.
debug_baseline() {
  mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
  if [ ! -w $KMEMLEAK ]; then
    echo "dmu-init: FAILED: debug kernel without $KMEMLEAK (kmemleak off?)"
    return 1
  fi
  echo scan >$KMEMLEAK || { echo "dmu-init: FAILED: kmemleak scan"; return 1; }
  _n=$(grep -c '^unreferenced object' $KMEMLEAK)
  echo clear >$KMEMLEAK || { echo "dmu-init: FAILED: kmemleak clear"; return 1; }
  echo "dmu-debug: kmemleak baseline: $_n suspects from boot set aside (uptime $(uptime_s) s)"
}

# debug_final: after the case. Unloads dm-userspace if the case left it loaded
# (its exit path runs under lockdep/KASAN too, and memory reachable only from
# the module's globals becomes a leak once they are gone), lets the newest
# allocations age past kmemleak's 5 s minimum, scans twice with a pause and
# prints the suspects. A failed scan prints no END marker: the host fails.
debug_final() {
  echo "dmu-debug: post-case checks (uptime $(uptime_s) s)"
  if grep -q '^dm_userspace ' /proc/modules; then
    # Its symbols, to name its frames in the leak report after it is gone.
    grep '\[dm_userspace\]$' /proc/kallsyms >/tmp/dmu-kallsyms
    if rmmod dm_userspace 2>/tmp/rmmod.err; then
      echo "dmu-debug: dm-userspace unloaded"
    else
      echo "dmu-debug: note: dm-userspace stays loaded: $(cat /tmp/rmmod.err)"
    fi
  fi
  echo "dmu-debug: lockdep $(awk '$1 == "debug_locks:" {print ($2 == 1 ? "on" : "OFF")}' /proc/lockdep_stats) at the end"
  sleep 6
  if echo scan >$KMEMLEAK && sleep 5 && echo scan >$KMEMLEAK; then
    echo "@@DMU-KMEMLEAK-BEGIN@@"
    if [ -s /tmp/dmu-kallsyms ]; then
      bash /usr/lib/dmu-test/ksymbolize /tmp/dmu-kallsyms <$KMEMLEAK
    else
      cat $KMEMLEAK
    fi
    echo "@@DMU-KMEMLEAK-END@@"
  else
    echo "dmu-debug: FAILED: kmemleak scan (kmemleak disabled itself?)"
  fi
  echo "dmu-debug: checks done (uptime $(uptime_s) s)"
}
