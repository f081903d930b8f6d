// Reading a dm-log-writes log (drivers/md/dm-log-writes.c), shared by
// dmu-log-writes-dump and dmu-flush-audit, and replaying it up to a mark
// (dmu-log-writes-replay).
//
// The format: a super block (struct log_write_super, little-endian) at byte
// 0, one "sector" long, where a sector is the logged device's logical block
// size (super.sectorsize).  Then, for super.nr_entries entries, one sector of
// header (struct log_write_entry; a MARK's text follows it inline) and,
// unless the entry is a DISCARD, entry.nr_sectors sectors of the data
// written.  entry.sector and entry.nr_sectors count sectors of sectorsize
// bytes.  nr_entries is rewritten after every FUA and MARK entry and when
// the target is removed (its last entry is the mark "dm-log-writes-end"), so
// a log read while the device is live may end before the last entries.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/unique_fd.h"

namespace dmu::testd::log_writes {

inline constexpr uint64_t kMagic = 0x6a736677736872ULL;  // WRITE_LOG_MAGIC
inline constexpr uint64_t kVersion = 1;                  // WRITE_LOG_VERSION
inline constexpr uint64_t kFlush = 1 << 0;               // LOG_FLUSH_FLAG
inline constexpr uint64_t kFua = 1 << 1;                 // LOG_FUA_FLAG
inline constexpr uint64_t kDiscard = 1 << 2;             // LOG_DISCARD_FLAG
inline constexpr uint64_t kMark = 1 << 3;                // LOG_MARK_FLAG
inline constexpr uint64_t kMeta = 1 << 4;                // LOG_METADATA_FLAG
inline constexpr size_t kSuperBytes = 28;                // struct log_write_super
inline constexpr size_t kEntryBytes = 32;                // struct log_write_entry

// The longest mark text the target keeps: log_mark() copies at most
// sectorsize - sizeof(struct log_write_entry) - 1 bytes of it (kstrndup),
// so on a 512-byte-sector device 479 bytes.
constexpr size_t max_mark_bytes(uint32_t sectorsize) {
  return sectorsize - kEntryBytes - 1;
}

struct Entry {
  uint64_t index = 0;       // position in the log, from 0
  uint64_t log_offset = 0;  // byte offset of its header in the log
  uint64_t offset = 0;      // byte offset in the logged device
  uint64_t length = 0;      // bytes written (a DISCARD: bytes discarded, no data logged)
  uint64_t flags = 0;       // kFlush | kFua | kDiscard | kMark | kMeta
  std::string mark;         // a MARK's text

  bool is_mark() const { return flags & kMark; }
  bool is_flush() const { return flags & kFlush; }
  bool is_fua() const { return flags & kFua; }
  bool is_discard() const { return flags & kDiscard; }
  // Bytes of data that follow the header in the log.
  uint64_t data_bytes() const { return is_discard() ? 0 : length; }
};

// "FLUSH,FUA", "MARK", ... or "WRITE" for a plain write.
std::string flag_names(uint64_t flags);

class Reader {
 public:
  // Opens the log (a device or a file) and checks its super block.
  static Result<Reader> open(const std::string& path);

  const std::string& path() const { return path_; }
  uint64_t nr_entries() const { return nr_entries_; }
  uint32_t sectorsize() const { return sectorsize_; }

  // The next entry, or nullopt after the last.  With data, also reads the
  // entry's data into it (resized to data_bytes()).  Errors name the log,
  // the entry and its position.
  Result<std::optional<Entry>> next(std::vector<uint8_t>* data = nullptr);

  // Where next() reads: the index of the next entry and the log byte offset
  // of its header.  seek() goes back to such a position (from an earlier
  // Reader of the same log), so a replay resumed mark after mark does not
  // read every header before it again.  It checks only that the position
  // is sector-aligned and inside the log; a wrong pair shows as a damaged
  // entry at the next next().
  uint64_t next_index() const { return index_; }
  uint64_t next_offset() const { return pos_; }
  Result<void> seek(uint64_t index, uint64_t log_offset);

 private:
  Reader() = default;
  Error entry_error(uint64_t index, uint64_t at, const std::string& what) const;

  std::string path_;
  UniqueFd fd_;
  std::optional<uint64_t> size_;  // bytes, when known
  uint64_t nr_entries_ = 0;
  uint32_t sectorsize_ = 0;
  uint64_t index_ = 0;
  uint64_t pos_ = 0;  // byte offset of the next header
  std::vector<uint8_t> header_;
};

// ---- replay ------------------------------------------------------------------

// Replays entries of a log onto a target (a device or a file as large as
// the logged device), as a crash at a mark would have left the logged
// device: every entry before the mark, in log order.  dm-log-writes logs a
// plain write only once a flush issued after it completed (right before
// that FLUSH entry), a FUA write when it completes, and queues a mark behind
// everything logged so far, so the entries before a mark are what was
// durable on the logged device when the mark was put.
struct ReplayOptions {
  std::string log_path;
  std::string target;
  uint64_t from_entry = 0;              // entries before it are skipped
  std::optional<uint64_t> from_offset;  // the log offset of from_entry's header, if known
  std::string to_mark;                  // stop at this mark; empty: replay to the end
};
struct ReplayResult {
  uint64_t writes = 0;    // data entries written
  uint64_t discards = 0;  // discard entries (written as zeros)
  uint64_t bytes = 0;     // bytes written, zeros included
  bool stopped_at_mark = false;
  uint64_t mark_entry = 0;   // the mark's index when stopped at it
  uint64_t next_entry = 0;   // where a later replay resumes (after the mark)
  uint64_t next_offset = 0;  // and the log offset of that entry's header
};
// Discards become zeros: a discarded range of the logged device reads back
// as zeros or stale data, and zeros are the crash state a file system must
// cope with either way.  The target is fdatasync()ed before this returns.
// A to_mark not found from from_entry on is an error (after the replay).
Result<ReplayResult> replay(const ReplayOptions& options);

// The size of an open regular file or block device (path names it in errors).
Result<uint64_t> file_or_device_bytes(int fd, const std::string& path);

}  // namespace dmu::testd::log_writes
