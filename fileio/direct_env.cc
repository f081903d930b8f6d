#include "fileio/direct_env.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace dmu {
namespace {

constexpr uint64_t kSector = 512;
constexpr size_t kBounce = size_t(1) << 20;  // the largest single direct transfer
constexpr size_t kMemAlign = 4096;           // covers any file system's buffer alignment

uint64_t sector_down(uint64_t v) { return v & ~(kSector - 1); }
uint64_t sector_up(uint64_t v) { return (v + kSector - 1) & ~(kSector - 1); }

class DirectFile final : public File {
 public:
  DirectFile(std::unique_ptr<File> plain, int dfd, uint8_t* bounce, uint64_t block)
      : plain_(std::move(plain)), dfd_(dfd), block_(block), bounce_(bounce) {}
  ~DirectFile() override {
    ::close(dfd_);
    std::free(bounce_);
  }

  const std::string& path() const override { return plain_->path(); }
  int fd() const override { return plain_->fd(); }
  Result<uint64_t> size() override { return plain_->size(); }
  // Growing a file whose end is not on a block boundary makes the file
  // system zero the rest of that block through the page cache, dirtying a
  // page that may hold the kernel's data: write those zeros ourselves first.
  // Size changes are serialised by the caller (the map service's lock):
  // size(), the zeros and ftruncate() are not one step under mu_.  A shrink
  // to inside a block would zero its rest through the page cache too; only
  // repair and detach shrink, when the kernel no longer writes the file.
  Result<void> truncate(uint64_t size) override {
    DMU_ASSIGN_OR_RETURN(uint64_t end, plain_->size());
    if (size <= end) return size == end ? Result<void>{} : plain_->truncate(size);
    if (end % block_) {
      DMU_TRY(write_zeros(end, std::min(size, (end / block_ + 1) * block_) - end));
      DMU_ASSIGN_OR_RETURN(end, plain_->size());
      if (end >= size) return {};  // (up to the end of size's sector)
    }
    return plain_->truncate(size);
  }
  Result<void> sync() override { return plain_->sync(); }

  Result<size_t> read_some(uint64_t offset, std::span<uint8_t> buf) override {
    std::lock_guard lock(mu_);
    size_t done = 0;
    while (done < buf.size()) {
      const uint64_t pos = offset + done, a0 = sector_down(pos);
      const size_t want = std::min<size_t>(buf.size() - done, kBounce - (pos - a0));
      DMU_ASSIGN_OR_RETURN(size_t got, pread_direct(a0, sector_up(pos + want) - a0, 0));
      if (got <= pos - a0) break;  // end of file
      const size_t n = std::min<size_t>(want, got - (pos - a0));
      std::memcpy(buf.data() + done, bounce_ + (pos - a0), n);
      done += n;
      if (n < want) break;
    }
    return done;
  }

  Result<void> write(uint64_t offset, std::span<const uint8_t> buf) override {
    std::lock_guard lock(mu_);
    for (size_t done = 0; done < buf.size();) {
      const uint64_t pos = offset + done, a0 = sector_down(pos);
      const size_t want = std::min<size_t>(buf.size() - done, kBounce - (pos - a0));
      const uint64_t a1 = sector_up(pos + want);
      // The sectors the write covers only in part keep their other bytes.
      if (pos != a0) DMU_TRY(pread_direct(a0, kSector, 0));
      if ((pos + want) % kSector && (a1 - kSector != a0 || pos == a0))
        DMU_TRY(pread_direct(a1 - kSector, kSector, a1 - kSector - a0));
      std::memcpy(bounce_ + (pos - a0), buf.data() + done, want);
      DMU_TRY(pwrite_direct(a0, a1 - a0));
      done += want;
    }
    return {};
  }

