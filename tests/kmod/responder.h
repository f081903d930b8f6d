// Responder: the test daemon's answer logic, free of I/O so the unit tests
// can check it message by message.  Given a MAP request it builds the answer
// its mode calls for (identity REMAP, ZERO, NEW + COPY, COMPLETE with an
// errno), the pushes of --push-all, and for hostile mode the exact bytes of
// one bad answer together with what the header says write() must return.
#pragma once

#include <cstdint>
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
  static Geometry from(const BindInfo& b) {
    return {b.target_sectors, b.block_sectors, b.nr_devs, b.features, b.writable_devs};
  }
};

// What a COMPLETE(id, -EIO) sent after a hostile answer must meet: Rejected
// when the kernel already failed (or finished) the request itself, Accepted
// when the hostile bytes could not have touched it.
enum class FollowUp { Rejected, Accepted, Either };

struct HostileAnswer {
  std::vector<uint8_t> bytes;  // one write()
  long expected_return = 0;    // bytes consumed, or -EINVAL
  FollowUp followup = FollowUp::Either;
};

class Responder {
 public:
  // Fails when the target cannot support the configured mode (copy needs two
  // devices and the COPY feature, push-all needs PUSH, model a writable
  // device 0, ...).  Model mode's MAP answers come from tests/kmod/model.h,
  // not from here.
  static Result<Responder> create(const DaemonConfig& config, const Geometry& geometry);

  // True when this request gets a hostile answer instead of answer_map().
  bool hostile_for(const dmu_request& q) const;
  // The answer to a MAP request (last message FINAL).
  std::vector<dmu_response> answer_map(const dmu_request& q);
  // The `sequence`-th hostile answer: even ones put the bad message first
  // (write() must fail with EINVAL), odd ones after a valid INVALIDATE
  // (write() must return the 64 bytes consumed before it).
  HostileAnswer hostile_answer(const dmu_request& q, uint64_t sequence) const;
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
