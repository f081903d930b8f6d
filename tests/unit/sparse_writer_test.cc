// SparseWriter (dmu export's writer thread): zero units stay holes, every
// queued buffer lands at its offset whatever the order of the threads, and a
// failed write stops the export with that write's error.  The whole export
// against qemu-img convert is OracleExport's job.
#include "cli/sparse_writer.h"

#include <gtest/gtest.h>

#include <map>
#include <mutex>

namespace dmu::cli {
namespace {

// Records every write; the write numbered `fail_at` (from 1) and all after
// it fail.
class RecordingFile : public File {
 public:
  explicit RecordingFile(size_t size, int fail_at = 0) : bytes_(size), fail_at_(fail_at) {}
  const std::string& path() const override { return path_; }
  Result<size_t> read_some(uint64_t, std::span<uint8_t>) override { return 0; }
  Result<void> write(uint64_t offset, std::span<const uint8_t> buf) override {
    std::lock_guard lock(mutex_);
    ++count_;
    if (fail_at_ && count_ >= fail_at_) return fail(ENOSPC, path_ + ": no space left on device");
    std::copy(buf.begin(), buf.end(), bytes_.begin() + long(offset));
    writes_[offset] = buf.size();
    return {};
  }
  Result<uint64_t> size() override { return bytes_.size(); }
  Result<void> truncate(uint64_t) override { return {}; }
  Result<void> sync() override { return {}; }
  Result<void> punch_hole(uint64_t, uint64_t) override { return {}; }

  std::vector<uint8_t> bytes_;
  std::map<uint64_t, size_t> writes_;  // offset -> length

 private:
  std::string path_ = "out.raw";
  int fail_at_;
  int count_ = 0;
  std::mutex mutex_;
};

TEST(SparseWriter, LeavesAllZeroUnitsUnwritten) {
  constexpr size_t kUnit = 4096;
  RecordingFile out(1 << 20);
  std::vector<uint8_t> buf(5 * kUnit + 100, 0);
  buf[10] = 1;             // unit 0: data
  buf[3 * kUnit + 7] = 2;  // unit 3: data, unit 4 too
  buf[4 * kUnit] = 3;
  buf[5 * kUnit + 99] = 4;  // the short tail unit: data
  ASSERT_TRUE(write_sparse(out, 8192, buf, kUnit));
  const std::map<uint64_t, size_t> expected{{8192, kUnit}, {8192 + 3 * kUnit, 2 * kUnit + 100}};
  EXPECT_EQ(out.writes_, expected);
  EXPECT_TRUE(std::equal(buf.begin(), buf.end(), out.bytes_.begin() + 8192));
}

TEST(SparseWriter, EveryQueuedBufferLandsAtItsOffset) {
  constexpr size_t kChunk = 64 * 1024, kChunks = 200;
  RecordingFile out(kChunks * kChunk);
  std::vector<uint8_t> expected(kChunks * kChunk, 0);
  {
    SparseWriter writer(out, 3, kChunk);  // fewer buffers than chunks: they are reused
    for (size_t i = 0; i < kChunks; ++i) {
      auto buffer = writer.acquire();
      ASSERT_TRUE(buffer);
      const size_t length = i % 7 == 6 ? kChunk / 2 : kChunk;  // some short ones
      for (size_t j = 0; j < length; ++j) (*buffer)[j] = uint8_t(i % 5 == 0 ? 0 : i * 31 + j);
      std::copy_n(buffer->begin(), length, expected.begin() + long(i * kChunk));
      writer.submit(i * kChunk, *buffer, length);
    }
    ASSERT_TRUE(writer.finish());
  }
  EXPECT_EQ(out.bytes_, expected);
  for (auto [offset, length] : out.writes_)  // all-zero chunks were skipped
    EXPECT_NE((offset / kChunk) % 5, 0u) << "wrote zeros at " << offset;
}

TEST(SparseWriter, AFailedWriteStopsTheExportWithItsError) {
  RecordingFile out(1 << 20, 2);
  SparseWriter writer(out, 2, 4096);
  Result<std::span<uint8_t>> buffer;
  // Keep queueing until the failure comes back through acquire(); it must
  // come back long before 256 buffers, since only 2 exist.
  int queued = 0;
  for (; queued < 256; ++queued) {
    buffer = writer.acquire();
    if (!buffer) break;
    std::fill(buffer->begin(), buffer->end(), uint8_t(1));
    writer.submit(uint64_t(queued) * 4096, *buffer, buffer->size());
  }
  ASSERT_FALSE(buffer);
  EXPECT_LT(queued, 256);
  EXPECT_EQ(buffer.error().code, ENOSPC);
  EXPECT_EQ(buffer.error().message, "out.raw: no space left on device");
  auto finished = writer.finish();
  ASSERT_FALSE(finished);
  EXPECT_EQ(finished.error().code, ENOSPC);
}

TEST(SparseWriter, StopsCleanlyWithBuffersStillQueued) {
  RecordingFile out(1 << 20);
  auto writer = std::make_unique<SparseWriter>(out, 4, 4096);
  for (int i = 0; i < 4; ++i) {
    auto buffer = writer->acquire();
    ASSERT_TRUE(buffer);
    std::fill(buffer->begin(), buffer->end(), uint8_t(i + 1));
    writer->submit(uint64_t(i) * 4096, *buffer, buffer->size());
  }
  // An export that failed while reading drops the writer with buffers still
  // queued: the destructor must return (a hang fails the test by its
  // timeout), and whatever it wrote must be whole and where it was queued.
  writer.reset();
  const auto after_reset = out.writes_;
  EXPECT_LE(after_reset.size(), 4u);
  for (const auto& [offset, length] : after_reset) {
    EXPECT_EQ(offset % 4096, 0u);
    EXPECT_LT(offset, 4u * 4096);
    EXPECT_EQ(length, 4096u);
    const uint8_t fill = uint8_t(offset / 4096 + 1);
    for (uint64_t i = offset; i < offset + length; ++i)
      ASSERT_EQ(out.bytes_[i], fill) << "byte " << i;
  }
}

}  // namespace
}  // namespace dmu::cli
