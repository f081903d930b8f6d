#!/usr/bin/env python3
"""Report of bench/rfc/run.sh (the RFC's first experiment).

usage: bench/rfc/copy-report.py [--kernel K] [--host-load FILE] COPY_CSV

COPY_CSV: rep,device,mkfs_ms,rfc_ms,requests, one line per run.  Prints a
markdown table: per device, the median time of mkfs and of mount-copy-sync-
umount (the RFC's measure), and that time over the loop device's in the
same repetition (the runs of one repetition follow each other, so their ratio
is little touched by drift across the boot), its median with
bench/kmod/pool.py's bootstrap interval (which runs narrow for few
repetitions; a single one shows a zero-width interval).  The RFC's figures: loop 1 s, dm-userspace/qcow 10 s.
"""
import argparse
import csv
import os
import platform
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "kmod"))
from pool import median_interval  # noqa: E402  (bench/kmod/pool.py)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def host_load(path):
    """Mean and maximum of the other CPU use sampled on the host (% of a core)."""
    if not path or not os.path.exists(path):
        return None
    with open(path) as f:
        values = [float(line.split()[1]) for line in f if len(line.split()) == 2]
    return (statistics.mean(values), max(values)) if values else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--kernel", default="?")
    parser.add_argument("--host-load")
    parser.add_argument("csv")
    args = parser.parse_args()
    runs = {}
    devices = []
    with open(args.csv, newline="") as f:
        for row in csv.DictReader(f):
            if row["device"] not in devices:
                devices.append(row["device"])
            runs[(int(row["rep"]), row["device"])] = row
    if "loop" not in devices:
        sys.exit(f"{args.csv}: no runs on the loop device, the reference")
    reps = sorted({rep for rep, _ in runs})
    load = host_load(args.host_load)
    print(f"## The RFC's first experiment: 20 MiB copied to a fresh image (kernel {args.kernel})")
    print(f"\nHost CPU: {cpu_model()}; {len(reps)} repetitions; "
          + (f"other host CPU use {load[0]:.0f}% of a core on average, at most {load[1]:.0f}%."
             if load else "host load not sampled."))
    print("\n| device | runs | mkfs ms | mount-copy-umount ms | over loop (per rep, median) | 95% interval | "
          "mkfs + copy over loop | daemon requests per run |")
    print("|---|---|---|---|---|---|---|---|")
    for dev in devices:
        mine = [runs[(r, dev)] for r in reps if (r, dev) in runs]
        mkfs = statistics.median(int(r["mkfs_ms"]) for r in mine)
        rfc = statistics.median(int(r["rfc_ms"]) for r in mine)
        counted = [int(r["requests"]) for r in mine if r["requests"] != "-"]
        requests = f"{statistics.median(counted):.0f}" if counted else "-"
        pairs = [(runs[(r, dev)], runs[(r, "loop")]) for r in reps if (r, dev) in runs and (r, "loop") in runs]
        ratio = [int(a["rfc_ms"]) / int(b["rfc_ms"]) for a, b in pairs]
        total = [(int(a["rfc_ms"]) + int(a["mkfs_ms"])) / (int(b["rfc_ms"]) + int(b["mkfs_ms"]))
                 for a, b in pairs]
        if not ratio:
            print(f"| {dev} | {len(mine)} | {mkfs:.0f} | {rfc:.0f} | - | - | - | {requests} |")
            continue
        low, high = median_interval(ratio) if len(ratio) > 1 else (ratio[0], ratio[0])
        print(f"| {dev} | {len(mine)} | {mkfs:.0f} | {rfc:.0f} | {statistics.median(ratio):.2f} | "
              f"{low:.2f}-{high:.2f} | {statistics.median(total):.2f} | {requests} |")


if __name__ == "__main__":
    main()
