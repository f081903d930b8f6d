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
bool made_by_attach(const std::string& name, const DmInfo& info);

// What attach and detach say once they removed one.
inline constexpr const char* kUnrecordedRemoved =
    "removed the device an attach killed before it wrote its record left";

// Removes NAME's unrecorded device and the loop devices of its table; the
// caller holds NAME's lock.  The record is looked at again under it: false
// (nothing done) when an attach wrote one meanwhile.  EEXIST unless no
// mapping process ever bound it and it holds no uncommitted allocation (and
// still carries our uuid).  An open (udev's blkid looks at every new
// device) is waited out for a few seconds, then EBUSY.
Result<bool> remove_unrecorded_device(const std::string& name);

}  // namespace dmu::daemon
