// RawChannel: /dev/dm-userspace through bare syscalls, for probing the
// kernel's side of the protocol where the product's ControlChannel would
// hide what is being tested: blocking read() in one thread while another
// writes, a BIND with a wrong version, one LIST ioctl with a large max.
// Errors are values naming the operation; the fd closes with the object.
#pragma once

#include <linux/dm-userspace.h>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/unique_fd.h"

namespace dmu::kprobe {

class RawChannel {
 public:
  // blocking: read() sleeps until a request is queued (no O_NONBLOCK).
  static Result<RawChannel> open(bool blocking);

  // BIND; on failure the Error's code is the ioctl's errno and *out still
  // holds what the kernel wrote back.
  Result<void> bind(const std::string& key, uint64_t features, dmu_bind* out,
                    uint32_t version_major = DMU_VERSION_MAJOR);
  // One read(); 0 messages only for a non-blocking channel with nothing queued.
  Result<std::vector<dmu_request>> read(size_t max);
  // One write() of the whole batch; returns write()'s result as bytes.
  Result<size_t> write(std::span<const dmu_response> batch);
  // One LIST ioctl each, as the kernel answers it.
  Result<dmu_list_extents> list_extents_once(uint64_t start, std::vector<dmu_extent_info>& out);
  Result<std::vector<dmu_allocation>> list_allocations();

  int fd() const { return fd_.get(); }

 private:
  explicit RawChannel(UniqueFd fd) : fd_(std::move(fd)) {}
  UniqueFd fd_;
};

// Builders: every field a message kind does not use stays zero.
dmu_response extent(uint64_t id, uint64_t block, uint64_t nr, uint32_t kind, uint32_t flags,
                    uint32_t dev, uint64_t sector, bool final);
dmu_response complete(uint64_t id, int32_t status);
dmu_response committed(uint64_t id, int32_t status);
dmu_response copy(uint64_t id, uint64_t sector, uint64_t nr_sectors, uint32_t src_dev,
                  uint64_t src_sector, bool final);

}  // namespace dmu::kprobe
