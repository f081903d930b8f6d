// `dmu-kmod-probe serve`: a two-thread identity daemon on ONE control fd.
// The reader thread sleeps in a blocking read(); the main thread answers
// through write() on the same fd meanwhile.  A kernel that held one lock
// across the sleeping read() and the write() would stall the writer: a
// watchdog reports any write() that takes longer than 5 s and exits 1.
#include "tests/kprobe/scenarios.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <deque>
#include <mutex>
#include <thread>

#include "tests/kprobe/raw_channel.h"

namespace dmu::kprobe {

namespace {

using Clock = std::chrono::steady_clock;

std::atomic<bool> g_stop{false};
std::atomic<bool> g_relocate{false};
void on_term(int) {
  g_stop = true;
}
void on_usr1(int) {
  g_relocate = true;
}

struct Counters {
  std::atomic<uint64_t> maps{0}, discards{0}, commits{0}, dones{0}, done_errors{0};
  std::atomic<uint64_t> writes{0}, rejected{0};
};

// The answer to one request, appended to out.
void answer(const dmu_request& q, const dmu_bind& b, Counters& c, std::vector<dmu_response>& out) {
  switch (q.type) {
    case DMU_REQ_MAP:
      if (q.flags & DMU_MAP_DISCARD) {
        c.discards++;
        out.push_back(complete(q.id, 0));
        return;
      }
      c.maps++;
      out.push_back(extent(q.id, q.block, q.nr_blocks, DMU_EXT_REMAP, DMU_EXT_WRITABLE, 0,
                           q.block * b.block_sectors, true));
      return;
    case DMU_REQ_COMMIT:
      c.commits++;
      out.push_back(committed(q.id, 0));
      return;
    case DMU_REQ_DONE:
      c.dones++;
      if (q.status) c.done_errors++;
      return;
    default:
      return;
  }
}

void print_counters(const Counters& c) {
  std::fprintf(stderr,
               "dmu-kmod-probe: event=counters maps=%llu discards=%llu commits=%llu dones=%llu "
               "done_errors=%llu writes=%llu rejected=%llu\n",
               (unsigned long long)c.maps, (unsigned long long)c.discards,
               (unsigned long long)c.commits, (unsigned long long)c.dones,
               (unsigned long long)c.done_errors, (unsigned long long)c.writes,
               (unsigned long long)c.rejected);
}

}  // namespace

// The push SIGUSR1 asks for: block `from` as a NEW extent at block `to`'s
// sectors, its old contents copied from its own.
std::vector<dmu_response> relocation(uint64_t from, uint64_t to, uint32_t bs) {
  const uint64_t id = DMU_PUSH_ID | 1;
  return {extent(id, from, 1, DMU_EXT_REMAP, DMU_EXT_WRITABLE | DMU_EXT_NEW, 0, to * bs, false),
          copy(id, from * bs, bs, 0, from * bs, true)};
}

int serve(const ServeOptions& options) {
  const std::string& key = options.key;
  auto ch = RawChannel::open(/*blocking=*/true);
  if (!ch) return std::fprintf(stderr, "dmu-kmod-probe: %s\n", ch.error().message.c_str()), 1;
  dmu_bind b{};
  if (auto r = ch->bind(key, DMU_FEATURE_ALL, &b); !r)
    return std::fprintf(stderr, "dmu-kmod-probe: %s\n", r.error().message.c_str()), 1;
  std::signal(SIGTERM, on_term);
  std::signal(SIGINT, on_term);
  std::signal(SIGUSR1, on_usr1);
  std::fprintf(stderr, "dmu-kmod-probe: event=ready pid=%d resent=%llu allocations=%llu\n",
               int(::getpid()), (unsigned long long)b.resent, (unsigned long long)b.allocations);

  Counters c;
  std::mutex m;
  std::condition_variable cv;
  std::deque<dmu_request> inbox;
  std::atomic<int64_t> write_started{0};  // ns since epoch of the write() under way, 0 if none

  std::thread reader([&] {
    for (;;) {
      auto r = ch->read(64);
      if (!r) {
        std::fprintf(stderr, "dmu-kmod-probe: event=read_failed error=\"%s\"\n",
                     r.error().message.c_str());
        g_stop = true;
        cv.notify_one();
        return;
      }
      std::lock_guard lock(m);
      inbox.insert(inbox.end(), r->begin(), r->end());
      cv.notify_one();
    }
  });
  reader.detach();  // blocked in read() at exit; the process ends it

  std::thread watchdog([&] {
    while (!g_stop) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      int64_t started = write_started;
      if (started && Clock::now().time_since_epoch().count() - started > 5'000'000'000LL) {
        std::fprintf(stderr, "dmu-kmod-probe: event=write_stalled seconds=5\n");
        std::_Exit(1);
      }
    }
  });
  watchdog.detach();

  while (!g_stop) {
    std::vector<dmu_request> batch;
    {
      std::unique_lock lock(m);
      cv.wait_for(lock, std::chrono::milliseconds(100), [&] { return !inbox.empty() || g_stop; });
      batch.assign(inbox.begin(), inbox.end());
      inbox.clear();
    }
    std::vector<dmu_response> out;
    for (const auto& q : batch) answer(q, b, c, out);
    if (g_relocate.exchange(false) && options.relocate_to) {
      auto push = relocation(options.relocate, options.relocate_to, b.block_sectors);
      if (auto w = ch->write(push); !w || *w != push.size() * sizeof(dmu_response)) {
        std::fprintf(stderr, "dmu-kmod-probe: event=relocate_failed\n");
        return 1;
      }
      std::fprintf(stderr, "dmu-kmod-probe: event=relocated block=%llu to=%llu\n",
                   (unsigned long long)options.relocate, (unsigned long long)options.relocate_to);
    }
    if (out.empty()) continue;
    // Every answer here is one message: after one the kernel refused
    // (EINVAL, or a short count), go on with the next.
    for (size_t pos = 0; pos < out.size();) {
      std::span<const dmu_response> rest(out.data() + pos, out.size() - pos);
      write_started = Clock::now().time_since_epoch().count();
      auto w = ch->write(rest);
      write_started = 0;
      c.writes++;
      if (w && *w == rest.size_bytes()) break;
      if (!w && w.error().code != EINVAL) {
        std::fprintf(stderr, "dmu-kmod-probe: event=write_failed error=\"%s\"\n",
                     w.error().message.c_str());
        return 1;
      }
      size_t accepted = w ? *w / sizeof(dmu_response) : 0;
      c.rejected++;
      std::fprintf(stderr, "dmu-kmod-probe: event=rejected id=%llu\n",
                   (unsigned long long)rest[accepted].id);
      pos += accepted + 1;
    }
  }
  print_counters(c);
  std::fprintf(stderr, "dmu-kmod-probe: event=exit rc=0\n");
  std::fflush(stderr);
  std::_Exit(0);  // the reader sleeps in read(); closing the fd unbinds
}

}  // namespace dmu::kprobe
