// The flush auditor (dmu-flush-audit): proves from a dm-log-writes log of the
// target's data device 0 that the kernel target never acknowledges a flush
// before the data it covers is durable.
//
// The writer: threads write stamped 4 KiB blocks (model::Stamp, then a
// pattern derived from it) to the target with O_DIRECT, each in its own part
// of the virtual device; every few writes a thread fdatasync()s and, once
// that returned, puts the mark "synced-<thread>-<seq>" into the log
// (dm-log-writes' `mark` message), seq being the last write it completed
// before the fdatasync.
//
// The verifier: replays the log once, keeping the device's current and its
// durable contents, and at every synced-T-S mark checks that every block
// thread T wrote with a seq <= S is durable: the durable contents (through
// the model daemon's committed map with --layout model) hold, at that
// virtual offset, a stamp of this run and thread T with a seq at least the
// last one T wrote there up to S.  See verify() for the durability rules.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"
#include "tests/kmod/model_format.h"

namespace dmu::testd::audit {

inline constexpr uint64_t kUnit = 4096;  // every 4 KiB written carries a stamp

// ---- stamps ----------------------------------------------------------------

model::Stamp make_stamp(uint32_t thread, uint64_t seq, uint64_t offset, uint64_t run);
// The 4 KiB the writer writes for a stamp: the stamp (little-endian, laid
// out as struct Stamp), then a pattern derived from all its fields.
void fill_unit(const model::Stamp& stamp, std::span<uint8_t, kUnit> unit);

enum class UnitKind {
  Zero,     // all zeros (never written, discarded, or zeroed)
  Stamped,  // a stamp and its pattern
  Corrupt,  // a stamp whose pattern does not match (torn or damaged)
  Other,    // anything else
};
struct Decoded {
  UnitKind kind = UnitKind::Zero;
  model::Stamp stamp{};  // for Stamped and Corrupt
};
Decoded decode_unit(std::span<const uint8_t, kUnit> unit);

// ---- marks -----------------------------------------------------------------

struct SyncMark {
  uint32_t thread = 0;
  uint64_t seq = 0;
  bool operator==(const SyncMark&) const = default;
};
// "synced-<thread>-<seq>"; at most 38 bytes, far below what dm-log-writes
// keeps of a mark (log_writes::max_mark_bytes(512) = 479).
std::string mark_text(SyncMark m);
// The inverse; nullopt for any other mark (the daemon's, dm-log-writes-end).
std::optional<SyncMark> parse_mark(std::string_view text);

// ---- journal ---------------------------------------------------------------

// What the writer did, in the order things completed (order: one counter
// over all threads).  Text, one record a line:
//   # dmu-flush-audit journal 1
//   run <hex> block-size <bytes> threads <n>
//   w <thread> <seq> <offset> <order>     a write completed
//   s <thread> <seq> <order>              fdatasync returned, mark put
struct JournalWrite {
  uint32_t thread = 0;
  uint64_t seq = 0;
  uint64_t offset = 0;
  uint64_t order = 0;
};
struct JournalSync {
  uint32_t thread = 0;
  uint64_t seq = 0;
  uint64_t order = 0;
};
struct Journal {
  uint64_t run = 0;
  uint64_t block_size = kUnit;
  uint32_t threads = 0;
  std::vector<JournalWrite> writes;
  std::vector<JournalSync> syncs;
};
Result<void> write_journal(const std::string& path, const Journal& journal);
Result<Journal> read_journal(const std::string& path);

// ---- the model daemon's map --------------------------------------------------

struct ModelMap {
  unsigned slot = 0;
  uint64_t generation = 0;
  uint64_t block_bytes = 0;
  uint64_t data_start = 0;
  std::vector<model::Entry> entries;  // sorted by vblock

