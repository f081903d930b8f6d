# Report of bench/kmod/run.sh: reads bench.csv (rep,job,device,start_s,
# end_s,iops,bw_kib,requests) and the host-load samples (seconds since QEMU
# started, other CPU in % of one core); prints a markdown table with, per
# job, the median of each device, their ratio, the per-repetition ratios,
# their median (each repetition ran the two devices back to back, so its ratio
# is immune to drift across the boot) and the runs during which other work
# used more than 25% of a core.  Variables: kernel (for the header), joborder
# (their order, default "randread randwrite seqwrite"), name (the compared
# device's column title, default "userspace"), ref (the reference's, default
# "dm-linear").
  BEGIN {
    while ((getline l < loadfile) > 0) { split(l, a, " "); n++; lt[n] = a[1]; lo[n] = a[2] }
  }
  function load(s, e,   i, sum, c) {
    sum = 0; c = 0
    for (i = 1; i <= n; i++) if (lt[i] >= s && lt[i] <= e + 2) { sum += lo[i]; c++ }
    return c ? sum / c : 0
  }
  function median(arr, k,   i, j, t, b) {
    for (i = 1; i <= k; i++) b[i] = arr[i]
    for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (b[j] < b[i]) { t = b[i]; b[i] = b[j]; b[j] = t }
    return k % 2 ? b[(k + 1) / 2] : (b[k / 2] + b[k / 2 + 1]) / 2
  }
  NR == 1 { next }
  {
    job = $2; dev = $3; key = job SUBSEP dev
    cnt[key]++; iops[key, cnt[key]] = $6; bw[key, cnt[key]] = $7; req[key] += $8
    l = load($4, $5); if (l > maxload[job]) maxload[job] = l
    if (l > 25) loaded[job] = loaded[job] (loaded[job] == "" ? "" : " ") "rep" $1 "/" dev "(" int(l) "%)"
    jobs[job] = 1
  }
  END {
    if (name == "") name = "userspace"
    if (ref == "") ref = "dm-linear"
    printf "| job (kernel %s) | %s IOPS | %s IOPS | ratio IOPS | %s MiB/s | %s MiB/s | ratio MiB/s | per-rep ratios | median per-rep ratio | daemon requests during runs | max other host load | loaded runs |\n", kernel, ref, name, ref, name
    print "|---|---|---|---|---|---|---|---|---|---|---|---|"
    njobs = split(joborder == "" ? "randread randwrite seqwrite" : joborder, order, " ")
    for (o = 1; o <= njobs; o++) {
      job = order[o]; if (!(job in jobs)) continue
      k = cnt[job, "lin"]
      for (i = 1; i <= k; i++) { a[i] = iops[job, "lin", i]; b[i] = iops[job, "u", i]; c[i] = bw[job, "lin", i]; d[i] = bw[job, "u", i] }
      li = median(a, k); ui = median(b, k); lb = median(c, k); ub = median(d, k)
      reps = ""
      for (i = 1; i <= k; i++) {
        sep = i > 1 ? " " : ""
        r = a[i] > 0 ? b[i] / a[i] : 0
        pr[i] = r
        reps = reps sprintf("%s%.2f", sep, r)
      }
      ri = li > 0 ? ui / li : 0
      rb = lb > 0 ? ub / lb : 0
      flagged = loaded[job] == "" ? "none" : loaded[job]
      printf "| %s | %.0f | %.0f | %.2f | %.1f | %.1f | %.2f | %s | %.2f | %d | %d%% | %s |\n", job, li, ui, ri, lb / 1024, ub / 1024, rb, reps, median(pr, k), req[job, "u"], maxload[job], flagged
    }
  }
