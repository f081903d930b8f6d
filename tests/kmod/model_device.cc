// O_DIRECT device access for the model daemon; see model_device.h.
#include "tests/kmod/model_device.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace dmu::testd::model {
namespace {

constexpr uint64_t kAlign = 4096;

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

class DirectFile final : public File {
 public:
  DirectFile(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  ~DirectFile() override { ::close(fd_); }

  const std::string& path() const override { return path_; }
  int fd() const override { return fd_; }

  Result<size_t> read_some(uint64_t offset, std::span<uint8_t> buf) override {
    if (offset % kAlign) return fail(EINVAL, path_ + ": unaligned direct read at " + hex(offset));
    DMU_ASSIGN_OR_RETURN(uint64_t end, size());
    if (offset >= end) return size_t{0};
    const size_t want = static_cast<size_t>(std::min<uint64_t>(buf.size(), end - offset));
    const size_t len = (want + kAlign - 1) / kAlign * kAlign;
    DMU_ASSIGN_OR_RETURN(auto bounce, aligned(len));
    size_t done = 0;
    while (done < len) {
      ssize_t n = ::pread(fd_, bounce.get() + done, len - done, off_t(offset + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        return fail(errno_error(path_ + ": direct read at " + hex(offset + done)));
      }
      if (n == 0) break;
      done += size_t(n);
    }
    const size_t got = std::min(done, want);
    std::memcpy(buf.data(), bounce.get(), got);
    return got;
  }

  Result<void> write(uint64_t offset, std::span<const uint8_t> buf) override {
    if (offset % kAlign || buf.size() % kAlign)
      return fail(EINVAL, path_ + ": unaligned direct write of " + std::to_string(buf.size()) +
                              " bytes at " + hex(offset));
    DMU_ASSIGN_OR_RETURN(auto bounce, aligned(buf.size()));
    std::memcpy(bounce.get(), buf.data(), buf.size());
    size_t done = 0;
    while (done < buf.size()) {
      ssize_t n = ::pwrite(fd_, bounce.get() + done, buf.size() - done, off_t(offset + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        return fail(errno_error(path_ + ": direct write at " + hex(offset + done)));
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

  Result<void> truncate(uint64_t) override {
    return fail(ENOTSUP, path_ + ": the model's device does not grow");
  }

  Result<void> sync() override {
    if (::fdatasync(fd_) < 0) return fail(errno_error(path_ + ": fdatasync"));
    return {};
  }

  Result<void> punch_hole(uint64_t, uint64_t) override {
    return fail(ENOTSUP, path_ + ": the model does not punch holes");
  }

 private:
  Result<std::unique_ptr<uint8_t, FreeDeleter>> aligned(size_t len) {
    void* p = nullptr;
    if (::posix_memalign(&p, kAlign, std::max<size_t>(len, kAlign)) != 0)
      return fail(ENOMEM, path_ + ": no memory for a " + std::to_string(len) + "-byte buffer");
    return std::unique_ptr<uint8_t, FreeDeleter>(static_cast<uint8_t*>(p));
  }

  std::string path_;
  int fd_;
};

}  // namespace

Result<std::unique_ptr<File>> open_direct(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC);
  if (fd < 0) return fail(errno_error(path + ": open O_RDWR|O_DIRECT"));
  return std::unique_ptr<File>(new DirectFile(path, fd));
}

}  // namespace dmu::testd::model
