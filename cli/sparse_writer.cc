#include "cli/sparse_writer.h"

#include <cstring>

namespace dmu::cli {

namespace {

constexpr uint64_t kSparseUnit = 4096;  // qemu-img convert's default -S

bool all_zero(const uint8_t* p, size_t n) {
  // Word-wise first (buffers are large and aligned), then the tail.
  size_t i = 0;
  for (; i + sizeof(uint64_t) <= n; i += sizeof(uint64_t)) {
    uint64_t w;
    std::memcpy(&w, p + i, sizeof w);
    if (w) return false;
  }
  for (; i < n; ++i)
    if (p[i]) return false;
  return true;
}

}  // namespace

Result<void> write_sparse(File& out, uint64_t at, std::span<const uint8_t> buf, uint64_t unit) {
  const uint64_t n = buf.size();
  uint64_t run_start = 0;
  bool in_run = false;
  for (uint64_t pos = 0; pos < n; pos += unit) {
    const bool zero = all_zero(buf.data() + pos, std::min(unit, n - pos));
    if (!zero && !in_run) {
      run_start = pos;
      in_run = true;
    } else if (zero && in_run) {
      DMU_TRY(out.write(at + run_start, buf.subspan(run_start, pos - run_start)));
      in_run = false;
    }
  }
  if (in_run) DMU_TRY(out.write(at + run_start, buf.subspan(run_start)));
  return {};
}

SparseWriter::SparseWriter(File& out, size_t buffers, size_t buffer_size)
    : out_(out), storage_(buffers, std::vector<uint8_t>(buffer_size)) {
  for (auto& b : storage_) free_.emplace_back(b);
  thread_ = std::thread([this] { run(); });
}

SparseWriter::~SparseWriter() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
  thread_.join();
}

Result<std::span<uint8_t>> SparseWriter::acquire() {
  std::unique_lock lock(mutex_);
  changed_.wait(lock, [this] { return error_ || !free_.empty(); });
  if (error_) return fail(*error_);
  auto buffer = free_.back();
  free_.pop_back();
  return buffer;
}

void SparseWriter::submit(uint64_t at, std::span<uint8_t> buffer, size_t length) {
  {
    std::lock_guard lock(mutex_);
    queued_.push_back(Job{at, buffer, length});
  }
  changed_.notify_all();
}

Result<void> SparseWriter::finish() {
  std::unique_lock lock(mutex_);
  changed_.wait(lock, [this] { return error_ || (queued_.empty() && !writing_); });
  if (error_) return fail(*error_);
  return {};
}

void SparseWriter::run() {
  std::unique_lock lock(mutex_);
  for (;;) {
    changed_.wait(lock, [this] { return stopping_ || !queued_.empty(); });
    if (stopping_ || error_) return;
    Job job = queued_.front();
    queued_.pop_front();
    writing_ = true;
    lock.unlock();
    auto written = write_sparse(out_, job.at, job.buffer.first(job.length), kSparseUnit);
    lock.lock();
    writing_ = false;
    free_.push_back(job.buffer);
    if (!written) error_ = std::move(written).error();
    changed_.notify_all();
  }
}

}  // namespace dmu::cli
