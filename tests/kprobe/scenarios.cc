// The probe's one-shot scenarios (see scenarios.h).
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "tests/kprobe/raw_channel.h"
#include "tests/kprobe/scenarios.h"

namespace dmu::kprobe {

namespace {

int failed(const char* fmt, ...) {
  std::va_list ap;
  va_start(ap, fmt);
  std::fprintf(stderr, "dmu-kmod-probe: FAIL: ");
  std::vfprintf(stderr, fmt, ap);
  std::fprintf(stderr, "\n");
  va_end(ap);
  return 1;
}

// Opens and binds, or prints why not.
bool bind_or_fail(const std::string& key, bool blocking, RawChannel** out, dmu_bind* b) {
  static std::vector<RawChannel> keep;  // lives until the process ends
  auto ch = RawChannel::open(blocking);
  if (!ch) return failed("%s", ch.error().message.c_str()), false;
  if (auto r = ch->bind(key, DMU_FEATURE_ALL, b); !r)
    return failed("%s", r.error().message.c_str()), false;
  keep.push_back(std::move(*ch));
  *out = &keep.back();
  return true;
}

// Identity writable extents for [block, block + nr), split around `skip`.
void identity_around(std::vector<dmu_response>& out, uint64_t id, uint64_t block, uint64_t nr,
                     uint64_t skip, uint32_t bs) {
  if (skip > block)
    out.push_back(
        extent(id, block, skip - block, DMU_EXT_REMAP, DMU_EXT_WRITABLE, 0, block * bs, false));
  if (block + nr > skip + 1)
    out.push_back(extent(id, skip + 1, block + nr - skip - 1, DMU_EXT_REMAP, DMU_EXT_WRITABLE, 0,
                         (skip + 1) * bs, false));
}

bool covers(const dmu_request& q, uint64_t block) {
  return block >= q.block && block - q.block < q.nr_blocks;
}

}  // namespace

int version_mismatch() {
  auto ch = RawChannel::open(false);
  if (!ch) return failed("%s", ch.error().message.c_str());
  dmu_bind b{};
  auto r = ch->bind("no-such-key", DMU_FEATURE_ALL, &b, DMU_VERSION_MAJOR + 1);
  if (r) return failed("BIND with major %u succeeded", DMU_VERSION_MAJOR + 1);
  if (r.error().code != EPROTO)
    return failed("BIND with another major: %s, not EPROTO", r.error().message.c_str());
  if (b.version_major != DMU_VERSION_MAJOR)
    return failed("kernel wrote back major %u, expected %u", b.version_major, DMU_VERSION_MAJOR);
  std::fprintf(stderr, "dmu-kmod-probe: event=version errno=EPROTO kernel=%u.%u.%u\n",
               b.version_major, b.version_minor, b.version_patch);
  return 0;
}

int done_replay(const std::string& key, int phase, uint64_t block, uint64_t id) {
  RawChannel* ch = nullptr;
  dmu_bind b{};
  if (!bind_or_fail(key, true, &ch, &b)) return 1;
  const uint32_t bs = b.block_sectors;
  std::fprintf(stderr, "dmu-kmod-probe: event=bound phase=%d allocations=%llu resent=%llu\n", phase,
               (unsigned long long)b.allocations, (unsigned long long)b.resent);

  if (phase == 1) {
    // Answer the write of `block` with a NEW extent; return once its DONE is read.
    uint64_t new_id = 0;
    for (;;) {
      auto reqs = ch->read(64);
      if (!reqs) return failed("%s", reqs.error().message.c_str());
      std::vector<dmu_response> out;
      for (const auto& q : *reqs) {
        if (q.type == DMU_REQ_DONE && q.id == new_id && new_id) {
          std::fprintf(stderr, "dmu-kmod-probe: event=phase1 id=%llu status=%d\n",
                       (unsigned long long)q.id, q.status);
          return q.status ? failed("DONE status %d", q.status) : 0;
        }
        if (q.type != DMU_REQ_MAP) continue;  // a COMMIT stays unanswered
        if ((q.flags & DMU_MAP_WRITE) && covers(q, block) && !new_id) {
          new_id = q.id;
          identity_around(out, q.id, q.block, q.nr_blocks, block, bs);
          out.push_back(extent(q.id, block, 1, DMU_EXT_REMAP, DMU_EXT_WRITABLE | DMU_EXT_NEW, 0,
                               block * bs, true));
        } else if (q.flags & DMU_MAP_DISCARD) {
          out.push_back(complete(q.id, 0));
        } else {
          out.push_back(extent(q.id, q.block, q.nr_blocks, DMU_EXT_REMAP, DMU_EXT_WRITABLE, 0,
                               q.block * bs, true));
        }
      }
      if (!out.empty())
        if (auto w = ch->write(out); !w) return failed("%s", w.error().message.c_str());
    }
  }

  auto allocs = ch->list_allocations();
  if (!allocs) return failed("%s", allocs.error().message.c_str());
  bool listed = false;
  for (const auto& a : *allocs)
    listed |= a.id == id && a.block == block && a.nr_blocks == 1 && a.dev == 0 &&
              a.sector == block * bs && (a.flags & DMU_ALLOC_DONE);
  std::fprintf(stderr, "dmu-kmod-probe: event=allocations count=%zu listed=%d\n", allocs->size(),
               int(listed));
  if (phase == 3) {
    if (b.allocations || !allocs->empty())
      return failed("after the COMMITTED, %zu allocation records are left", allocs->size());
    return 0;
  }
  if (b.allocations < 1 || !listed)
    return failed("the allocation of request %llu (block %llu) is not listed",
                  (unsigned long long)id, (unsigned long long)block);

  // Before any MAP or COMMIT come the DONEs no COMMITTED covered, the one
  // the dead daemon read among them; then serve until a COMMIT publishes it.
  bool first = true;
  for (;;) {
    auto reqs = ch->read(64);
    if (!reqs) return failed("%s", reqs.error().message.c_str());
    std::vector<dmu_response> out;
    for (const auto& q : *reqs) {
      if (first) {
        if (q.type != DMU_REQ_DONE)
          return failed("a request of type %u (id %llu) came before the DONE of %llu", q.type,
                        (unsigned long long)q.id, (unsigned long long)id);
        if (q.id != id) continue;  // an older unpublished DONE
        if (q.status) return failed("DONE of %llu has status %d", (unsigned long long)id, q.status);
        std::fprintf(stderr, "dmu-kmod-probe: event=redelivered id=%llu\n", (unsigned long long)id);
        first = false;
        continue;
      }
      if (q.type == DMU_REQ_COMMIT) {
        out.push_back(committed(q.id, 0));
        if (auto w = ch->write(out); !w) return failed("%s", w.error().message.c_str());
        auto left = ch->list_allocations();
        if (!left) return failed("%s", left.error().message.c_str());
        for (const auto& a : *left)
          if (a.id == id)
            return failed("record %llu still listed after COMMITTED", (unsigned long long)id);
        std::fprintf(stderr, "dmu-kmod-probe: event=published left=%zu\n", left->size());
        return 0;
      }
      if (q.type == DMU_REQ_MAP)
        out.push_back(q.flags & DMU_MAP_DISCARD ? complete(q.id, 0)
                                                : extent(q.id, q.block, q.nr_blocks, DMU_EXT_REMAP,
                                                         DMU_EXT_WRITABLE, 0, q.block * bs, true));
    }
    if (!out.empty())
      if (auto w = ch->write(out); !w) return failed("%s", w.error().message.c_str());
  }
}

int list_extents(const std::string& key, uint64_t count) {
  RawChannel* ch = nullptr;
  dmu_bind b{};
  if (!bind_or_fail(key, false, &ch, &b)) return 1;
  const uint64_t blocks = (b.target_sectors + b.block_sectors - 1) / b.block_sectors;
  if (2 * count > blocks)
    return failed("target has %llu blocks, need %llu", (unsigned long long)blocks,
                  (unsigned long long)(2 * count));
  // Single-block extents two blocks apart, so none merge or overlap.
  for (uint64_t i = 0, batch = 0; i < count; batch++) {
    std::vector<dmu_response> out;
    for (; i < count && out.size() < 256; i++)
      out.push_back(extent(DMU_PUSH_ID | batch, 2 * i, 1, DMU_EXT_REMAP, 0, 0,
                           2 * i * b.block_sectors, false));
    out.back().flags = DMU_RSP_FINAL;
    if (auto w = ch->write(out); !w) return failed("%s", w.error().message.c_str());
  }
  std::vector<dmu_extent_info> buf(count + 64);
  auto l = ch->list_extents_once(0, buf);
  if (!l) return failed("%s", l.error().message.c_str());
  std::fprintf(stderr, "dmu-kmod-probe: event=listed max=%u count=%u next=%llu\n", l->max, l->count,
               (unsigned long long)l->next_block);
  if (l->count != count)
    return failed("one LIST_EXTENTS with max %u listed %u of %llu cached extents", l->max, l->count,
                  (unsigned long long)count);
  return 0;
}

int bind_race(const std::string& key1, const std::string& key2, uint64_t rounds) {
  uint64_t first = 0, second = 0;
  for (uint64_t round = 0; round < rounds; ++round) {
    auto ch = RawChannel::open(false);
    if (!ch) return failed("%s", ch.error().message.c_str());
    std::atomic<int> ready{0};
    int err[2] = {0, 0};
    auto racer = [&](int i, const std::string& key) {
      ready.fetch_add(1);
      while (ready.load() < 2) {
      }
      dmu_bind b{};
      auto r = ch->bind(key, DMU_FEATURE_ALL, &b);
      err[i] = r ? 0 : r.error().code;
    };
    std::thread a(racer, 0, std::cref(key1));
    std::thread b(racer, 1, std::cref(key2));
    a.join();
    b.join();
    if (err[0] == 0 && err[1] == 0)
      return failed("round %llu: both BINDs on one fd succeeded (%s and %s)",
                    (unsigned long long)round, key1.c_str(), key2.c_str());
    for (int i = 0; i < 2; ++i)
      if (err[i] != 0 && err[i] != EALREADY && err[i] != EBUSY)
        return failed("round %llu: BIND %d failed with %s", (unsigned long long)round, i,
                      std::strerror(err[i]));
    if (err[0] != 0 && err[1] != 0)
      return failed("round %llu: neither BIND succeeded", (unsigned long long)round);
    (err[0] == 0 ? first : second)++;
  }  // each round's fd closes here, unbinding the winner
  // A failed BIND lets the fd go: the next one on it may succeed.
  {
    auto ch = RawChannel::open(false);
    if (!ch) return failed("%s", ch.error().message.c_str());
    dmu_bind b{};
    auto missing = ch->bind("no-such-key", DMU_FEATURE_ALL, &b);
    if (missing || missing.error().code != ENOENT)
      return failed("BIND of a missing key: %s, not ENOENT",
                    missing ? "succeeded" : missing.error().message.c_str());
    if (auto r = ch->bind(key1, DMU_FEATURE_ALL, &b); !r)
      return failed("BIND after a failed one on the same fd: %s", r.error().message.c_str());
  }
  std::fprintf(stderr, "dmu-kmod-probe: event=bind-race rounds=%llu first=%llu second=%llu\n",
               (unsigned long long)rounds, (unsigned long long)first, (unsigned long long)second);
  return 0;
}

int fsync_device(const std::string& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return failed("%s: open: %m", path.c_str());
  int r = ::fdatasync(fd);
  int err = errno;
  ::close(fd);
  if (r) return failed("%s: fdatasync: %s", path.c_str(), std::strerror(err));
  return 0;
}

int stall_copy(const std::string& key, bool write) {
  RawChannel* ch = nullptr;
  dmu_bind b{};
  if (!bind_or_fail(key, true, &ch, &b)) return 1;
  const long page = ::sysconf(_SC_PAGESIZE);
  int uffd = int(::syscall(SYS_userfaultfd, O_CLOEXEC));
  if (uffd < 0) return failed("userfaultfd: %s", std::strerror(errno));
  uffdio_api api{};
  api.api = UFFD_API;
  if (::ioctl(uffd, UFFDIO_API, &api)) return failed("UFFDIO_API: %s", std::strerror(errno));
  void* area =
      ::mmap(nullptr, size_t(page), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (area == MAP_FAILED) return failed("mmap: %s", std::strerror(errno));
  uffdio_register reg{};
  reg.range.start = reinterpret_cast<uintptr_t>(area);
  reg.range.len = uint64_t(page);
  reg.mode = UFFDIO_REGISTER_MODE_MISSING;
  if (::ioctl(uffd, UFFDIO_REGISTER, &reg))
    return failed("UFFDIO_REGISTER: %s", std::strerror(errno));
  // Nobody reads uffd: the first touch of the page blocks in the kernel.
  std::fprintf(stderr, "dmu-kmod-probe: event=stalling op=%s\n", write ? "write" : "read");
  ssize_t r = write ? ::write(ch->fd(), area, DMU_MSG_SIZE) : ::read(ch->fd(), area, DMU_MSG_SIZE);
  return failed("the %s returned %zd: the copy did not stall", write ? "write" : "read", r);
}

}  // namespace dmu::kprobe
