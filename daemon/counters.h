// The mapping process's own counters for one device, next to the kernel's
// (`dmsetup status`).  Atomics: the request loop and the commit thread both
// count; `dmu stats` reads them from NAME.stats.json, which the process
// rewrites about once a second while they change.
#pragma once

#include <atomic>
#include <cstdint>

#include <nlohmann/json.hpp>

namespace dmu::daemon {

struct Counters {
  std::atomic<uint64_t> requests{0};      // messages read from the kernel
  std::atomic<uint64_t> map_reads{0};
  std::atomic<uint64_t> map_writes{0};
  std::atomic<uint64_t> map_discards{0};
  std::atomic<uint64_t> dones{0};
  std::atomic<uint64_t> done_errors{0};
  std::atomic<uint64_t> commits{0};       // COMMIT requests answered
  std::atomic<uint64_t> commit_runs{0};   // image commits made for them (coalesced)
  std::atomic<uint64_t> commit_errors{0};
  std::atomic<uint64_t> responses{0};     // messages the kernel accepted
  std::atomic<uint64_t> rejected{0};      // messages the kernel refused
  std::atomic<uint64_t> grows{0};         // data device growths (chunks)
  std::atomic<uint64_t> adopted{0};       // allocation records adopted at bind
  std::atomic<uint64_t> pushed{0};        // extents pushed unasked (after bind)
  std::atomic<uint64_t> stream_pushed{0};  // extents pushed ahead of sequential reads
  std::atomic<uint64_t> waited{0};        // MAPs that waited for an earlier answer's DONE
  // Requests read while an image commit waited for the disk: reads answered
  // in that window, and the rest, held until the commit ended.
  std::atomic<uint64_t> during_commit_answered{0};
  std::atomic<uint64_t> during_commit_held{0};
  // NEW extents answered (runs of fresh host space; also any the kernel
  // then refused, whose space a failed DONE gives back).
  std::atomic<uint64_t> allocations{0};
  std::atomic<uint64_t> allocated_blocks{0};  // blocks those extents cover
  // Image commits, timed from the commit thread asking for the service to
  // the engine's commit returning (reads are answered meanwhile, other
  // requests wait as long: served_device.h).
  std::atomic<uint64_t> commit_us_total{0};
  std::atomic<uint64_t> commit_us_max{0};
  std::atomic<uint64_t> commit_us_last{0};

  // One image commit took `us` microseconds.
  void commit_took(uint64_t us);

  // Sum of everything, to notice a change cheaply.
  uint64_t activity() const;
};

// The counters, plus "cpu-ms": the CPU time (user + system) of the whole
// mapping process so far -- shared by a group's devices, not split among
// them.
nlohmann::json to_json(const Counters& c);

}  // namespace dmu::daemon
