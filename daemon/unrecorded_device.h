// A dm device that carries the uuid dmu attach gives NAME's device but has
// no record in /run/dmu: left by an attach killed between creating the
// device and writing its record (attach.cc: DmDevice::create, then
// write_state).  No process serves it and no record names its loop devices,
// so the next attach of NAME removes it, with the loop devices its table
// holds (they hold the image's locks), and sets NAME up anew.
#pragma once

#include <string>

#include "common/error.h"
#include "mapper/dm_device.h"

namespace dmu::daemon {

// Whether `info` (of dm device NAME) is one dmu attach made for NAME.
bool made_by_attach(const std::string& name, const mapper::DmInfo& info);

// What attach and detach say once they removed one.
inline constexpr const char* kUnrecordedRemoved =
    "removed the device an attach killed before it wrote its record left";

enum class UnrecordedRemoval {
  kRemoved,      // it and its loop devices are gone
  kAlreadyGone,  // somebody else removed it meanwhile (dmsetup remove)
  kRecorded,     // an attach wrote its record meanwhile: nothing done
};

// Removes NAME's unrecorded device and the loop devices of its table; the
// caller holds NAME's lock (records are written under it, so the record
// looked at here stays as it is).  EEXIST unless it still carries our uuid,
// no mapping process is bound to it and it holds no uncommitted allocation.
// When no daemon ever bound it, the I/O waiting in it (udev's blkid reads
// every new device) is failed first, so its openers let it go; EBUSY if one
// still holds it open after libdevmapper's retries.  A device an earlier
// call left with the error table (its removal was refused) is removed too.
Result<UnrecordedRemoval> remove_unrecorded_device(const std::string& name);

}  // namespace dmu::daemon
