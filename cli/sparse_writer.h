// SparseWriter: writes filled buffers to the export's output on a thread of
// its own, leaving all-zero 4 KiB units as holes.  The exporter reads the
// next chunk while the last one is written, so the two costs of a copy
// (reading the image, writing the output) overlap instead of adding up.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <span>
#include <thread>
#include <vector>

#include "common/error.h"
#include "fileio/file.h"

namespace dmu::cli {

// Writes the runs of buf (guest offset `at`) that are not all-zero units of
// `unit` bytes; the zero units are left as they are (holes in a new file).
Result<void> write_sparse(File& out, uint64_t at, std::span<const uint8_t> buf, uint64_t unit);

class SparseWriter {
 public:
  // `buffers` buffers of `buffer_size` bytes circulate between the caller
  // (who fills them) and the writer thread.
  SparseWriter(File& out, size_t buffers, size_t buffer_size);
  ~SparseWriter();  // stops the thread; pending buffers are dropped
  SparseWriter(const SparseWriter&) = delete;
  SparseWriter& operator=(const SparseWriter&) = delete;

  // A free buffer to fill, waiting for one if all are queued; the writer's
  // first error instead once a write has failed (the caller stops then).
  Result<std::span<uint8_t>> acquire();
  // Queues the first `length` bytes of a buffer from acquire() for writing
  // at `at`.
  void submit(uint64_t at, std::span<uint8_t> buffer, size_t length);
  // Waits until everything queued is written; the first error if any.
  Result<void> finish();

 private:
  struct Job {
    uint64_t at;
    std::span<uint8_t> buffer;
    size_t length;
  };
  void run();

  File& out_;
  std::vector<std::vector<uint8_t>> storage_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<std::span<uint8_t>> free_;  // guarded by mutex_
  std::deque<Job> queued_;                // guarded by mutex_
  bool writing_ = false;                  // a job is being written
  bool stopping_ = false;
  std::optional<Error> error_;  // the first failed write
  std::thread thread_;          // last: starts once the members above exist
};

}  // namespace dmu::cli
