#include "tests/kmod/log_writes.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "common/checked.h"
#include "common/endian.h"

namespace dmu::testd::log_writes {
namespace {

// Largest data we read for one entry: a bio is far smaller, so anything
// bigger is a damaged header, not an allocation to attempt.
constexpr uint64_t kMaxEntryData = 1ULL << 30;

Result<void> read_exact(int fd, uint64_t offset, void* buf, size_t len, const std::string& what) {
  auto* p = static_cast<uint8_t*>(buf);
  size_t done = 0;
  while (done < len) {
    ssize_t n = ::pread(fd, p + done, len - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail(errno_error(what));
    }
    if (n == 0) return fail(EIO, what + ": the log ends there (truncated log?)");
    done += static_cast<size_t>(n);
  }
  return {};
}

}  // namespace

std::string flag_names(uint64_t f) {
  std::string s;
  auto add = [&](uint64_t bit, const char* name) {
    if (!(f & bit)) return;
    if (!s.empty()) s += ',';
    s += name;  // not `"," + std::string(name)`: g++ 12 -O3 warns -Wrestrict there
  };
  add(kFlush, "FLUSH");
  add(kFua, "FUA");
  add(kDiscard, "DISCARD");
  add(kMark, "MARK");
  add(kMeta, "META");
  return s.empty() ? "WRITE" : s;
}

Result<Reader> Reader::open(const std::string& path) {
  Reader r;
  r.path_ = path;
  r.fd_.reset(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!r.fd_.valid()) return fail(errno_error(path));
  DMU_ASSIGN_OR_RETURN(r.size_, file_or_device_bytes(r.fd_.get(), path));
  uint8_t raw[kSuperBytes];
  if (auto ok = read_exact(r.fd_.get(), 0, raw, sizeof raw, path + ": super block"); !ok)
    return fail(ok.error());
  const uint64_t magic = load_le64(raw), version = load_le64(raw + 8);
  r.nr_entries_ = load_le64(raw + 16);
  r.sectorsize_ = load_le32(raw + 24);
  if (magic != kMagic || version != kVersion || r.sectorsize_ < 512 || r.sectorsize_ > 65536 ||
      !is_power_of_two(r.sectorsize_)) {
    return fail(EINVAL, path + ": not a dm-log-writes log (magic " + hex(magic) + " version " +
                            std::to_string(version) + " sectorsize " +
                            std::to_string(r.sectorsize_) + ")");
  }
  r.pos_ = r.sectorsize_;  // the first entry follows the super block's sector
  r.header_.resize(r.sectorsize_);
  return r;
}

Error Reader::entry_error(uint64_t index, uint64_t at, const std::string& what) const {
  return Error{EIO,
               path_ + ": entry " + std::to_string(index) + " at byte " + hex(at) + ": " + what};
}

Result<void> Reader::seek(uint64_t index, uint64_t log_offset) {
  if (index > nr_entries_ || log_offset < sectorsize_ || log_offset % sectorsize_ ||
      (size_ && log_offset > *size_))
    return fail(EINVAL, path_ + ": cannot resume at entry " + std::to_string(index) + ", byte " +
                            hex(log_offset) + " (" + std::to_string(nr_entries_) +
                            " entries, sector size " + std::to_string(sectorsize_) + ")");
  index_ = index;
  pos_ = log_offset;
  return {};
}

Result<std::optional<Entry>> Reader::next(std::vector<uint8_t>* data) {
  if (index_ >= nr_entries_) return std::optional<Entry>();
  const uint64_t at = pos_;
  if (size_ && !range_within(at, sectorsize_, *size_))
    return fail(entry_error(index_, at,
                            "header lies past the end of the log (" + std::to_string(*size_) +
                                " bytes; " + std::to_string(nr_entries_) + " entries claimed)"));
  if (auto ok = read_exact(fd_.get(), at, header_.data(), header_.size(), path_); !ok)
    return fail(entry_error(index_, at, "header unreadable: " + ok.error().message));
  const uint8_t* h = header_.data();
  const uint64_t sector = load_le64(h), nr = load_le64(h + 8);
  const uint64_t flags = load_le64(h + 16), data_len = load_le64(h + 24);
  auto offset = checked_mul(sector, sectorsize_);
  auto length = checked_mul(nr, sectorsize_);
  if (!offset || !length || !checked_add(*offset, *length))
    return fail(entry_error(
        index_, at,
        "sector " + std::to_string(sector) + " + " + std::to_string(nr) + " sectors overflows"));
  Entry e;
  e.index = index_;
  e.log_offset = at;
  e.offset = *offset;
  e.length = *length;
  e.flags = flags;
  if (e.is_mark()) {
    const size_t len = std::min<uint64_t>(data_len, sectorsize_ - kEntryBytes);
    const char* text = reinterpret_cast<const char*>(h + kEntryBytes);
    e.mark.assign(text, std::find(text, text + len, '\0'));
  }
  const uint64_t data_at = at + sectorsize_;
  const uint64_t bytes = e.data_bytes();
  if (bytes > kMaxEntryData || (size_ && !range_within(data_at, bytes, *size_)))
    return fail(entry_error(
        index_, at, "its " + std::to_string(bytes) + " bytes of data run past the end of the log"));
  if (data) {
    data->resize(bytes);
    if (bytes) {
      if (auto ok = read_exact(fd_.get(), data_at, data->data(), bytes, path_); !ok)
        return fail(entry_error(index_, at, "data unreadable: " + ok.error().message));
    }
  }
  pos_ = data_at + bytes;
  ++index_;
  return std::optional<Entry>(std::move(e));
}

}  // namespace dmu::testd::log_writes
