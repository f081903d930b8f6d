// Responder: the test daemon's answer logic, free of I/O so the unit tests
// can check it message by message.  Given a MAP request it builds the answer
// its mode calls for (identity REMAP, ZERO, NEW + COPY, COMPLETE with an
// errno), the pushes of --push-all, and for hostile mode the exact bytes of
// one bad answer together with what the header says write() must return and
// what must become of each request it was written for (Fate).
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "common/error.h"
#include "mapper/control_channel.h"
#include "mapper/protocol.h"
#include "tests/kmod/daemon_config.h"

namespace dmu::testd {

struct Geometry {
  uint64_t target_sectors = 0;
  uint32_t block_sectors = 0;
  uint32_t nr_devs = 0;
  uint64_t features = 0;                // granted by BIND
  uint32_t writable_devs = UINT32_MAX;  // devices 0..n-1 may be written (BIND)
  uint64_t blocks() const { return (target_sectors + block_sectors - 1) / block_sectors; }
  static Geometry from(const mapper::BindInfo& b) {
    return {b.target_sectors, b.block_sectors, b.nr_devs, b.features, b.writable_devs};
  }
};

// What the kernel must do with a request a hostile answer was written for.
// The header: a bad message "fails only the I/O of its request" -- so the
// request fails at once when the bad message names it; bad bytes that name
// no request (a foreign id, id 0, a push id, a write() of the wrong length)
// leave it pending until daemon_timeout fails it; a request answered validly
// before the bad message succeeds.  No COMPLETE follows a hostile answer:
// the answer alone decides.
enum class Fate { Fails, Pending, Succeeds };

std::string_view fate_name(Fate f);

struct RequestFate {
  uint64_t id = 0;
  uint64_t block = 0;
  Fate fate = Fate::Fails;
};

struct HostileAnswer {
  std::vector<uint8_t> bytes;      // one write()
  long expected_return = 0;        // bytes consumed before the bad message, or -EINVAL
  std::vector<RequestFate> fates;  // one per request the answer was written for
  // Sent in a write() of its own afterwards, all of it must be accepted
  // (push-open-limit, open-msgs-limit: FINAL for what it left open).
  std::vector<dmu_response> cleanup;
  // Push ids whose DONE the kernel owes once their fills land: the daemon
  // holds the next hostile answer until they arrived (push-fill-limit).
  std::vector<uint64_t> awaited_dones;
  // Sent in a write() of its own once the --gate file exists, expecting
  // after_gate_expected (push-across-reload: the FINAL of its open push).
  std::vector<dmu_response> after_gate;
  long after_gate_expected = 0;
};

// Limits the kernel documents (kmod/include/uapi/linux/dm-userspace.h).
namespace limits {
inline constexpr size_t kAnswerMessages = 256;  // messages per answer or push
inline constexpr size_t kOpenPushes = 16;       // push batches without FINAL
inline constexpr size_t kPushFills = 64;        // pushes with NEW extents filling
inline constexpr size_t kOpenMsgs = 16384;      // messages of answers without FINAL
}  // namespace limits

class Responder {
 public:
  // Fails when the target cannot support the configured mode (copy needs two
  // devices and the COPY feature, push-all needs PUSH, model a writable
  // device 0, ...).  Model mode's MAP answers come from tests/kmod/model.h,
  // not from here.
  static Result<Responder> create(const DaemonConfig& config, const Geometry& geometry);

  // True when this request gets a hostile answer instead of answer_map().
  bool hostile_for(const dmu_request& q) const;
  // How many hostile requests one hostile answer takes: 2 for new-over-busy
  // (the daemon holds the first until the second arrives), else 1.
  size_t hostile_requests() const;
  // The answer to a MAP request (last message FINAL).
  std::vector<dmu_response> answer_map(const dmu_request& q);
  // The `sequence`-th hostile answer, for hostile_requests() requests: even
  // ones put the answer first, odd ones after a valid INVALIDATE (write()
  // must then return 64 bytes more).
  HostileAnswer hostile_answer(std::span<const dmu_request> qs, uint64_t sequence) const;
  HostileAnswer hostile_answer(const dmu_request& q, uint64_t sequence) const {
    return hostile_answer(std::span<const dmu_request>(&q, 1), sequence);
  }
  // Hostile push-flood: the daemon pushes flood_batch(0), flood_batch(1), ...
  // for config.flood_ms instead of answering anything badly.
  bool floods() const;
  // The n-th flood batch: up to 256 read-only identity extents under a push
  // id of its own, the last FINAL, never overlapping each other.  Batches
  // alternate 4-block and 1-block extents at moving offsets, so later
  // batches split extents of earlier ones (each split is one more extent).
  std::vector<dmu_response> flood_batch(uint64_t n) const;
  // --push-all: the whole target as writable identity extents, one batch per
  // push id, each batch ending FINAL.
  std::vector<std::vector<dmu_response>> push_batches() const;

  bool allocated(uint64_t block) const { return block < allocated_.size() && allocated_[block]; }

 private:
  Responder(const DaemonConfig& config, const Geometry& geometry);
  uint64_t sector_of(uint64_t block) const { return block * geometry_.block_sectors; }
  // End of an answer that starts at q.block: at least the request, at least
  // extent_blocks, never past the target and never into config.blocks.
  uint64_t answer_end(const dmu_request& q, bool readahead) const;
  std::vector<dmu_response> identity(const dmu_request& q) const;
  std::vector<dmu_response> zero_mode(const dmu_request& q);
  std::vector<dmu_response> copy_mode(const dmu_request& q);
  // Splits [begin, end) into runs of equal allocation state and calls
  // f(run_begin, run_end, allocated), which returns how far it got; stops
  // early when f did not get to the run's end.  Returns where it stopped.
  template <class F>
  uint64_t for_each_run(uint64_t begin, uint64_t end, F&& f) const;
  void mark_allocated(uint64_t begin, uint64_t end);

  DaemonConfig config_;
  Geometry geometry_;
  std::vector<bool> allocated_;  // zero/copy: blocks given a NEW extent
};

}  // namespace dmu::testd
