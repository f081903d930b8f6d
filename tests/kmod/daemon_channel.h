// DaemonChannel: what the test daemon needs from its control channel.  The
// real one (KernelChannel) forwards to mapper/control_channel.h; the unit
// tests put a scripted fake kernel behind the same interface.  Every fake
// behaviour has a real counterpart in the VM cases (tests/vm/cases/kmod-*).
#pragma once

#include <chrono>
#include <cstdint>
#include <span>
#include <vector>

#include "common/error.h"
#include "mapper/control_channel.h"

namespace dmu::testd {

class DaemonChannel {
 public:
  virtual ~DaemonChannel() = default;
  virtual Result<size_t> read_requests(std::span<dmu_request> out,
                                       std::chrono::milliseconds timeout) = 0;
  virtual Result<mapper::WriteOutcome> write_responses(std::span<const dmu_response> batch) = 0;
  // write() of raw bytes; returns bytes written or -errno.
  virtual long write_raw(std::span<const uint8_t> bytes) = 0;
  virtual Result<std::vector<dmu_extent_info>> list_extents() = 0;
  // The unpublished allocation records, in application order.
  virtual Result<std::vector<dmu_allocation>> list_allocations() = 0;
};

class KernelChannel final : public DaemonChannel {
 public:
  explicit KernelChannel(mapper::ControlChannel& channel) : channel_(channel) {}
  Result<size_t> read_requests(std::span<dmu_request> out,
                               std::chrono::milliseconds timeout) override {
    return channel_.read_requests(out, timeout);
  }
  Result<mapper::WriteOutcome> write_responses(std::span<const dmu_response> batch) override {
    return channel_.write_responses(batch);
  }
  long write_raw(std::span<const uint8_t> bytes) override { return channel_.write_raw(bytes); }
  Result<std::vector<dmu_extent_info>> list_extents() override { return channel_.list_extents(); }
  Result<std::vector<dmu_allocation>> list_allocations() override {
    return channel_.list_allocations();
  }

 private:
  mapper::ControlChannel& channel_;
};

}  // namespace dmu::testd