  // Only whole blocks are punched: the file system would zero the parts of
  // blocks at either end through the page cache.
  Result<void> punch_hole(uint64_t offset, uint64_t length) override {
    const uint64_t a = (offset + block_ - 1) / block_ * block_;
    const uint64_t b = (offset + length) / block_ * block_;
    if (a >= b) return write_zeros(offset, length);
    if (a > offset) DMU_TRY(write_zeros(offset, a - offset));
    if (offset + length > b) DMU_TRY(write_zeros(b, offset + length - b));
    if (::fallocate(fd(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off_t(a), off_t(b - a)) == 0)
      return {};
    if (errno != EOPNOTSUPP) return fail(errno_error(path() + ": punch hole at " + hex(a)));
    return write_zeros(a, b - a);
  }

 private:
  // Reads [at, at + len) (sector aligned) into bounce_ + to; what lies past
  // the end of the file reads as zeros.  Returns the bytes the file had.
  Result<size_t> pread_direct(uint64_t at, size_t len, size_t to) {
    size_t got = 0;
    while (got < len) {
      const ssize_t n = ::pread(dfd_, bounce_ + to + got, len - got, off_t(at + got));
      if (n < 0) {
        if (errno == EINTR) continue;
        return fail(errno_error(path() + ": direct read at " + hex(at + got)));
      }
      if (n == 0) break;
      got += size_t(n);
      if (got % kSector) break;  // the file ends inside this sector
    }
    std::memset(bounce_ + to + got, 0, len - got);
    return got;
  }

  Result<void> pwrite_direct(uint64_t at, size_t len) {
    for (size_t done = 0; done < len;) {
      const ssize_t n = ::pwrite(dfd_, bounce_ + done, len - done, off_t(at + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        return fail(errno_error(path() + ": direct write at " + hex(at + done)));
      }
      if (n == 0 || n % ssize_t(kSector))
        return fail(EIO, path() + ": direct write at " + hex(at + done) + " wrote " +
                             std::to_string(n) + " of " + std::to_string(len - done) + " bytes");
      done += size_t(n);
    }
    return {};
  }

  Result<void> write_zeros(uint64_t offset, uint64_t length) {
    static const uint8_t zeros[65536] = {};
    for (uint64_t done = 0; done < length;) {
      const uint64_t n = std::min<uint64_t>(sizeof zeros, length - done);
      DMU_TRY(write(offset + done, std::span(zeros, n)));
      done += n;
    }
    return {};
  }

  std::unique_ptr<File> plain_;  // size, truncate, sync, fd() for everyone else
  int dfd_;                      // the same open file, O_DIRECT
  const uint64_t block_;         // the file system's block (a page at least)
  std::mutex mu_;                // bounce_ is shared by the calls
  uint8_t* bounce_;
};

// Whether the file system takes direct I/O in 512-byte sectors on fd, from
// buffers aligned to 512 bytes only: transfers start at sector offsets into
// bounce_ (a partial tail sector, the rest of a short write).  (buffer:
// kMemAlign-aligned scratch space of a sector at least.)
bool direct_sectors_ok(int fd, uint8_t* buffer) {
  struct statx stx {};
  if (::statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 && (stx.stx_mask & STATX_DIOALIGN))
    return stx.stx_dio_offset_align != 0 && stx.stx_dio_offset_align <= kSector &&
           stx.stx_dio_mem_align <= kSector;
  // A kernel that does not say: try one sector.
  return ::pread(fd, buffer, kSector, 0) >= 0;
}

class DirectEnv final : public Env {
 public:
  explicit DirectEnv(std::set<std::string> direct) : direct_(std::move(direct)) {}

  Result<std::unique_ptr<File>> open(const std::string& path, OpenMode mode) override {
    DMU_ASSIGN_OR_RETURN(auto plain, posix_env().open(path, mode));
    if (mode == OpenMode::ReadOnly) return plain;
    auto id = posix_env().identity(path);
    if (!id || !direct_.count(*id)) return plain;
    // The same open file again (not the path, which may have been renamed).
    const std::string self = "/proc/self/fd/" + std::to_string(plain->fd());
    const int dfd = ::open(self.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC);
    if (dfd < 0) {
      if (errno == EINVAL) return plain;  // a file system without direct I/O
      return fail(errno_error(path + ": open for direct I/O"));
    }
    void* bounce = nullptr;
    if (::posix_memalign(&bounce, kMemAlign, kBounce) != 0) {
      ::close(dfd);
      return fail(ENOMEM, path + ": buffer for direct I/O");
    }
    if (!direct_sectors_ok(dfd, static_cast<uint8_t*>(bounce))) {
      ::close(dfd);
      std::free(bounce);
      return plain;
    }
    // Blocks of the file system, never less than a page (the page cache's unit).
    struct stat st {};
    uint64_t block = kMemAlign;
    if (::fstat(dfd, &st) == 0 && st.st_blksize > 0 && (st.st_blksize & (st.st_blksize - 1)) == 0)
      block = std::max<uint64_t>(block, uint64_t(st.st_blksize));
    return std::unique_ptr<File>(
        new DirectFile(std::move(plain), dfd, static_cast<uint8_t*>(bounce), block));
  }

  bool exists(const std::string& path) override { return posix_env().exists(path); }
  Result<void> remove(const std::string& path) override { return posix_env().remove(path); }
  Result<void> sync_directory_of(const std::string& path) override {
    return posix_env().sync_directory_of(path);
  }
  Result<std::string> identity(const std::string& path) override {
    return posix_env().identity(path);
  }

 private:
  std::set<std::string> direct_;
};

}  // namespace

std::unique_ptr<Env> direct_io_env(std::set<std::string> direct) {
  return std::make_unique<DirectEnv>(std::move(direct));
}

bool does_direct_io(const File& file) { return dynamic_cast<const DirectFile*>(&file) != nullptr; }

}  // namespace dmu
