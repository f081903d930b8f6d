// ControlChannel: the daemon's end of /dev/dm-userspace.  One object owns one
// open control file bound (at most once) to one target: BIND negotiates
// version and features, read_requests() waits with poll() and reads a batch,
// write_responses() writes a batch and reports exactly how much of it the
// kernel accepted (the kernel stops at the first bad message),
// list_extents() walks DMU_IOC_LIST_EXTENTS and list_allocations()
// DMU_IOC_LIST_ALLOCATIONS (the unpublished records a restarted daemon adopts
// before it answers anything).  Failures are values naming the device and the
// operation; closing the object unbinds.  read_requests() and
// write_responses() may run in different threads at the same time (the
// kernel allows it and the object keeps no state they share).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/unique_fd.h"
#include "mapper/protocol.h"

namespace dmu::mapper {

inline constexpr const char* kControlDevicePath = "/dev/" DMU_CONTROL_NAME;

struct BindInfo {
  uint32_t version_major = 0;  // the kernel's
  uint32_t version_minor = 0;
  uint32_t version_patch = 0;
  uint64_t features = 0;  // granted
  uint64_t target_sectors = 0;
  uint32_t block_sectors = 0;
  uint32_t nr_devs = 0;
  uint64_t resent = 0;         // unanswered requests queued again for this daemon
  uint64_t allocations = 0;    // unpublished allocation records (list_allocations())
  uint64_t redelivered = 0;    // DONEs a daemon that left had read, queued again
  uint32_t writable_devs = 0;  // devices 0..writable_devs-1 may be written
};

// What one write() of a batch achieved.  The kernel consumes messages in
// order and stops at the first one it rejects.
struct WriteOutcome {
  size_t accepted = 0;  // messages consumed
  int error = 0;        // 0: all consumed; else the errno that ended it
  bool complete() const { return error == 0; }
};

// Interprets the return value of write() of `total_bytes` of messages (ret,
// and errno when ret < 0) as the header promises: -EINVAL alone means the
// first message was refused (or the length was not a whole number of
// messages); a short count means the message right after it was refused.
// Other errors (EBADF, ENODEV, ...) are failures of the channel itself.
Result<WriteOutcome> interpret_write(long ret, int err, size_t total_bytes,
                                     const std::string& what);

// "kernel speaks protocol 3.0.0, this daemon 2.0.0": the versions of a BIND
// the kernel refused (it wrote its own version back).
std::string version_mismatch(const dmu_bind& kernel);

// One DMU_IOC_LIST_ALLOCATIONS call on `req` (start, buf and max filled in):
// 0 with req.count and req.next set, or -errno.
using ListAllocationsCall = std::function<int(dmu_list_allocations& req)>;

// Pages through LIST_ALLOCATIONS as the header says: from cursor 0, `page`
// records at a time, again with start = next until a page comes back short;
// at most max_total records.  A page larger than asked for, or a full page
// that hands back the cursor it was given, is a protocol error.
Result<std::vector<dmu_allocation>> walk_allocations(const ListAllocationsCall& call, uint32_t page,
                                                     size_t max_total, const std::string& what);

class ControlChannel {
 public:
  // Opens the control device (non-blocking reads; poll() does the waiting).
  static Result<ControlChannel> open(const std::string& path = kControlDevicePath);
  // Whether path is there and is the character device whose number the
  // loaded module registered (sysfs_dev, "MAJOR:MINOR"), without opening it:
  // an attach checks this before it sets anything up, so a missing module
  // or a node left on a static /dev is one clear line, not a failed table
  // load.
  static Result<void> check_present(
      const std::string& path = kControlDevicePath,
      const std::string& sysfs_dev = "/sys/class/misc/" DMU_CONTROL_NAME "/dev");

  ControlChannel(ControlChannel&&) = default;
  ControlChannel& operator=(ControlChannel&&) = default;
  ~ControlChannel() = default;

  // Binds to the device whose table line names `key`.  Refuses a kernel whose
  // major version differs from ours (EPROTO, naming both versions); `features`
  // are the ones wanted.
  Result<BindInfo> bind(const std::string& key, uint64_t features = DMU_FEATURE_ALL);

  // Waits up to `timeout` for requests, then reads as many as fit in `out`.
  // Returns 0 on timeout or when a signal interrupted the wait.
  Result<size_t> read_requests(std::span<dmu_request> out, std::chrono::milliseconds timeout);

  // Writes a batch in one write().
  Result<WriteOutcome> write_responses(std::span<const dmu_response> batch);

  // Writes raw bytes in one write() and returns write()'s result as-is
  // (bytes, or -errno): for tests of the kernel's validation only.
  long write_raw(std::span<const uint8_t> bytes);

  // Cached extents that end after start_block, in block order, up to
  // max_total of them.
  Result<std::vector<dmu_extent_info>> list_extents(uint64_t start_block = 0,
                                                    size_t max_total = SIZE_MAX);

  // Every unpublished allocation record, in the order the answers were
  // applied (pages of DMU_IOC_LIST_ALLOCATIONS until one comes back short),
  // up to max_total of them.
  Result<std::vector<dmu_allocation>> list_allocations(size_t max_total = SIZE_MAX);

  const std::string& path() const { return path_; }
  const std::string& key() const { return key_; }
  int fd() const { return fd_.get(); }

 private:
  ControlChannel(UniqueFd fd, std::string path) : fd_(std::move(fd)), path_(std::move(path)) {}
  std::string what() const;  // "/dev/dm-userspace (key foo)" for messages

  UniqueFd fd_;
  std::string path_;
  std::string key_;
};

}  // namespace dmu::mapper
