// An Env for the mapping process, whose image files the kernel writes at the
// same time through loop devices doing direct I/O.
//
// The kernel writes guest data straight to the file (O_DIRECT, 512-byte
// sectors) while the mapping process writes metadata into the same file.  If
// the metadata went through the page cache, a metadata write would read,
// patch and dirty a whole page; where the page also holds data (clusters
// below the page size: qcow's 512-byte default, small qcow2 clusters), a
// data write landing in that page meanwhile cannot drop it ("Page cache
// invalidation failure on direct I/O"), the next flush of the loop device
// fails with EIO, and the page's writeback can put old data back over the new.
//
// So the files named here are read and written with O_DIRECT, in whole
// 512-byte sectors: a partial sector is read, patched and written whole.  No
// sector holds both metadata and data (every format's units are whole
// sectors), so the kernel's writes and ours never touch the same sector, and
// the page cache holds nothing of the file.  Writes that end inside the last
// sector of the file extend it to the sector's end.
//
// The file system also zeroes through the page cache: the rest of the last
// block when a file grows (ftruncate) and the partial blocks at the ends of a
// punched hole.  So growing first writes those zeros itself (direct) up to a
// block boundary, and only whole blocks are punched, the rest written with
// zeros.
#pragma once

#include <memory>
#include <set>
#include <string>

#include "fileio/file.h"

namespace dmu {

// Files opened for writing whose canonical path (Env::identity) is in
// `direct` do direct I/O as above, where their file system takes 512-byte
// direct I/O; every other file is opened as posix_env() opens it.
std::unique_ptr<Env> direct_io_env(std::set<std::string> direct);

// Whether `file` (from direct_io_env) does direct I/O.
bool does_direct_io(const File& file);

}  // namespace dmu
