// ControlChannel: the daemon's end of /dev/dm-userspace.  One object owns one
// open control file bound (at most once) to one target: BIND negotiates
// version and features, read_requests() waits with poll() and reads a batch,
// write_responses() writes a batch and reports exactly how much of it the
// kernel accepted (the kernel stops at the first bad message), and
// list_extents() walks DMU_IOC_LIST_EXTENTS.  Failures are values naming the
// device and the operation; closing the object unbinds.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "common/error.h"
#include "mapper/protocol.h"
#include "mapper/unique_fd.h"

namespace dmu {

inline constexpr const char* kControlDevicePath = "/dev/" DMU_CONTROL_NAME;

struct BindInfo {
  uint32_t version_major = 0;  // the kernel's
  uint32_t version_minor = 0;
  uint32_t version_patch = 0;
  uint64_t features = 0;  // granted
  uint64_t target_sectors = 0;
  uint32_t block_sectors = 0;
  uint32_t nr_devs = 0;
  uint64_t resent = 0;  // unanswered requests queued again for this daemon
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

class ControlChannel {
 public:
  // Opens the control device (non-blocking reads; poll() does the waiting).
  static Result<ControlChannel> open(const std::string& path = kControlDevicePath);

  ControlChannel(ControlChannel&&) = default;
  ControlChannel& operator=(ControlChannel&&) = default;
  ~ControlChannel() = default;

  // Binds to the target whose table line names `key`.  Refuses a kernel whose
  // major version differs from ours; `features` are the ones wanted.
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

}  // namespace dmu
