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
  auto lines = mapper::dm_table(name);
  if (!lines) return loops;
  for (const mapper::DmTableLine& line : *lines) {
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

// How far NAME's device is from the leftover of an attach killed before
// any mapping process bound it, by what its kernel state says.
enum class Leftover {
  kNo,          // it may hold a guest's data: not ours to touch
  kNeverBound,  // no daemon ever bound it (I/O in it waits for one)
  kTimedOut,    // none bound in daemon_timeout (I/O fails at once)
  kErrored,     // an earlier clean-up swapped in the error table, then stopped
};

// A record deleted by hand, or another dmu with its own run directory,
// must not cost a guest its data: only a device no daemon is bound to, with
// no allocation nobody committed, is a leftover.  "timed_out" is also where
// a device ends whose daemon served it and died, so only "absent" (no
// daemon bound since the key's state was made) allows failing its I/O.
Result<Leftover> leftover_state(const std::string& name) {
  DMU_ASSIGN_OR_RETURN(auto status, mapper::dm_status(name));
  if (status.size() == 1 && status[0].type == "error") return Leftover::kErrored;
  DMU_ASSIGN_OR_RETURN(std::string daemon, status_field(status, "daemon"));
  DMU_ASSIGN_OR_RETURN(std::string unpublished, status_field(status, "unpublished"));
  if (unpublished != "0") return Leftover::kNo;
  if (daemon == "absent") return Leftover::kNeverBound;
  if (daemon == "timed_out") return Leftover::kTimedOut;
  return Leftover::kNo;
}

}  // namespace

bool made_by_attach(const std::string& name, const mapper::DmInfo& info) {
  return info.exists && info.uuid == dm_uuid_for(name);
}

Result<UnrecordedRemoval> remove_unrecorded_device(const std::string& name) {
  DMU_ASSIGN_OR_RETURN(auto recorded, read_state(name));
  if (recorded) return UnrecordedRemoval::kRecorded;
  DMU_ASSIGN_OR_RETURN(mapper::DmInfo info, mapper::dm_device_info(name));
  if (!info.exists) return UnrecordedRemoval::kAlreadyGone;
  DMU_ASSIGN_OR_RETURN(Leftover state, leftover_state(name));
  if (!made_by_attach(name, info) || state == Leftover::kNo)
    return fail(EEXIST, "dm device " + name + " has no dmu record (" + state_path(name) +
                            ") and was not left by a killed attach; not touching it (dmsetup "
                            "remove " + name + " if it is yours)");
  // Read before the table goes, which lets the autoclear loops go too.
  const auto loops = table_loops(name);
  auto adopted = mapper::DmDevice::adopt(name);
  if (!adopted && adopted.error().code == ENXIO) return UnrecordedRemoval::kAlreadyGone;
  DMU_ASSIGN_OR_RETURN(mapper::DmDevice dm, std::move(adopted));
  // I/O waiting in it for a daemon keeps its opener (blkid) and so the
  // device; nothing in it is anybody's data (no daemon ever answered it).
  Result<void> removed;
  if (state == Leftover::kNeverBound) removed = dm.fail_io();
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
    DMU_TRY(mapper::detach_loop_of(loop, file));
    mapper::wait_loop_released(loop, file);
  }
  return UnrecordedRemoval::kRemoved;
}

}  // namespace dmu::daemon
