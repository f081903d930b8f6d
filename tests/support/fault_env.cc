#include "tests/support/fault_env.h"

#include <algorithm>
#include <cstring>

#include "common/checked.h"
#include "fileio/path.h"

namespace dmu::test {
namespace {

void apply(std::vector<uint8_t>& bytes, uint64_t offset, uint64_t length, const uint8_t* src,
           bool zero) {
  if (bytes.size() < offset + length && !zero) bytes.resize(offset + length);
  if (offset >= bytes.size()) return;
  uint64_t n = std::min<uint64_t>(length, bytes.size() - offset);
  if (zero)
    std::memset(bytes.data() + offset, 0, n);
  else
    std::memcpy(bytes.data() + offset, src, n);
}

}  // namespace

class FaultEnv::FaultFile final : public File {
 public:
  FaultFile(FaultEnv& env, std::string path, std::shared_ptr<FileState> state, bool writable)
      : env_(env),
        path_(std::move(path)),
        state_(std::move(state)),
        writable_(writable),
        generation_(state_->generation) {}

  const std::string& path() const override { return path_; }

  Result<size_t> read_some(uint64_t offset, std::span<uint8_t> buf) override {
    std::lock_guard lock(env_.mu_);
    DMU_TRY(alive());
    const auto& b = state_->current;
    if (offset >= b.size()) return size_t(0);
    size_t n = std::min<uint64_t>(buf.size(), b.size() - offset);
    std::memcpy(buf.data(), b.data() + offset, n);
    return n;
  }

  Result<void> write(uint64_t offset, std::span<const uint8_t> buf) override {
    auto end = checked_add(offset, buf.size());
    if (!end || *end > (uint64_t(1) << 36)) return fail(EFBIG, path_ + ": write past 64 GiB");
    std::lock_guard lock(env_.mu_);
    DMU_TRY(mutable_alive());
    apply(state_->current, offset, buf.size(), buf.data(), false);
    state_->unsynced.push_back(
        Op{Op::Write, offset, buf.size(), std::vector<uint8_t>(buf.begin(), buf.end())});
    return {};
  }

  Result<uint64_t> size() override {
    std::lock_guard lock(env_.mu_);
    DMU_TRY(alive());
    return uint64_t(state_->current.size());
  }

  Result<void> truncate(uint64_t size) override {
    if (size > (uint64_t(1) << 36)) return fail(EFBIG, path_ + ": truncate past 64 GiB");
    std::lock_guard lock(env_.mu_);
    DMU_TRY(mutable_alive());
    state_->current.resize(size);
    state_->unsynced.push_back(Op{Op::Truncate, 0, size, {}});
    return {};
  }

  Result<void> sync() override {
    std::lock_guard lock(env_.mu_);
    DMU_TRY(mutable_alive());
    state_->durable = state_->current;
    state_->unsynced.clear();
    return {};
  }

  Result<void> punch_hole(uint64_t offset, uint64_t length) override {
    std::lock_guard lock(env_.mu_);
    DMU_TRY(mutable_alive());
    apply(state_->current, offset, length, nullptr, true);
    state_->unsynced.push_back(Op{Op::Zero, offset, length, {}});
    return {};
  }

 private:
  Result<void> alive() const {
    if (generation_ != state_->generation) return fail(EIO, path_ + ": file lost in a crash");
    return {};
  }
  Result<void> mutable_alive() {
    DMU_TRY(alive());
    if (!writable_) return fail(EBADF, path_ + ": read-only file");
    if (!env_.admit_mutation()) return fail(EIO, path_ + ": simulated power cut");
    return {};
  }

