// Replaying a dm-log-writes log onto a target; see log_writes.h.
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "common/checked.h"
#include "tests/kmod/log_writes.h"

namespace dmu::testd::log_writes {
namespace {

Result<void> write_all(int fd, uint64_t offset, const uint8_t* p, uint64_t len,
                       const std::string& what) {
  uint64_t done = 0;
  while (done < len) {
    ssize_t n = ::pwrite(fd, p + done, len - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail(errno_error(what));
    }
    if (n == 0) return fail(EIO, what + ": wrote nothing");
    done += static_cast<uint64_t>(n);
  }
  return {};
}

}  // namespace

Result<uint64_t> file_or_device_bytes(int fd, const std::string& path) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return fail(errno_error(path + ": stat"));
  if (S_ISREG(st.st_mode)) return static_cast<uint64_t>(st.st_size);
  if (!S_ISBLK(st.st_mode)) return fail(EINVAL, path + ": neither a block device nor a file");
  uint64_t bytes = 0;
  if (::ioctl(fd, BLKGETSIZE64, &bytes) != 0) return fail(errno_error(path + ": BLKGETSIZE64"));
  return bytes;
}

Result<ReplayResult> replay(const ReplayOptions& o) {
  DMU_ASSIGN_OR_RETURN(Reader reader, Reader::open(o.log_path));
  if (o.from_offset) {
    DMU_TRY(reader.seek(o.from_entry, *o.from_offset));
  } else {
    while (reader.next_index() < o.from_entry) {
      DMU_ASSIGN_OR_RETURN(auto e, reader.next());
      if (!e)
        return fail(EINVAL, o.log_path + ": has " + std::to_string(reader.nr_entries()) +
                                " entries, cannot start at entry " + std::to_string(o.from_entry));
    }
  }
  // Buffered: a replay writes each block many times over (journal, tables),
  // and the fdatasync at the end makes it all reach the target at once.
  UniqueFd fd(::open(o.target.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd.valid()) return fail(errno_error(o.target));
  DMU_ASSIGN_OR_RETURN(uint64_t size, file_or_device_bytes(fd.get(), o.target));

  ReplayResult r;
  std::vector<uint8_t> data;
  const std::vector<uint8_t> zeros(1 << 20, 0);
  for (;;) {
    DMU_ASSIGN_OR_RETURN(auto e, reader.next(&data));
    if (!e) break;
    if (e->is_mark()) {
      if (!o.to_mark.empty() && e->mark == o.to_mark) {
        r.stopped_at_mark = true;
        r.mark_entry = e->index;
        break;
      }
      continue;
    }
    if (e->length == 0) continue;  // an empty flush: the order is all it carries
    if (!range_within(e->offset, e->length, size))
      return fail(EINVAL, o.log_path + ": entry " + std::to_string(e->index) + " writes " +
                              std::to_string(e->length) + " bytes at " + hex(e->offset) +
                              ", past the end of " + o.target + " (" + std::to_string(size) +
                              " bytes)");
    const std::string what =
        o.target + ": entry " + std::to_string(e->index) + " at " + hex(e->offset);
    if (e->is_discard()) {
      for (uint64_t at = 0; at < e->length; at += zeros.size())
        DMU_TRY(write_all(fd.get(), e->offset + at, zeros.data(),
                          std::min<uint64_t>(zeros.size(), e->length - at), what));
      ++r.discards;
    } else {
      DMU_TRY(write_all(fd.get(), e->offset, data.data(), data.size(), what));
      ++r.writes;
    }
    r.bytes += e->length;
  }
  r.next_entry = reader.next_index();
  r.next_offset = reader.next_offset();
  if (::fdatasync(fd.get()) != 0) return fail(errno_error(o.target + ": fdatasync"));
  if (!o.to_mark.empty() && !r.stopped_at_mark)
    return fail(ENOENT, o.log_path + ": no mark '" + o.to_mark + "' from entry " +
                            std::to_string(o.from_entry) + " to the end (entry " +
                            std::to_string(r.next_entry) + ")");
  return r;
}

}  // namespace dmu::testd::log_writes
