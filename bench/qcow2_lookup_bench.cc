// Extent lookups per second of the qcow2 engine: map() calls on a 4 GiB
// image (64 KiB clusters) held in a MemEnv, so the figure is the engine's
// own cost (L1/L2 walk, cache, run merging), not the disk's.
//   contiguous:  every cluster allocated in guest order; a 4 KiB lookup at a
//                random offset, and a whole-disk walk (one answer per run)
//   fragmented:  clusters allocated in random order, so no two neighbours
//                are contiguous; a 1 MiB lookup answers one cluster
//   cold_cache:  the fragmented image with an L2 cache of 4 tables, so most
//                lookups read their L2 table from the file
// Run: build-<you>/bench/qcow2_lookup_bench --benchmark_min_time=1
#include <benchmark/benchmark.h>

#include <algorithm>
#include <memory>
#include <numeric>
#include <random>

#include "fileio/mem_env.h"
#include "formats/qcow2/qcow2_image.h"

namespace {

using namespace dmu;
using formats::Access;

constexpr uint64_t kSize = 4ull << 30;
constexpr uint64_t kCluster = 64 << 10;

// Builds the image once per layout: allocations go through the normal
// write protocol (prepare_write, write_done, commit) without data.
MemEnv& image(bool fragmented) {
  static std::unique_ptr<MemEnv> envs[2];
  auto& env = envs[fragmented];
  if (env) return *env;
  env = std::make_unique<MemEnv>();
  formats::CreateOptions o;
  o.virtual_size = kSize;
  if (!formats::qcow2::create(*env, "bench.qcow2", o)) std::abort();
  auto im = formats::qcow2::open(*env, "bench.qcow2", Access::ReadWrite);
  if (!im) std::abort();
  std::vector<uint64_t> order(kSize / kCluster);
  std::iota(order.begin(), order.end(), 0);
  if (fragmented) std::shuffle(order.begin(), order.end(), std::mt19937(1));
  if (!fragmented) {
    for (uint64_t off = 0; off < kSize; off += 32 << 20) {
      auto t = (*im)->prepare_write(off, 32 << 20);
      if (!t || !(*im)->write_done(t->token, true)) std::abort();
    }
  } else {
    for (uint64_t c : order) {
      auto t = (*im)->prepare_write(c * kCluster, kCluster);
      if (!t || !(*im)->write_done(t->token, true)) std::abort();
    }
  }
  if (!(*im)->commit()) std::abort();
  return *env;
}

std::unique_ptr<formats::Image> open(bool fragmented, uint64_t l2_cache_bytes) {
  formats::qcow2::OpenOptions options;
  options.l2_cache_bytes = l2_cache_bytes;
  auto im = formats::qcow2::open(image(fragmented), "bench.qcow2", Access::ReadOnly, options);
  if (!im) std::abort();
  return std::move(*im);
}

void lookups(benchmark::State& state, bool fragmented, uint64_t cache, uint64_t length) {
  auto im = open(fragmented, cache);
  std::mt19937_64 rng(7);
  uint64_t bytes = 0;
  for (auto _ : state) {
    uint64_t off = (rng() % (kSize / 4096)) * 4096;
    auto m = im->map(off, std::min(length, kSize - off));
    if (!m) state.SkipWithError(m.error().message.c_str());
    bytes += m->length;
    benchmark::DoNotOptimize(m->host_offset);
  }
  state.SetItemsProcessed(int64_t(state.iterations()));
  state.counters["resolved_MiB/s"] =
      benchmark::Counter(double(bytes) / (1 << 20), benchmark::Counter::kIsRate);
}

void BM_Contiguous4KiB(benchmark::State& s) {
  lookups(s, false, 32 << 20, 4096);
}
void BM_Fragmented1MiB(benchmark::State& s) {
  lookups(s, true, 32 << 20, 1 << 20);
}
void BM_ColdCache1MiB(benchmark::State& s) {
  lookups(s, true, 4 * kCluster, 1 << 20);
}

void BM_WholeDiskWalkContiguous(benchmark::State& state) {
  auto im = open(false, 32 << 20);
  uint64_t calls = 0;
  for (auto _ : state) {
    for (uint64_t pos = 0; pos < kSize;) {
      auto m = im->map(pos, kSize - pos);
      if (!m) state.SkipWithError(m.error().message.c_str());
      pos += m->length;
      ++calls;
    }
  }
  state.counters["map_calls_per_walk"] = double(calls) / double(state.iterations());
  state.SetBytesProcessed(int64_t(state.iterations() * kSize));
}

BENCHMARK(BM_Contiguous4KiB);
BENCHMARK(BM_Fragmented1MiB);
BENCHMARK(BM_ColdCache1MiB);
BENCHMARK(BM_WholeDiskWalkContiguous);

}  // namespace

BENCHMARK_MAIN();
