#!/usr/bin/env python3
"""Pools the paired ratios of several bench/kmod runs of one kernel.

usage: bench/kmod/pool.py [--abba] BENCH_CSV...

Each repetition of bench/kmod/run.sh ran the userspace target and dm-linear
back to back, so userspace IOPS / dm-linear IOPS of one repetition is one
paired sample.  Under TCG single samples swing far more than the 5% being
asked (vm-recipes §6 "Noise"); pooling the runs of one kernel gives a median
and a geometric mean over enough samples to say on which side of 0.95 the
target is, and the two tails show whether the noise is symmetric.  The
interval is a bootstrap over the pooled samples (5000 resamples, fixed seed):
the range that holds the median ratio in 95% of them.

--abba: one sample per two repetitions instead, the geometric mean of
their two ratios.  run.sh alternates which device goes first (lin-u, then
u-lin), so a pair of repetitions runs each device once in each position and
an order effect cancels out of it; short runs on a disk (--grain) have one
(the second run of a 1 MiB write pair is 15-20% slower, whichever device it
is), which splits the per-repetition ratios into two clusters.
"""
import csv
import random
import statistics
import sys


def paired_ratios(paths, abba=False):
    ratios = {}
    for path in paths:
        iops = {}
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                iops[(int(row["rep"]), row["job"], row["device"])] = float(row["iops"])
        for (rep, job, device), value in iops.items():
            if device != "u" or not iops.get((rep, job, "lin")):
                continue
            ratio = value / iops[(rep, job, "lin")]
            if not abba:
                ratios.setdefault(job, []).append(ratio)
            elif rep % 2 == 1 and iops.get((rep + 1, job, "lin")) and (rep + 1, job, "u") in iops:
                second = iops[(rep + 1, job, "u")] / iops[(rep + 1, job, "lin")]
                ratios.setdefault(job, []).append((ratio * second) ** 0.5)
    return ratios


def median_interval(samples, resamples=5000, seed=1):
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(samples, k=len(samples)))
                     for _ in range(resamples))
    return medians[int(resamples * 0.025)], medians[int(resamples * 0.975) - 1]


def main():
    abba = "--abba" in sys.argv[1:]
    args = [a for a in sys.argv[1:] if a != "--abba"]
    if not args:
        sys.exit(__doc__.strip().splitlines()[2])
    ratios = paired_ratios(args, abba)
    print(f"| job | {'ABBA blocks' if abba else 'paired samples'} | median ratio | 95% interval of the median | "
          "geometric mean | below 0.95 | above 1.05 |")
    print("|---|---|---|---|---|---|---|")
    for job, r in ratios.items():  # in the order the CSVs name them
        low, high = median_interval(r)
        print(f"| {job} | {len(r)} | {statistics.median(r):.3f} | {low:.3f}-{high:.3f} | "
              f"{statistics.geometric_mean(r):.3f} | {sum(x < 0.95 for x in r)} | "
              f"{sum(x > 1.05 for x in r)} |")


if __name__ == "__main__":
    main()
