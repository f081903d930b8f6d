#include "fileio/mem_env.h"

#include <algorithm>
#include <cstring>

#include "common/checked.h"

namespace dmu {

class MemEnv::MemFile final : public File {
 public:
  MemFile(std::string path, std::shared_ptr<Data> data, bool writable)
      : path_(std::move(path)), data_(std::move(data)), writable_(writable) {}

  const std::string& path() const override { return path_; }

  Result<size_t> read_some(uint64_t offset, std::span<uint8_t> buf) override {
    std::lock_guard lock(data_->mu);
    const auto& b = data_->bytes;
    if (offset >= b.size()) return size_t(0);
    size_t n = std::min<uint64_t>(buf.size(), b.size() - offset);
    std::memcpy(buf.data(), b.data() + offset, n);
    return n;
  }

  Result<void> write(uint64_t offset, std::span<const uint8_t> buf) override {
    if (!writable_) return fail(EBADF, path_ + ": write to a read-only file");
    auto end = checked_add(offset, buf.size());
    if (!end || *end > (uint64_t(1) << 40)) return fail(EFBIG, path_ + ": write past 1 TiB");
    std::lock_guard lock(data_->mu);
    auto& b = data_->bytes;
    if (b.size() < *end) b.resize(*end);
    std::memcpy(b.data() + offset, buf.data(), buf.size());
    return {};
  }

  Result<uint64_t> size() override {
    std::lock_guard lock(data_->mu);
    return uint64_t(data_->bytes.size());
  }

  Result<void> truncate(uint64_t size) override {
    if (!writable_) return fail(EBADF, path_ + ": truncate of a read-only file");
    if (size > (uint64_t(1) << 40)) return fail(EFBIG, path_ + ": truncate past 1 TiB");
    std::lock_guard lock(data_->mu);
    data_->bytes.resize(size);
    return {};
  }

  Result<void> sync() override { return {}; }

  Result<void> punch_hole(uint64_t offset, uint64_t length) override {
    if (!writable_) return fail(EBADF, path_ + ": punch hole in a read-only file");
    std::lock_guard lock(data_->mu);
    auto& b = data_->bytes;
    if (offset >= b.size()) return {};
    uint64_t n = std::min<uint64_t>(length, b.size() - offset);
    std::memset(b.data() + offset, 0, n);
    return {};
  }

 private:
  std::string path_;
  std::shared_ptr<Data> data_;
  bool writable_;
};

Result<std::unique_ptr<File>> MemEnv::open(const std::string& path, OpenMode mode) {
  std::lock_guard lock(mu_);
  auto it = files_.find(path);
  switch (mode) {
    case OpenMode::ReadOnly:
    case OpenMode::ReadWrite:
      if (it == files_.end()) return fail(ENOENT, path + ": No such file or directory");
      break;
    case OpenMode::CreateExclusive:
      if (it != files_.end()) return fail(EEXIST, path + ": File exists");
      it = files_.emplace(path, std::make_shared<Data>()).first;
      break;
    case OpenMode::CreateTruncate:
      if (it == files_.end()) it = files_.emplace(path, std::make_shared<Data>()).first;
      {
        std::lock_guard data_lock(it->second->mu);
        it->second->bytes.clear();
      }
      break;
  }
  return std::make_unique<MemFile>(path, it->second, mode != OpenMode::ReadOnly);
}

bool MemEnv::exists(const std::string& path) {
  std::lock_guard lock(mu_);
  return files_.count(path) != 0;
}

Result<void> MemEnv::remove(const std::string& path) {
  std::lock_guard lock(mu_);
  if (!files_.erase(path)) return fail(ENOENT, path + ": No such file or directory");
  return {};
}

std::vector<uint8_t> MemEnv::contents(const std::string& path) {
  std::lock_guard lock(mu_);
  auto it = files_.find(path);
  if (it == files_.end()) return {};
  std::lock_guard data_lock(it->second->mu);
  return it->second->bytes;
}

void MemEnv::set_contents(const std::string& path, std::vector<uint8_t> bytes) {
  std::lock_guard lock(mu_);
  auto& d = files_[path];
  if (!d) d = std::make_shared<Data>();
  std::lock_guard data_lock(d->mu);
  d->bytes = std::move(bytes);
}

}  // namespace dmu
