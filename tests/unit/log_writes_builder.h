// Builds dm-log-writes logs for the unit tests, written straight from the
// kernel's structures (drivers/md/dm-log-writes.c, 6.1) rather than through
// tests/kmod/log_writes.h, so the reader is checked against an independent
// encoding:
//   struct log_write_super { __le64 magic; __le64 version; __le64 nr_entries;
//                            __le32 sectorsize; };        at byte 0
//   struct log_write_entry { __le64 sector; __le64 nr_sectors; __le64 flags;
//                            __le64 data_len; };          one sector per entry,
// a mark's text inline after the entry (data_len = strlen), then
// nr_sectors sectors of data unless the entry is a discard.  sector and
// nr_sectors count sectors of `sectorsize` bytes.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "tests/support/test_support.h"

namespace dmu::test {

class LogBuilder {
 public:
  static constexpr uint64_t kFlush = 1, kFua = 2, kDiscard = 4, kMark = 8, kMeta = 16;

  explicit LogBuilder(uint32_t sectorsize = 512) : sectorsize_(sectorsize) {
    log_.resize(sectorsize_);  // the super block's sector, filled by save()
  }

  // A write of data (a whole number of sectors) at byte `offset`.
  LogBuilder& write(uint64_t offset, const std::vector<uint8_t>& data, uint64_t flags = 0) {
    entry(offset / sectorsize_, data.size() / sectorsize_, flags, nullptr, 0);
    log_.insert(log_.end(), data.begin(), data.end());
    return *this;
  }
  LogBuilder& fua(uint64_t offset, const std::vector<uint8_t>& data) {
    return write(offset, data, kFua);
  }
  // An empty PREFLUSH bio, as blkdev_issue_flush() sends.
  LogBuilder& flush() {
    entry(0, 0, kFlush, nullptr, 0);
    return *this;
  }
  LogBuilder& discard(uint64_t offset, uint64_t bytes) {
    entry(offset / sectorsize_, bytes / sectorsize_, kDiscard, nullptr, 0);
    return *this;
  }
  LogBuilder& mark(const std::string& text) {
    entry(0, 0, kMark, text.data(), text.size());
    return *this;
  }

  uint64_t entries() const { return entries_; }

  // Writes the log; nr_entries overrides the count in the super block.
  void save(const std::string& path, std::optional<uint64_t> nr_entries = std::nullopt) const {
    std::vector<uint8_t> out = log_;
    put64(out.data(), 0x6a736677736872ULL);
    put64(out.data() + 8, 1);
    put64(out.data() + 16, nr_entries.value_or(entries_));
    put32(out.data() + 24, sectorsize_);
    write_file(path, out);
  }

 private:
  static void put64(uint8_t* p, uint64_t v) {
    for (int i = 0; i < 8; ++i) p[i] = uint8_t(v >> (8 * i));
  }
  static void put32(uint8_t* p, uint32_t v) {
    for (int i = 0; i < 4; ++i) p[i] = uint8_t(v >> (8 * i));
  }
  void entry(uint64_t sector, uint64_t nr, uint64_t flags, const char* text, size_t len) {
    std::vector<uint8_t> h(sectorsize_, 0);
    put64(h.data(), sector);
    put64(h.data() + 8, nr);
    put64(h.data() + 16, flags);
    put64(h.data() + 24, len);
    if (len) std::memcpy(h.data() + 32, text, len);
    log_.insert(log_.end(), h.begin(), h.end());
    ++entries_;
  }

  uint32_t sectorsize_;
  uint64_t entries_ = 0;
  std::vector<uint8_t> log_;
};

}  // namespace dmu::test