  FaultEnv& env_;
  std::string path_;
  std::shared_ptr<FileState> state_;
  bool writable_;
  uint64_t generation_;
};

bool FaultEnv::admit_mutation() {
  if (mutations_ >= cut_at_) return false;
  ++mutations_;
  return true;
}

Result<std::unique_ptr<File>> FaultEnv::open(const std::string& path, OpenMode mode) {
  std::lock_guard lock(mu_);
  auto it = files_.find(path);
  bool creating = mode == OpenMode::CreateExclusive || mode == OpenMode::CreateTruncate;
  if (it == files_.end()) {
    if (!creating) return fail(ENOENT, path + ": No such file or directory");
    auto state = std::make_shared<FileState>();
    state->name_durable = false;
    it = files_.emplace(path, std::move(state)).first;
  } else if (mode == OpenMode::CreateExclusive) {
    return fail(EEXIST, path + ": File exists");
  } else if (mode == OpenMode::CreateTruncate) {
    it->second->current.clear();
    it->second->unsynced.push_back(Op{Op::Truncate, 0, 0, {}});
  }
  return std::make_unique<FaultFile>(*this, path, it->second, mode != OpenMode::ReadOnly);
}

bool FaultEnv::exists(const std::string& path) {
  std::lock_guard lock(mu_);
  return files_.count(path) != 0;
}

Result<void> FaultEnv::remove(const std::string& path) {
  std::lock_guard lock(mu_);
  auto it = files_.find(path);
  if (it == files_.end()) return fail(ENOENT, path + ": No such file or directory");
  // A name never made durable leaves nothing to come back.
  if (it->second->name_durable) removed_[path] = it->second;
  files_.erase(it);
  return {};
}

Result<void> FaultEnv::sync_directory_of(const std::string& path) {
  std::lock_guard lock(mu_);
  if (!admit_mutation()) return fail(EIO, path + ": simulated power cut (directory sync)");
  const std::string dir = parent_directory(path);
  for (auto& [name, st] : files_)
    if (parent_directory(name) == dir) st->name_durable = true;
  std::erase_if(removed_, [&](const auto& entry) { return parent_directory(entry.first) == dir; });
  return {};
}

uint64_t FaultEnv::mutations() const {
  std::lock_guard lock(mu_);
  return mutations_;
}

void FaultEnv::power_cut_after(uint64_t n) {
  std::lock_guard lock(mu_);
  cut_at_ = mutations_ + n;
}

void FaultEnv::crash(CrashKeeps keeps, uint32_t seed) {
  std::lock_guard lock(mu_);
  std::mt19937 rng(seed);
  auto kept = [&] {
    return keeps == CrashKeeps::Everything || (keeps == CrashKeeps::RandomSubset && (rng() & 1));
  };
  // Names first: new ones not yet in a synced directory may be lost, removed
  // ones may come back (with what of them was durable, and their unsynced
  // writes like any file's).
  for (auto it = files_.begin(); it != files_.end();) {
    if (it->second->name_durable || kept()) {
      it->second->name_durable = true;
      ++it;
    } else {
      ++it->second->generation;
      it = files_.erase(it);
    }
  }
  for (auto& [path, st] : removed_) {
    ++st->generation;
    if (!kept()) files_.emplace(path, st);  // a name created since wins
  }
  removed_.clear();
  for (auto& [path, st] : files_) {
    std::vector<uint8_t> bytes = st->durable;
    for (const Op& op : st->unsynced) {
      if (op.kind == Op::Write && keeps == CrashKeeps::RandomSubset) {
        // Sector by sector: a torn write keeps some of its sectors only.
        const uint64_t end = op.offset + op.length;
        for (uint64_t at = op.offset; at < end;) {
          const uint64_t next = std::min(end, (at / 512 + 1) * 512);
          if (rng() & 1) apply(bytes, at, next - at, op.bytes.data() + (at - op.offset), false);
          at = next;
        }
        continue;
      }
      if (!kept()) continue;
      switch (op.kind) {
        case Op::Write: apply(bytes, op.offset, op.length, op.bytes.data(), false); break;
        case Op::Zero: apply(bytes, op.offset, op.length, nullptr, true); break;
        case Op::Truncate: bytes.resize(op.length); break;
      }
    }
    st->durable = bytes;
    st->current = std::move(bytes);
    st->unsynced.clear();
    ++st->generation;
  }
  cut_at_ = UINT64_MAX;
}

std::vector<uint8_t> FaultEnv::contents(const std::string& path) {
  std::lock_guard lock(mu_);
  auto it = files_.find(path);
  return it == files_.end() ? std::vector<uint8_t>{} : it->second->current;
}

void FaultEnv::set_contents(const std::string& path, std::vector<uint8_t> bytes) {
  std::lock_guard lock(mu_);
  auto& st = files_[path];
  if (!st) st = std::make_shared<FileState>();
  st->durable = bytes;
  st->current = std::move(bytes);
  st->unsynced.clear();
}

}  // namespace dmu::test