  std::optional<uint64_t> cluster_of(uint64_t vblock) const;
};
// Checks one slot's super block (magic, bounds, crc over super block and
// entries; model_format.h).  read(offset, out) reads bytes of the slot.
// The error says why the slot is not valid.
Result<ModelMap> parse_slot(unsigned slot,
                            const std::function<void(uint64_t, std::span<uint8_t>)>& read);

// ---- verify ------------------------------------------------------------------

enum class Layout { Identity, Model };

struct VerifyOptions {
  std::string log_path;
  Layout layout = Layout::Identity;
  uint64_t block_size = 0;   // the writer's --block-size; 0: the journal's, else 4096
  std::string journal_path;  // optional
  // Failures listed in the report; all are counted.  A write that fails at
  // several marks in the same way is listed once, at the first.
  size_t max_failures = 1000;
};

enum class Problem {
  Stale,        // an older write of the thread (seq below the expected)
  NoStamp,      // zeros or foreign data
  Corrupt,      // a stamp whose pattern does not match
  WrongRun,     // a stamp of another writer run
  Misplaced,    // a stamp of another thread or another offset
  Unmapped,     // model: the virtual block is not in the committed map
  NoMap,        // model: no valid map slot
  LateWrite,    // the write reached the log only after the mark
  MissingMark,  // the journal has a sync whose mark is not in the log
};
const char* problem_name(Problem p);

struct Failure {
  std::string mark;
  uint64_t entry = 0;  // log entry of the mark; UINT64_MAX: the mark is not in the log
  uint32_t thread = 0;
  uint64_t offset = 0;  // virtual byte offset of the write
  Problem problem = Problem::NoStamp;
  std::string detail;
  std::string line() const;
};

struct Report {
  uint64_t entries = 0;
  uint32_t sectorsize = 0;
  uint64_t run = 0;
  bool run_known = false;
  uint64_t marks = 0;    // synced-T-S marks seen
  uint64_t checked = 0;  // writes checked at those marks
  uint64_t flushes = 0;
  uint64_t map_changes = 0;       // model: durable map generations seen
  uint64_t failure_count = 0;     // failed checks
  std::vector<Failure> failures;  // listed (VerifyOptions::max_failures)
  bool passed() const { return failure_count == 0 && marks > 0 && checked > 0; }
  std::string summary() const;
};

// Replays the log.  Durability, from dm-log-writes.c: a plain write's entry
// is logged only when a later flush completes, right before that FLUSH
// entry, so every entry before a FLUSH entry is durable once the FLUSH is
// logged; a FUA write is durable by itself; a FLUSH entry's own data (a
// PREFLUSH bio with data) is written after the flush and durable only if it
// is also FUA; a DISCARD makes its range zeros in the current contents.
Result<Report> verify(const VerifyOptions& options);

// ---- an image's virtual disk -------------------------------------------------

// The writer ran on a device that started as zeros (an empty image); a crash
// at the mark "synced-T-S" left a virtual disk (read out of the image by an
// independent reader, qemu-img convert) that must hold, for every thread U,
// the writes up to U's last sync journaled at or before that mark (U's
// mark came before it in the log: marks and journal syncs share one order),
// each with its own stamp or a later one of the same thread and offset.
// Every other 4 KiB must be zeros or a stamp the writer wrote at that very
// offset: data of another place (a table entry pointing at the wrong
// cluster), of metadata, or a torn block fails too.  Without a mark, the
// disk must hold the last write at every offset exactly (a clean detach).
struct ImageCheckOptions {
  std::string image_path;    // the virtual disk, raw (a file or a device)
  std::string journal_path;  // the writer's journal (required)
  std::string mark;          // "synced-T-S"; empty: every write, exactly
  size_t max_failures = 1000;
};
struct ImageReport {
  uint64_t units = 0;     // 4 KiB units read
  uint64_t stamped = 0;   // of those, holding a stamp of this run
  uint64_t expected = 0;  // units that had to hold a write
  uint64_t failure_count = 0;
  std::vector<std::string> failures;  // "FAIL mark ...: thread ... offset ...: ..." (listed)
  bool passed() const { return failure_count == 0; }
  std::string summary() const;
};
// Setup problems (journal, image, a mark the journal does not have) are an
// Error; what the disk holds is the report.
Result<ImageReport> check_image(const ImageCheckOptions& options);

// ---- the writer ----------------------------------------------------------------

struct WriterOptions {
  std::string device;
  uint32_t threads = 4;
  uint64_t region_bytes = 0;  // from offset 0, split evenly between the threads
  double seconds = 10;
  uint32_t fsync_every = 16;  // fdatasync after a random 1..fsync_every writes
  uint64_t block_size = kUnit;
  bool direct = true;       // O_DIRECT (tests on file systems without it turn it off)
  uint64_t run = 0;         // 0: random
  uint64_t max_writes = 0;  // per thread, then it stops early (0: no limit; for tests)
};
struct WriterResult {
  uint64_t writes = 0;
  uint64_t fsyncs = 0;
  uint64_t errors = 0;
  std::vector<std::string> error_messages;  // the first error of each failed thread
  Journal journal;
};
// Puts a mark into the log; called by one thread at a time.
using Marker = std::function<Result<void>(const std::string& text)>;
// Setup problems (device, options) are an Error; I/O errors while running
// are counted in the result.
Result<WriterResult> run_writer(const WriterOptions& options, const Marker& marker);

}  // namespace dmu::testd::audit
