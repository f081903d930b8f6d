// LoopDevice: a loop block device over an image file, owned for its
// lifetime.  attach() takes a free /dev/loopN and configures it atomically
// with LOOP_CONFIGURE (direct I/O where the file system allows it, so guest
// data skips the host page cache; optional read-only; autoclear so the device
// goes away with its last user even if we crash); destruction detaches it.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>

#include "common/error.h"
#include "common/unique_fd.h"
#include "fileio/image_lock.h"

namespace dmu::mapper {

struct LoopOptions {
  bool read_only = false;
  // Ask for direct I/O; if the backing file system refuses it, the device is
  // set up with buffered I/O instead (direct_io() tells which one it got).
  bool direct_io = true;
  // Detach automatically when the last opener (dm table, us) closes.
  bool autoclear = true;
  // Logical block size of the loop device; 512 keeps 512-byte direct I/O
  // working for the guest.
  uint32_t block_size = 512;
  // QEMU-compatible image locks placed on the backing file's description
  // before the loop device takes it (ImageLock::place): they last exactly as
  // long as the loop device, whoever set it up and whatever became of them.
  std::optional<LockMode> lock{};
  // The image that names `file` (a backing file, data file or extent).  When
  // set, only a regular file is accepted: a hostile image naming /dev/sda
  // would hand the guest a host device.  Checked with fstat() on the
  // descriptor the loop device gets, so nothing can swap the file between
  // the check and the attach.
  std::optional<std::string> named_by{};
};

class LoopDevice {
 public:
  static Result<LoopDevice> attach(const std::string& file, const LoopOptions& options = {});

  LoopDevice(LoopDevice&& other) noexcept;
  LoopDevice& operator=(LoopDevice&& other) noexcept;
  LoopDevice(const LoopDevice&) = delete;
  LoopDevice& operator=(const LoopDevice&) = delete;
  // Detaches (errors are ignored here; call detach() to see them).
  ~LoopDevice();

  // Gives up ownership without detaching: the loop device stays attached
  // while another opener (a dm table) holds it and goes away with its last
  // close (autoclear), so it outlives this process.
  void release() { fd_.reset(); }

  // Clears autoclear: the device then stays attached after its last close,
  // until someone detaches it (detach_loop_of).  For a loop device nobody
  // else opens, set up with autoclear so that a crash before this call
  // leaves nothing behind.
  Result<void> keep_after_close();

  // Detaches now.  While another opener (a dm table) still holds the device,
  // the kernel defers the detach to its last close (autoclear).
  Result<void> detach();

  const std::string& path() const { return path_; }  // /dev/loopN
  const std::string& file() const { return file_; }
  int number() const { return number_; }
  dev_t dev() const { return dev_; }
  bool read_only() const { return read_only_; }
  bool direct_io() const { return direct_io_; }
  uint64_t size_bytes() const { return size_bytes_; }
  // "major:minor", the form a dm table line accepts.
  std::string dev_string() const;

 private:
  LoopDevice() = default;

  UniqueFd fd_;  // open /dev/loopN; the loop stays attached while held
  std::string path_;
  std::string file_;
  int number_ = -1;
  dev_t dev_ = 0;
  bool read_only_ = false;
  bool direct_io_ = false;
  uint64_t size_bytes_ = 0;
};

// Opens loop_path (/dev/loopN) read-only after checking that it is still
// bound to `file` (same device and inode): a loop number recorded earlier may
// have been freed and reused by someone else since.
Result<UniqueFd> open_loop_of(const std::string& loop_path, const std::string& file);
// LOOP_SET_CAPACITY: the loop device takes its backing file's current size
// (a loop device does not grow by itself when the file does).  Returns the
// new size in bytes.
Result<uint64_t> refresh_loop_capacity(int loop_fd, const std::string& loop_path);
// Whether the loop device does direct I/O on its backing file now.
Result<bool> loop_direct_io(int loop_fd, const std::string& loop_path);
// Detaches loop_path if it is still bound to `file`; true if it was.  A loop
// already gone (or bound to another file now) is left alone.
Result<bool> detach_loop_of(const std::string& loop_path, const std::string& file);
// Waits (up to 5 s) until loop_path is no longer bound to `file`: the kernel
// may finish a detach after the call that asked for it returned (autoclear
// with the dm table's removal, another opener closing late).
void wait_loop_released(const std::string& loop_path, const std::string& file);

}  // namespace dmu::mapper
