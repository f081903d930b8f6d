#!/usr/bin/env python3
"""Compares the guest profiles written by bench/kmod/profile-guest.sh.

Usage: profile-diff.py [--job J] [--kernel K] [--top N] RESULTS_DIR

The guest has one vCPU and fio keeps it busy, so a symbol's share of the
samples times the time per I/O (1 / IOPS) is the CPU it costs per I/O.  For
each device (lin = dm-linear, u = the userspace target) this averages, over
the repetitions, microseconds per I/O by symbol, and prints the symbols whose
cost differs most, the inclusive cost (with children) of the device-mapper
entry point and of every dmu_ function, the self cost of each target's map
functions and of the cache lock, and fio's IOPS per run.
"""
import argparse
import collections
import glob
import os
import re
import statistics
import sys

ROW = re.compile(r"^\s+([\d.]+)%\s+(?:([\d.]+)%\s+)?\[[k.]\]\s+(\S+)")


def shares(path):
    """symbol -> percent of samples (the first column) from one perf report;
    a name that appears in several objects is summed."""
    out = collections.Counter()
    with open(path) as f:
        for line in f:
            m = ROW.match(line)
            if m:
                out[m.group(3)] += float(m.group(1))
    return out


def iops(path):
    with open(path) as f:  # warnings may come first; the result is the last line
        fields = f.read().strip().splitlines()[-1].split(";")
    # --minimal: field 8 is read IOPS, 49 write IOPS (1-based)
    return max(int(fields[7]), int(fields[48]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--job", default="randread")
    ap.add_argument("--kernel", default="?")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("results")
    a = ap.parse_args()
    runs = {d: sorted(glob.glob(os.path.join(a.results, f"self-{d}-*.txt"))) for d in ("lin", "u")}
    if not runs["lin"] or len(runs["lin"]) != len(runs["u"]):
        sys.exit(f"{a.results}: no complete set of self-lin-*/self-u-* reports")
    def per_io(kind, d):
        """symbol -> mean microseconds of guest CPU per I/O."""
        total = collections.Counter()
        for p in runs[d]:
            us = 1e6 / iops(p.replace("self-", "fio-"))
            total.update({k: v / 100 * us for k, v in shares(p.replace("self-", kind)).items()})
        return {k: v / len(runs[d]) for k, v in total.items()}

    lin, u = per_io("self-", "lin"), per_io("self-", "u")
    keys = sorted(set(lin) | set(u), key=lambda k: u.get(k, 0) - lin.get(k, 0))
    print(f"{a.job} on {a.kernel}, {len(runs['lin'])} profiled runs per device; "
          "guest CPU per I/O by symbol (self), microseconds, mean over runs")
    print()
    print("| symbol | dm-linear us/IO | userspace us/IO | difference |")
    print("|---|---|---|---|")
    for k in keys[::-1][: a.top] + keys[: a.top][::-1]:
        print(f"| {k} | {lin.get(k, 0):.2f} | {u.get(k, 0):.2f} | {u.get(k, 0) - lin.get(k, 0):+.2f} |")
    print()
    clin, cu = per_io("children-", "lin"), per_io("children-", "u")
    print("| with children | dm-linear us/IO | userspace us/IO |")
    print("|---|---|---|")
    for k in ["dm_submit_bio"] + sorted(k for k in cu if k.startswith("dmu_")):
        print(f"| {k} | {clin.get(k, 0):.2f} | {cu.get(k, 0):.2f} |")
    print()
    # The map step itself: each target's own functions and the lock the
    # userspace target takes around its cache (time with interrupts off is
    # charged to the unlock).
    mine = sorted(k for k in set(lin) | set(u) if k.startswith("dmu_"))
    step = ["linear_map", "dm_table_find_target"] + mine + [
        "_raw_spin_lock_irqsave", "_raw_spin_unlock_irqrestore"]
    print("| self | dm-linear us/IO | userspace us/IO |")
    print("|---|---|---|")
    for k in step:
        print(f"| {k} | {lin.get(k, 0):.2f} | {u.get(k, 0):.2f} |")
    print()
    for d in ("lin", "u"):
        vals = [iops(p.replace("self-", "fio-")) for p in runs[d]]
        print(f"fio IOPS on {d}: {' '.join(map(str, vals))} (median {statistics.median(vals):g}, "
              f"{1e6 / statistics.median(vals):.1f} us per I/O)")


if __name__ == "__main__":
    main()
