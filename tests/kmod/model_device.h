// The model daemon's device 0 (tests/kmod/model_format.h): a block device
// (or file) opened O_RDWR | O_DIRECT, so the slots it writes bypass the page
// cache and fdatasync() makes them durable on the device under the target.
// I/O goes through 4 KiB-aligned bounce buffers; offsets must be 4 KiB
// aligned, and so must the length of writes.
#pragma once

#include <memory>
#include <string>

#include "common/error.h"
#include "fileio/file.h"

namespace dmu::testd::model {

Result<std::unique_ptr<File>> open_direct(const std::string& path);

}  // namespace dmu::testd::model
