// Clean-up of a device an attach killed mid-way left; see unrecorded_device.h.
#include "daemon/unrecorded_device.h"

#include <unistd.h>

#include <climits>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <utility>
#include <vector>

#include "daemon/paths.h"
#include "daemon/state_file.h"
#include "daemon/table_line.h"
#include "mapper/loop_device.h"

namespace dmu::daemon {

namespace {

// The loop devices (path, backing file) among the devices of NAME's table.
std::vector<std::pair<std::string, std::string>> table_loops(const std::string& name) {
  std::vector<std::pair<std::string, std::string>> loops;
  auto lines = dm_table(name);
  if (!lines) return loops;
  for (const DmTableLine& line : *lines) {
    std::istringstream params(line.params);
    std::string word;
    while (params >> word) {
      unsigned maj = 0, min = 0;
      char extra = 0;
      if (std::sscanf(word.c_str(), "%u:%u%c", &maj, &min, &extra) != 2) continue;
      const std::string sys = "/sys/dev/block/" + word;
      std::string file;
      if (std::ifstream backing(sys + "/loop/backing_file"); !std::getline(backing, file))
        continue;  // not a loop device
      char target[PATH_MAX];
      const ssize_t n = ::readlink(sys.c_str(), target, sizeof target - 1);
      if (n <= 0) continue;
      target[n] = 0;
      const std::string dev(target);
      loops.emplace_back("/dev/" + dev.substr(dev.rfind('/') + 1), file);
    }
  }
  return loops;
}

// Whether no mapping process ever bound NAME and the kernel holds no
// allocation nobody committed: only then is the device an attach's
// leftover, and removing it loses nothing.  (A record deleted by hand, or
// another dmu with its own run directory, must not cost a guest its data.)
Result<bool> never_served(const std::string& name) {
  DMU_ASSIGN_OR_RETURN(std::string daemon, userspace_status_field(name, "daemon"));
  DMU_ASSIGN_OR_RETURN(std::string unpublished, userspace_status_field(name, "unpublished"));
  return (daemon == "absent" || daemon == "timed_out") && unpublished == "0";
}

}  // namespace

bool made_by_attach(const std::string& name, const DmInfo& info) {
  return info.exists && info.uuid == dm_uuid_for(name);
}

Result<UnrecordedRemoval> remove_unrecorded_device(const std::string& name) {
  DMU_ASSIGN_OR_RETURN(auto recorded, read_state(name));
  if (recorded) return UnrecordedRemoval::kRecorded;
  DMU_ASSIGN_OR_RETURN(DmInfo info, dm_device_info(name));
  if (!info.exists) return UnrecordedRemoval::kAlreadyGone;
  DMU_ASSIGN_OR_RETURN(bool unserved, never_served(name));
  if (!made_by_attach(name, info) || !unserved)
    return fail(EEXIST, "dm device " + name + " has no dmu record (" + state_path(name) +
                            ") and was not left by a killed attach; not touching it (dmsetup "
                            "remove " + name + " if it is yours)");
  // Read before the table goes, which lets the autoclear loops go too.
  const auto loops = table_loops(name);
  auto adopted = DmDevice::adopt(name);
  if (!adopted && adopted.error().code == ENXIO) return UnrecordedRemoval::kAlreadyGone;
  DMU_ASSIGN_OR_RETURN(DmDevice dm, std::move(adopted));
  // Nothing in it is anybody's data (no daemon ever answered it).
  auto removed = dm.fail_io();
  if (removed) removed = dm.remove();
  if (!removed) {
    dm.release();
    if (removed.error().code == ENXIO) return UnrecordedRemoval::kAlreadyGone;
    if (removed.error().code == EBUSY)
      return fail(EBUSY, "dm device " + name + " is left from an attach that was killed, and " +
                             "something keeps it open; close it and try again");
    return fail(removed.error());
  }
  for (const auto& [loop, file] : loops) {
    DMU_TRY(detach_loop_of(loop, file));
    wait_loop_released(loop, file);
  }
  return UnrecordedRemoval::kRemoved;
}

}  // namespace dmu::daemon
