// DmDevice: one device-mapper device created through libdevmapper and owned
// for its lifetime (removed on destruction unless release()d).  Works with
// and without udev: when udev is not running (or DM_DISABLE_UDEV is set) the
// library is told not to wait for udev and creates /dev/mapper/NAME itself.
// libdevmapper's log lines are captured and become the context of errors.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/error.h"

namespace dmu::mapper {

// One table line: <start> <length> <type> <params>, in 512-byte sectors.
struct DmTableLine {
  uint64_t start = 0;
  uint64_t length = 0;
  std::string type;
  std::string params;
};

struct DmCreateOptions {
  bool read_only = false;
  std::string uuid = {};  // optional, e.g. "DMU-<something>"
};

class DmDevice {
 public:
  static Result<DmDevice> create(const std::string& name, const std::vector<DmTableLine>& table,
                                 const DmCreateOptions& options = {});
  // Takes ownership of an existing device (e.g. to remove a leftover).
  static Result<DmDevice> adopt(const std::string& name);

  DmDevice(DmDevice&& other) noexcept;
  DmDevice& operator=(DmDevice&& other) noexcept;
  DmDevice(const DmDevice&) = delete;
  DmDevice& operator=(const DmDevice&) = delete;
  // Removes the device (errors ignored; call remove() to see them).
  ~DmDevice();

  // `dmsetup status NAME`: one line per target, params only for one target.
  Result<std::vector<DmTableLine>> status() const;
  // `dmsetup message NAME <sector> <text>`; returns the target's reply.
  Result<std::string> message(const std::string& text, uint64_t sector = 0) const;
  // Removes the device now; retries briefly while something (udev, blkid)
  // still holds it open.
  Result<void> remove();
  // Replaces the table with the error target, as `dmsetup remove --force`
  // does before removing: the swap suspends the old table without flushing,
  // so I/O it holds waiting (for a daemon that never comes) goes back to dm
  // core and then fails, and its openers (blkid) let go.  Loses that I/O:
  // only for a device nobody may still use.
  Result<void> fail_io();
  // Gives up ownership: the device outlives this object.
  void release() { name_.clear(); }

  const std::string& name() const { return name_; }
  std::string node_path() const { return "/dev/mapper/" + name_; }
  dev_t dev() const { return dev_; }

  // True when libdevmapper can talk to the kernel's device mapper.
  static bool available();

 private:
  // fail_io's way back when the swap failed after the suspend.
  void undo_failed_swap();
  DmDevice() = default;

  std::string name_;
  dev_t dev_ = 0;
};

// `dmsetup message NAME <sector> <text>` to any dm device, owned or not
// (e.g. a dm-log-writes mark); returns the target's reply.
Result<std::string> dm_message(const std::string& name, const std::string& text,
                               uint64_t sector = 0);

// What `dmsetup info NAME` says about a device we may not own.
struct DmInfo {
  bool exists = false;
  int32_t open_count = 0;  // openers of /dev/mapper/NAME (a mount counts)
  bool suspended = false;
  bool read_only = false;
  dev_t dev = 0;
  std::string uuid;  // "" when it has none
};
Result<DmInfo> dm_device_info(const std::string& name);
// `dmsetup status NAME` / `dmsetup table NAME` of a device we may not own.
Result<std::vector<DmTableLine>> dm_status(const std::string& name);
Result<std::vector<DmTableLine>> dm_table(const std::string& name);

}  // namespace dmu::mapper
