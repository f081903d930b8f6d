// Reading a dm-log-writes log (drivers/md/dm-log-writes.c), shared by
// dmu-log-writes-dump and dmu-flush-audit.
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
#include "mapper/unique_fd.h"

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

}  // namespace dmu::testd::log_writes
