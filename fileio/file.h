// File and Env: the only way format engines touch storage.  The Envs: the
// real one (posix_env, and direct_env for O_DIRECT), an in-memory one
// (mem_env) and, for tests only, a crash simulator that loses whatever was
// not synced (tests/support/fault_env.h).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "common/error.h"

namespace dmu {

class File {
 public:
  virtual ~File() = default;
  File() = default;
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  virtual const std::string& path() const = 0;

  // Reads up to buf.size() bytes; returns fewer only at end of file.
  virtual Result<size_t> read_some(uint64_t offset, std::span<uint8_t> buf) = 0;
  virtual Result<void> write(uint64_t offset, std::span<const uint8_t> buf) = 0;
  virtual Result<uint64_t> size() = 0;
  virtual Result<void> truncate(uint64_t size) = 0;
  // Everything written so far is durable when this returns.
  virtual Result<void> sync() = 0;
  // Deallocates [offset, offset + length); reads return zeros afterwards.
  virtual Result<void> punch_hole(uint64_t offset, uint64_t length) = 0;
  // The descriptor of a real file, -1 otherwise (loop devices, locks).
  virtual int fd() const { return -1; }

  // Reads exactly buf.size() bytes or fails naming the file and the range.
  Result<void> read(uint64_t offset, std::span<uint8_t> buf);
};

enum class OpenMode {
  ReadOnly,
  ReadWrite,
  CreateExclusive,  // read-write, the file must not exist yet
  CreateTruncate,   // read-write, created or emptied
};

class Env {
 public:
  virtual ~Env() = default;
  virtual Result<std::unique_ptr<File>> open(const std::string& path, OpenMode mode) = 0;
  virtual bool exists(const std::string& path) = 0;
  virtual Result<void> remove(const std::string& path) = 0;
  // Makes the creation or removal of path durable: a new file's name is on
  // disk only once the directory holding it is synced, whatever the file's
  // own sync did (fsync(2): "an explicit fsync() on a file descriptor for
  // the directory is also needed").
  virtual Result<void> sync_directory_of(const std::string& path) = 0;
  // A name that is equal for two paths naming the same file (backing-loop
  // detection): the canonical path for real files.
  virtual Result<std::string> identity(const std::string& path) = 0;
};

// The process-wide real file system.
Env& posix_env();

// fsync of the directory that holds path (the current one for a bare name).
Result<void> sync_parent_directory(const std::string& path);

}  // namespace dmu
