#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>

#include "fileio/file.h"
#include "fileio/path.h"
#include "fileio/sync_hook.h"

namespace dmu {

Result<void> File::read(uint64_t offset, std::span<uint8_t> buf) {
  DMU_ASSIGN_OR_RETURN(size_t got, read_some(offset, buf));
  if (got != buf.size())
    return fail(EIO, path() + ": read of " + std::to_string(buf.size()) + " bytes at " +
                         hex(offset) + " runs past the end of the file");
  return {};
}

namespace {

class PosixFile final : public File {
 public:
  PosixFile(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  ~PosixFile() override { ::close(fd_); }

  const std::string& path() const override { return path_; }
  int fd() const override { return fd_; }

  Result<size_t> read_some(uint64_t offset, std::span<uint8_t> buf) override {
    size_t done = 0;
    while (done < buf.size()) {
      ssize_t n = ::pread(fd_, buf.data() + done, buf.size() - done, off_t(offset + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        return fail(errno_error(path_ + ": read at " + hex(offset + done)));
      }
      if (n == 0) break;
      done += size_t(n);
    }
    return done;
  }

  Result<void> write(uint64_t offset, std::span<const uint8_t> buf) override {
    size_t done = 0;
    while (done < buf.size()) {
      ssize_t n = ::pwrite(fd_, buf.data() + done, buf.size() - done, off_t(offset + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        return fail(errno_error(path_ + ": write at " + hex(offset + done)));
      }
      done += size_t(n);
    }
    return {};
  }

  Result<uint64_t> size() override {
    struct stat st {};
    if (::fstat(fd_, &st) < 0) return fail(errno_error(path_ + ": stat"));
    if (S_ISBLK(st.st_mode)) {
      off_t end = ::lseek(fd_, 0, SEEK_END);
      if (end < 0) return fail(errno_error(path_ + ": size of block device"));
      return uint64_t(end);
    }
    return uint64_t(st.st_size);
  }

  Result<void> truncate(uint64_t size) override {
    if (::ftruncate(fd_, off_t(size)) < 0)
      return fail(errno_error(path_ + ": truncate to " + std::to_string(size)));
    return {};
  }

  Result<void> sync() override {
    return SyncHook::around([this]() -> Result<void> {
      if (::fdatasync(fd_) < 0) return fail(errno_error(path_ + ": fdatasync"));
      return {};
    });
  }

  Result<void> punch_hole(uint64_t offset, uint64_t length) override {
    if (::fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off_t(offset),
                    off_t(length)) == 0)
      return {};
    if (errno != EOPNOTSUPP) return fail(errno_error(path_ + ": punch hole at " + hex(offset)));
    // File systems without hole punching: write zeros instead.
    static const uint8_t zeros[65536] = {};
    for (uint64_t done = 0; done < length;) {
      uint64_t n = std::min<uint64_t>(sizeof zeros, length - done);
      DMU_TRY(write(offset + done, std::span(zeros, n)));
      done += n;
    }
    return {};
  }

 private:
  std::string path_;
  int fd_;
};

class PosixEnv final : public Env {
 public:
  Result<std::unique_ptr<File>> open(const std::string& path, OpenMode mode) override {
    int flags = O_CLOEXEC;
    switch (mode) {
      case OpenMode::ReadOnly: flags |= O_RDONLY; break;
      case OpenMode::ReadWrite: flags |= O_RDWR; break;
      case OpenMode::CreateExclusive: flags |= O_RDWR | O_CREAT | O_EXCL; break;
      case OpenMode::CreateTruncate: flags |= O_RDWR | O_CREAT | O_TRUNC; break;
    }
    int fd = ::open(path.c_str(), flags, 0644);
    if (fd < 0) return fail(errno_error(path));
    return std::make_unique<PosixFile>(path, fd);
  }

  bool exists(const std::string& path) override { return ::access(path.c_str(), F_OK) == 0; }

  Result<void> remove(const std::string& path) override {
    if (::unlink(path.c_str()) < 0) return fail(errno_error(path + ": remove"));
    return {};
  }

  Result<void> sync_directory_of(const std::string& path) override {
    return sync_parent_directory(path);
  }

  Result<std::string> identity(const std::string& path) override {
    char buf[PATH_MAX];
    if (!::realpath(path.c_str(), buf)) return fail(errno_error(path));
    return std::string(buf);
  }
};

}  // namespace

Result<void> sync_parent_directory(const std::string& path) {
  const std::string dir = parent_directory(path);
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return fail(errno_error(dir + ": open directory to sync " + path));
  const int rc = ::fsync(fd);
  const int saved = errno;
  ::close(fd);
  // EINVAL: a file system that cannot sync directories (fsync(2)); there is
  // nothing more to make durable there.
  if (rc < 0 && saved != EINVAL)
    return fail(errno_error(dir + ": fsync of the directory holding " + path, saved));
  return {};
}

Env& posix_env() {
  static PosixEnv env;
  return env;
}

}  // namespace dmu
