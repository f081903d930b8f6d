// dmu-flush-audit check-image: what a crash at a mark must have left in the
// virtual disk of an image the writer ran on; see flush_audit.h.
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <map>
#include <set>
#include <tuple>
#include <unordered_map>

#include "common/unique_fd.h"
#include "tests/kmod/flush_audit.h"
#include "tests/kmod/log_writes.h"

namespace dmu::testd::audit {
namespace {

struct Expect {
  uint32_t thread = 0;
  uint64_t seq = 0;    // at least this (a mark) or exactly this (no mark)
  uint64_t order = 0;  // of the write, to pick the newest of two threads' writes
};

Result<void> read_all(int fd, uint64_t offset, std::span<uint8_t> out, const std::string& what) {
  size_t done = 0;
  while (done < out.size()) {
    ssize_t n =
        ::pread(fd, out.data() + done, out.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail(errno_error(what));
    }
    if (n == 0) return fail(EIO, what + ": ends early");
    done += static_cast<size_t>(n);
  }
  return {};
}

std::string stamp_text(const model::Stamp& s) {
  return "thread " + std::to_string(s.thread) + " offset " + hex(s.offset) + " seq " +
         std::to_string(s.seq);
}

}  // namespace

std::string ImageReport::summary() const {
  return "dmu-flush-audit: check-image units=" + std::to_string(units) +
         " stamped=" + std::to_string(stamped) + " expected=" + std::to_string(expected) +
         " failures=" + std::to_string(failure_count);
}

Result<ImageReport> check_image(const ImageCheckOptions& o) {
  DMU_ASSIGN_OR_RETURN(Journal j, read_journal(o.journal_path));
  const bool final_state = o.mark.empty();
  // The newest sync of every thread at or before the mark.
  std::map<uint32_t, uint64_t> synced;
  if (!final_state) {
    auto m = parse_mark(o.mark);
    if (!m) return fail(EINVAL, "'" + o.mark + "' is not a synced-<thread>-<seq> mark");
    auto at = std::find_if(j.syncs.begin(), j.syncs.end(), [&](const JournalSync& s) {
      return s.thread == m->thread && s.seq == m->seq;
    });
    if (at == j.syncs.end())
      return fail(EINVAL, o.journal_path + ": the writer journaled no sync " + o.mark);
    for (const auto& s : j.syncs)
      if (s.order <= at->order) synced[s.thread] = std::max(synced[s.thread], s.seq);
  }
  // What must be there, and every stamp the writer put anywhere.
  std::unordered_map<uint64_t, Expect> expect;                 // by 4 KiB unit
  std::set<std::tuple<uint64_t, uint32_t, uint64_t>> written;  // unit, thread, seq
  uint64_t end = 0;
  for (const auto& w : j.writes) {
    for (uint64_t k = 0; k < j.block_size; k += kUnit) {
      const uint64_t unit = (w.offset + k) / kUnit;
      written.insert({unit, w.thread, w.seq});
      end = std::max(end, (unit + 1) * kUnit);
      if (!final_state) {
        auto s = synced.find(w.thread);
        if (s == synced.end() || w.seq > s->second) continue;
      }
      Expect& e = expect[unit];
      if (w.order >= e.order) e = {w.thread, w.seq, w.order};
    }
  }

  UniqueFd fd(::open(o.image_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return fail(errno_error(o.image_path));
  DMU_ASSIGN_OR_RETURN(uint64_t size, log_writes::file_or_device_bytes(fd.get(), o.image_path));

  ImageReport r;
  r.expected = expect.size();
  const std::string where = final_state ? "FAIL final image" : "FAIL mark " + o.mark;
  auto failed = [&](const std::string& line) {
    ++r.failure_count;
    if (r.failures.size() < o.max_failures) r.failures.push_back(where + ": " + line);
  };
  if (size < end)
    failed("the virtual disk has " + std::to_string(size) + " bytes, the writer wrote up to " +
           std::to_string(end));

  std::vector<uint8_t> buf(1 << 20);
  for (uint64_t at = 0; at + kUnit <= size; at += buf.size()) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), size - at) / kUnit * kUnit);
    DMU_TRY(read_all(fd.get(), at, std::span<uint8_t>(buf.data(), n),
                     o.image_path + ": read at " + hex(at)));
    for (size_t p = 0; p < n; p += kUnit) {
      const uint64_t off = at + p, unit = off / kUnit;
      ++r.units;
      const Decoded d = decode_unit(std::span<const uint8_t, kUnit>(buf.data() + p, kUnit));
      auto e = expect.find(unit);
      // Built only for a failure: most units pass, and this runs in a TCG guest.
      auto lead = [&] {
        return (e == expect.end() ? std::string()
                                  : "thread " + std::to_string(e->second.thread) + " ") +
               "offset " + hex(off);
      };
      auto want = [&] {
        if (e == expect.end()) return std::string();
        return (final_state ? ", expected seq " : ", expected seq >= ") +
               std::to_string(e->second.seq) + (final_state ? "" : " (synced before the mark)");
      };
      switch (d.kind) {
        case UnitKind::Zero:
          if (e != expect.end()) failed(lead() + ": no stamp: zeros" + want());
          continue;
        case UnitKind::Other:
          failed(lead() + ": no stamp: foreign data" +
                 (e != expect.end() ? want() : ", where the writer had synced nothing"));
          continue;
        case UnitKind::Corrupt:
          failed(lead() + ": corrupt: stamp of " + stamp_text(d.stamp) +
                 " but the rest of the block does not match it" + want());
          continue;
        case UnitKind::Stamped:
          break;
      }
      const model::Stamp& s = d.stamp;
      if (s.run != j.run) {
        failed(lead() + ": wrong run: stamp of run " + hex(s.run) + " (" + stamp_text(s) +
               "), this run is " + hex(j.run));
        continue;
      }
      ++r.stamped;
      if (s.offset != off) {
        failed(lead() + ": misplaced: holds the stamp of " + stamp_text(s) + want());
        continue;
      }
      if (!written.contains({unit, s.thread, s.seq})) {
        failed(lead() + ": holds seq " + std::to_string(s.seq) + " of thread " +
               std::to_string(s.thread) + ", which the writer never wrote there");
        continue;
      }
      if (e == expect.end()) continue;  // a write the mark did not cover, or none: either is fine
      if (s.thread != e->second.thread)
        failed(lead() + ": misplaced: holds the stamp of " + stamp_text(s) + want());
      else if (s.seq < e->second.seq || (final_state && s.seq != e->second.seq))
        failed(lead() + ": " + (s.seq < e->second.seq ? "stale seq" : "newer seq") +
               ": found seq " + std::to_string(s.seq) + want());
    }
  }
  return r;
}

}  // namespace dmu::testd::audit
