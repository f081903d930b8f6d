// Metadata loops: QEMU's locks on the files an attached chain reads only for
// metadata.
//
// The locks of the data files live on their loop devices' file descriptions
// (LoopOptions::lock), in the kernel until the loops are detached.  Some
// files of a chain hold no guest data and so have no loop device in the dm
// table: a qcow2 file whose data is in an external data file (data_file=),
// a vmdk descriptor whose extents are files of their own.  The mapping
// process still writes the top one (qcow2 metadata).  attach gives each such
// file a read-only loop device outside the table whose only job is to keep
// a description carrying the locks (writer locks for the writable top
// image, reader locks below it): like the data loops, it outlives the
// mapping process and its supervisor however they end, and detach removes
// it.  Unlike them it has no autoclear (nobody keeps it open), so it is
// listed in the state record (DeviceState::metadata_loops).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "common/error.h"
#include "daemon/state_file.h"
#include "fileio/image_lock.h"
#include "formats/chain.h"
#include "mapper/loop_device.h"

namespace dmu::daemon {

struct MetadataFile {
  std::string path;  // canonical (realpath): what the loop device's sysfs shows
  LockMode mode = LockMode::Reader;
  // The image that names the file (LoopOptions::named_by); none for the
  // image the user named.
  std::optional<std::string> named_by;

  bool operator==(const MetadataFile&) const = default;
};

// The images of `chain` whose own file is none of its data files, top
// first, each file once.  `image` is the path the user named (the top
// image's); `writable` whether the top image is attached read-write.
Result<std::vector<MetadataFile>> metadata_files(const formats::Chain& chain,
                                                 const std::string& image, bool writable);

// A read-only, buffered loop device over file.path carrying its locks, with
// autoclear still on: if this process dies before the device is recorded
// and LoopDevice::keep_after_close() is called, the device goes with it.
Result<mapper::LoopDevice> attach_metadata_loop(const MetadataFile& file);

// For a mapping process about to serve (its name lock held): every recorded
// metadata loop still bound to its file is left alone; one that is gone
// (losetup -d, or an attach killed between recording it and keeping it) is
// set up again, after checking that nobody took a conflicting lock on the
// file meanwhile, and the record is rewritten.
Result<void> restore_metadata_loops(DeviceState& state);

// Detaches the record's metadata loops that are still bound to their files
// (and with them the locks), and waits until the kernel lets the files go.
Result<void> release_metadata_loops(const DeviceState& state);

}  // namespace dmu::daemon
