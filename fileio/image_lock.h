// Image locking compatible with QEMU, so dmu and QEMU never write the same
// image at once.
//
// QEMU's file-posix driver (block/file-posix.c, raw_apply_lock_bytes and
// raw_check_lock_bytes) expresses its block-layer permissions as shared OFD
// byte-range locks on a descriptor of its own:
//   byte 100 + bit  "I hold permission bit"
//   byte 200 + bit  "I do not let others hold permission bit"
// with bits 0 consistent read, 1 write, 2 write unchanged, 3 resize.  All the
// locks are read locks; a conflict is found by testing whether a write lock
// could be placed on the opposite byte (F_OFD_GETLK), i.e. whether another
// open file description holds it.  Measured against qemu-io 7.2:
//   writer (qemu-io IMG):     bytes 100 101 103 and 201 203
//   reader (qemu-io -r, backing images, qemu-img info): bytes 100 and 201 203
// So a writer excludes every other writer and reader, readers share with
// readers: `qemu-img info` on an image a VM writes fails with
// 'Failed to get shared "write" lock', exactly as it does between QEMUs.
#pragma once

#include <string>

#include "common/error.h"

namespace dmu {

enum class LockMode {
  Reader,  // consistent read; refuses writers (QEMU read-only open)
  Writer,  // read, write, resize; refuses every other user
};

class ImageLock {
 public:
  // Takes the locks for `mode` on `path` (through a descriptor of its own,
  // as QEMU does).  Fails with EAGAIN and a message like
  //   disk.qcow2: Failed to get "write" lock (is another process using the image?)
  // when another process holds a conflicting lock.
  static Result<ImageLock> acquire(const std::string& path, LockMode mode);

  // Places the lock bytes of `mode` on `fd`, an open file description that
  // someone else keeps: a loop device's backing file.  The kernel drops OFD
  // locks only when the description's last reference goes, and a loop device
  // holds one until it is detached, so the locks outlive every process --
  // kill -9 of the mapping process leaves the image locked for as long as
  // the guest can still write it.  Nothing is checked: call acquire() first,
  // while it is held the placed bytes (read locks) cannot conflict with it.
  static Result<void> place(int fd, const std::string& path, LockMode mode);

  ImageLock() = default;
  ImageLock(ImageLock&& other) noexcept;
  ImageLock& operator=(ImageLock&& other) noexcept;
  ImageLock(const ImageLock&) = delete;
  ImageLock& operator=(const ImageLock&) = delete;
  ~ImageLock();

  bool held() const { return fd_ >= 0; }
  const std::string& path() const { return path_; }

 private:
  ImageLock(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  std::string path_;
  int fd_ = -1;
};

}  // namespace dmu
