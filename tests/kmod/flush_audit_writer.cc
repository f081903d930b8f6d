// dmu-flush-audit write: threads write stamped blocks to their own part of
// the device, fdatasync() every 1..K writes and, once fdatasync returned,
// mark the dm-log-writes log with synced-<thread>-<seq>.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <thread>

#include "common/unique_fd.h"
#include "tests/kmod/flush_audit.h"
#include "tests/kmod/log_writes.h"

namespace dmu::testd::audit {
namespace {

struct FreeDeleter {
  void operator()(uint8_t* p) const { std::free(p); }
};

struct ThreadOut {
  uint64_t writes = 0;
  uint64_t fsyncs = 0;
  std::string error;
  std::vector<JournalWrite> w;
  std::vector<JournalSync> s;
};

Result<uint64_t> device_bytes(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return fail(errno_error(path));
  return log_writes::file_or_device_bytes(fd.get(), path);
}

struct Shared {
  Shared(const WriterOptions& opts, const Marker& m, uint64_t r, uint64_t p,
         std::chrono::steady_clock::time_point d)
      : o(opts), marker(m), run(r), part(p), deadline(d) {}
  const WriterOptions& o;
  const Marker& marker;
  uint64_t run;
  uint64_t part;  // bytes per thread
  std::chrono::steady_clock::time_point deadline;
  std::atomic<uint64_t> order{0};
  std::atomic<bool> stop{false};
  std::mutex mark_mu;
};

void worker(Shared& sh, uint32_t t, int fd, ThreadOut& out) {
  const WriterOptions& o = sh.o;
  std::unique_ptr<uint8_t, FreeDeleter> buf(
      static_cast<uint8_t*>(std::aligned_alloc(kUnit, o.block_size)));
  if (!buf) {
    out.error = "thread " + std::to_string(t) + ": out of memory";
    sh.stop = true;
    return;
  }
  std::mt19937_64 rng(sh.run ^ (0x9e3779b97f4a7c15ULL * (t + 1)));
  std::uniform_int_distribution<uint64_t> pick(0, sh.part / o.block_size - 1);
  std::uniform_int_distribution<uint32_t> batch(1, o.fsync_every);
  const uint64_t start = uint64_t{t} * sh.part;
  uint64_t seq = 0, synced = 0;
  auto failed = [&](const std::string& what, int err) {
    out.error = o.device + ": thread " + std::to_string(t) + ": " + what +
                (err ? std::string(": ") + std::strerror(err) : std::string());
    sh.stop = true;
  };
  auto running = [&] {
    return !sh.stop && (!o.max_writes || seq < o.max_writes) &&
           std::chrono::steady_clock::now() < sh.deadline;
  };

  while (running()) {
    for (uint32_t n = batch(rng); n > 0 && running(); --n) {
      const uint64_t offset = start + pick(rng) * o.block_size;
      ++seq;
      for (uint64_t k = 0; k < o.block_size; k += kUnit)
        fill_unit(make_stamp(t, seq, offset + k, sh.run),
                  std::span<uint8_t, kUnit>(buf.get() + k, kUnit));
      ssize_t r;
      do {
        r = ::pwrite(fd, buf.get(), o.block_size, static_cast<off_t>(offset));
      } while (r < 0 && errno == EINTR);
      if (r != static_cast<ssize_t>(o.block_size)) {
        failed("write seq " + std::to_string(seq) + " at " + hex(offset) +
                   (r >= 0 ? " wrote " + std::to_string(r) + " bytes" : std::string()),
               r < 0 ? errno : 0);
        return;
      }
      ++out.writes;
      out.w.push_back({t, seq, offset, ++sh.order});
    }
    if (seq == synced || sh.stop) continue;
    if (::fdatasync(fd) != 0) {
      failed("fdatasync after seq " + std::to_string(seq), errno);
      return;
    }
    ++out.fsyncs;
    const std::string text = mark_text({t, seq});
    {
      // The sync's place in the journal is taken with the mark, under the
      // same lock: marks and journal syncs must come in one order.
      std::lock_guard lock(sh.mark_mu);
      if (auto m = sh.marker(text); !m) {
        failed("mark " + text + ": " + m.error().message, 0);
        return;
      }
      out.s.push_back({t, seq, ++sh.order});
    }
    synced = seq;
  }
}

}  // namespace

Result<WriterResult> run_writer(const WriterOptions& o, const Marker& marker) {
  if (o.threads == 0 || o.threads > 256) return fail(EINVAL, "--threads must be 1..256");
  if (o.block_size == 0 || o.block_size % kUnit || o.block_size > (16u << 20))
    return fail(EINVAL, "--block-size must be a multiple of 4096, at most 16 MiB");
  if (o.fsync_every == 0) return fail(EINVAL, "--fsync-every must be at least 1");
  if (!(o.seconds > 0)) return fail(EINVAL, "--seconds must be positive");
  DMU_ASSIGN_OR_RETURN(uint64_t size, device_bytes(o.device));
  if (o.region_bytes > size)
    return fail(EINVAL, o.device + ": the region (" + std::to_string(o.region_bytes) +
                            " bytes) is larger than the device (" + std::to_string(size) +
                            " bytes)");
  const uint64_t part = o.region_bytes / o.threads / o.block_size * o.block_size;
  if (part == 0)
    return fail(EINVAL, "the region (" + std::to_string(o.region_bytes) +
                            " bytes) leaves no whole block per thread");

  uint64_t run = o.run;
  while (run == 0) {
    std::random_device rd;
    run = (uint64_t{rd()} << 32) ^ rd();
  }
  std::vector<UniqueFd> fds;
  for (uint32_t t = 0; t < o.threads; ++t) {
    UniqueFd fd(::open(o.device.c_str(), O_RDWR | O_CLOEXEC | (o.direct ? O_DIRECT : 0)));
    if (!fd.valid()) return fail(errno_error(o.device + (o.direct ? ": open O_DIRECT" : ": open")));
    fds.push_back(std::move(fd));
  }

  Shared sh(o, marker, run, part,
            std::chrono::steady_clock::now() +
                std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                    std::chrono::duration<double>(o.seconds)));
  std::vector<ThreadOut> outs(o.threads);
  {
    std::vector<std::jthread> threads;
    for (uint32_t t = 0; t < o.threads; ++t)
      threads.emplace_back(worker, std::ref(sh), t, fds[t].get(), std::ref(outs[t]));
  }

  WriterResult res;
  res.journal.run = run;
  res.journal.block_size = o.block_size;
  res.journal.threads = o.threads;
  for (auto& out : outs) {
    res.writes += out.writes;
    res.fsyncs += out.fsyncs;
    if (!out.error.empty()) {
      ++res.errors;
      res.error_messages.push_back(out.error);
    }
    res.journal.writes.insert(res.journal.writes.end(), out.w.begin(), out.w.end());
    res.journal.syncs.insert(res.journal.syncs.end(), out.s.begin(), out.s.end());
  }
  std::sort(res.journal.writes.begin(), res.journal.writes.end(),
            [](const JournalWrite& a, const JournalWrite& b) { return a.order < b.order; });
  std::sort(res.journal.syncs.begin(), res.journal.syncs.end(),
            [](const JournalSync& a, const JournalSync& b) { return a.order < b.order; });
  return res;
}

}  // namespace dmu::testd::audit
