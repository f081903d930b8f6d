// dmu-log-writes-dump: prints the entries of a dm-log-writes log device, one
// line each, in log order, so a VM case can check the order in which writes,
// flushes and marks reached the device:
//   <index> flags=<WRITE|FLUSH|FUA|DISCARD|MARK|META,...> sector=<s> sectors=<n> [mark=<text>]
// sector/sectors are in 512-byte units of the logged device.  The format is
// drivers/md/dm-log-writes.c's: a super block at sector 0, then per entry one
// header block (struct log_write_entry, a mark's text inline after it)
// followed by the entry's data unless it is a discard.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "common/endian.h"

namespace {

constexpr uint64_t kMagic = 0x6a736677736872ULL;
constexpr uint64_t kVersion = 1;
constexpr uint64_t kFlush = 1, kFua = 2, kDiscard = 4, kMark = 8, kMeta = 16;

struct Super {
  uint64_t magic, version, nr_entries;
  uint32_t sectorsize;
};

bool read_at(int fd, uint64_t offset, void* buf, size_t len) {
  return ::pread(fd, buf, len, static_cast<off_t>(offset)) == static_cast<ssize_t>(len);
}

uint64_t le64(const uint8_t* p) {
  return dmu::load_le64(p);
}

std::string flag_names(uint64_t f) {
  std::string s;
  auto add = [&](uint64_t bit, const char* name) {
    if (f & bit) s += (s.empty() ? "" : ",") + std::string(name);
  };
  add(kFlush, "FLUSH");
  add(kFua, "FUA");
  add(kDiscard, "DISCARD");
  add(kMark, "MARK");
  add(kMeta, "META");
  return s.empty() ? "WRITE" : s;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2 || std::strcmp(argv[1], "--help") == 0) {
    std::fprintf(stderr, "usage: dmu-log-writes-dump LOGDEV\n");
    return argc == 2 ? 0 : 2;
  }
  const char* path = argv[1];
  int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    std::fprintf(stderr, "dmu-log-writes-dump: %s: %s\n", path, std::strerror(errno));
    return 1;
  }
  uint8_t raw[28];
  if (!read_at(fd, 0, raw, sizeof raw)) {
    std::fprintf(stderr, "dmu-log-writes-dump: %s: cannot read the super block\n", path);
    return 1;
  }
  Super sb{le64(raw), le64(raw + 8), le64(raw + 16), dmu::load_le32(raw + 24)};
  if (sb.magic != kMagic || sb.version != kVersion || sb.sectorsize < 512 ||
      (sb.sectorsize & (sb.sectorsize - 1))) {
    std::fprintf(stderr,
                 "dmu-log-writes-dump: %s: not a dm-log-writes log (magic 0x%llx version %llu "
                 "sectorsize %u)\n",
                 path, static_cast<unsigned long long>(sb.magic),
                 static_cast<unsigned long long>(sb.version), sb.sectorsize);
    return 1;
  }
  const uint64_t unit = sb.sectorsize / 512;  // log sectors per device sector
  std::printf("# entries=%llu sectorsize=%u\n", static_cast<unsigned long long>(sb.nr_entries),
              sb.sectorsize);
  std::vector<uint8_t> block(sb.sectorsize);
  uint64_t pos = unit;  // in 512-byte sectors of the log device
  for (uint64_t i = 0; i < sb.nr_entries; ++i) {
    if (!read_at(fd, pos * 512, block.data(), block.size())) {
      std::fprintf(stderr, "dmu-log-writes-dump: %s: entry %llu at sector %llu unreadable\n", path,
                   static_cast<unsigned long long>(i), static_cast<unsigned long long>(pos));
      return 1;
    }
    const uint64_t sector = le64(block.data()), nr = le64(block.data() + 8);
    const uint64_t flags = le64(block.data() + 16), data_len = le64(block.data() + 24);
    std::printf("%llu flags=%s sector=%llu sectors=%llu", static_cast<unsigned long long>(i),
                flag_names(flags).c_str(), static_cast<unsigned long long>(sector * unit),
                static_cast<unsigned long long>(nr * unit));
    if (flags & kMark) {
      size_t len = std::min<uint64_t>(data_len, sb.sectorsize - 32);
      std::printf(" mark=%.*s", static_cast<int>(len), reinterpret_cast<char*>(block.data() + 32));
    }
    std::printf("\n");
    pos += unit;
    if (!(flags & kDiscard)) pos += nr * unit;
  }
  ::close(fd);
  return 0;
}
