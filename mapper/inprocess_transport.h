// The in-process transport: does the kernel target's job with pread/pwrite
// on the map service's devices, so `dmu io`, the oracle tests and the crash
// tests run the engines through the very service code the daemon runs.
//
// Like the kernel it splits guest I/O by block, keeps an extent cache (an
// interval map of the answers), sends MAP requests on misses, and executes
// answers exactly as kmod/include/uapi/linux/dm-userspace.h says: ZERO reads
// return zeros, REMAP goes to the device, DMU_EXT_NEW ranges are filled from
// their COPY sources (zeros elsewhere) except where the waiting write lands,
// then the write, then DONE; a flush syncs the devices written and sends
// COMMIT.  Every message is checked as the kernel checks it; a bad one fails
// the I/O with EIO and names the problem, so protocol bugs in the service
// show up in unit tests.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "common/error.h"
#include "mapper/map_service.h"

namespace dmu::mapper {

class InprocessTransport {
 public:
  explicit InprocessTransport(MapService& service);

  // Guest I/O at any byte offset and length within the virtual disk.
  Result<void> read(uint64_t offset, std::span<uint8_t> out);
  Result<void> write(uint64_t offset, std::span<const uint8_t> data);
  // Discards the whole blocks inside the range (as a device with
  // discard_granularity = block size does).
  Result<void> discard(uint64_t offset, uint64_t length);
  // Syncs the devices written since the last flush, then COMMIT.
  Result<void> flush();

  struct Stats {
    uint64_t requests = 0;  // MAP requests sent
    uint64_t hits = 0;      // block lookups the cache answered
    uint64_t copies = 0;    // COPY messages executed
    uint64_t invalidations = 0;
  };
  const Stats& stats() const { return stats_; }
  size_t cached_extents() const { return cache_.size(); }
  // Forgets every cached extent (what a restarted kernel target would know).
  void drop_cache() { cache_.clear(); }

 private:
  struct Extent {
    uint64_t nr_blocks;
    uint32_t kind;
    uint32_t flags;
    uint32_t dev;
    uint64_t sector;
  };
  struct Answer {
    std::vector<dmu_response> extents, copies;
    int status = 0;  // COMPLETE status, 0 when the answer has extents
    uint64_t id = 0;
    dmu_request request{};  // the MAP it answers (DONE repeats its fields)
  };
  // The cached extent holding block, as (first block, extent).
  const std::pair<const uint64_t, Extent>* lookup(uint64_t block) const;
  void insert(uint64_t block, const Extent& e);
  void erase(uint64_t block, uint64_t nr_blocks);

  // Sends one request and checks and sorts its answer; INVALIDATE messages
  // are applied on the way.
  Result<Answer> exchange(const dmu_request& request);
  Result<void> check_extent(const dmu_response& m) const;
  Result<void> check_copy(const dmu_response& m, const std::vector<dmu_response>& extents) const;
  Result<void> check_device_range(uint32_t dev, uint64_t byte, uint64_t bytes,
                                  const char* what) const;

  Result<Answer> map(uint64_t block, uint64_t nr_blocks, uint32_t flags);
  // Fills the DMU_EXT_NEW extents of an answer except [skip_from, skip_to).
  Result<void> fill_new(const Answer& a, uint64_t skip_from, uint64_t skip_to);
  // DONE for an answered MAP: its id, flags, block and nr_blocks, as the
  // kernel sends it (protocol 2).
  Result<void> done(const dmu_request& map, int status);
  Error protocol_error(const std::string& what) const;

  MapService& service_;
  const uint64_t block_size_;
  const uint64_t virtual_size_;
  std::map<uint64_t, Extent> cache_;  // by first block; entries never overlap
  std::set<unsigned> written_;        // devices written since the last flush
  uint64_t next_id_ = 1;
  Stats stats_;
};

}  // namespace dmu::mapper
