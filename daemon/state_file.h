// The state record of one attached device, /run/dmu/NAME.json: everything a
// new mapping process needs to rebind to the device after the old one left
// (restart, upgrade) and everything detach needs to tear it down.  Written
// atomically (temporary file, fsync, rename, fsync of the directory), so a
// reader sees the old record or the new one, never a mix.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/error.h"

namespace dmu::daemon {

// One data device of the dm table, in table order.
struct DataDevice {
  std::string file;  // the image file (or scratch store) behind the loop
  std::string loop;  // /dev/loopN
  bool writable = false;

  bool operator==(const DataDevice&) const = default;
};

// A read-only loop device over a file the chain reads only for metadata (a
// qcow2 file whose data lives in an external data file, a vmdk descriptor
// whose extents are files of their own).  It is not in the dm table: it
// exists to hold QEMU's locks on the file for as long as the device does
// (daemon/metadata_loops.h).
struct MetadataLoop {
  std::string file;
  std::string loop;     // /dev/loopN
  bool writer = false;  // writer locks (the writable top image), else reader locks

  bool operator==(const MetadataLoop&) const = default;
};

struct DeviceState {
  // Version 2 records have metadata loops; a record without any is written
  // as version 1, so an older dmu can still detach it, while one with them
  // is refused by an older dmu rather than detached with the loops (and the
  // image's locks) left behind.  Version 3 records name a group (a mapping
  // process that serves several devices, `dmu attach --group`): an older
  // dmu would not find that process by its command line and wait for it in
  // vain, so it must refuse them too.  The version written is the lowest
  // that holds the record.
  static constexpr int kVersion = 3;
  static constexpr int kOldestVersion = 1;

  std::string name;                // dm device name (/dev/mapper/NAME)
  std::string image;               // absolute path of the top image
  std::string format;              // of the top image
  std::vector<std::string> chain;  // every image of the chain, top first
  std::string key;                 // dm-userspace key in the table line
  bool read_only = false;
  uint32_t block_sectors = 0;
  uint64_t target_sectors = 0;
  std::vector<DataDevice> devices;  // chain data files, then the scratch store
  std::string scratch;              // scratch store file (also the last device)
  pid_t pid = 0;                    // mapping process last started (0: none yet)
  pid_t supervisor = 0;             // its supervisor, if it has one (0: none)
  // Files of the chain with no data in the table (version 2 records).
  std::vector<MetadataLoop> metadata_loops;
  // The group whose mapping process serves this device (`dmu serve --group
  // G`, version 3 records); empty: a process of its own (`serve --name`).
  std::string group;
  // Random, made by the attach that set the device up and kept by every
  // rewrite: a detach remembers it before it queues behind another detach of
  // NAME, and leaves alone a device attached again meanwhile (detach.h).
  // Empty in records written before it existed.
  std::string attach_id;

  int version() const { return !group.empty() ? 3 : !metadata_loops.empty() ? 2 : 1; }
  bool operator==(const DeviceState&) const = default;
  std::string node() const { return "/dev/mapper/" + name; }
};

nlohmann::json to_json(const DeviceState& s);
// Refuses records of another version or with missing or mistyped fields,
// naming `where` (the file) and the field.
Result<DeviceState> state_from_json(const nlohmann::json& j, const std::string& where);

// Writes `text` to `path` atomically (see the top of this file).
Result<void> write_file_atomic(const std::string& path, const std::string& text);

Result<void> write_state(const DeviceState& s);
// A fresh attach id (16 hex digits from getrandom).
std::string new_attach_id();
// The record of NAME; std::nullopt when there is none.
Result<std::optional<DeviceState>> read_state(const std::string& name);
// Every record in the runtime directory, by name.  Unreadable records are
// reported in `problems` (one line each) and skipped.
std::vector<DeviceState> list_states(std::vector<std::string>& problems);
// Removes NAME's record and its companion files (stats, scratch, leave
// marker, bind error, the temporaries a killed writer of them left, the log
// unless keep_log: a failed attach points the user at it, and the lock file
// unless keep_lock: its holder keeps the name, which a new lock file would
// give to the next taker).
void remove_state_files(const std::string& name, bool keep_log = false, bool keep_lock = false);

}  // namespace dmu::daemon
