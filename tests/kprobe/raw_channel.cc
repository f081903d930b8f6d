#include "tests/kprobe/raw_channel.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cstring>

namespace dmu::kprobe {

namespace {
constexpr const char* kPath = "/dev/" DMU_CONTROL_NAME;
}

Result<RawChannel> RawChannel::open(bool blocking) {
  int fd = ::open(kPath, O_RDWR | O_CLOEXEC | (blocking ? 0 : O_NONBLOCK));
  if (fd < 0) return fail(errno_error(std::string(kPath) + ": open"));
  return RawChannel(UniqueFd(fd));
}

Result<void> RawChannel::bind(const std::string& key, uint64_t features, dmu_bind* out,
                              uint32_t version_major) {
  dmu_bind b{};
  b.version_major = version_major;
  b.version_minor = DMU_VERSION_MINOR;
  b.version_patch = DMU_VERSION_PATCH;
  b.features = features;
  std::strncpy(b.key, key.c_str(), DMU_KEY_LEN - 1);
  int r = ::ioctl(fd_.get(), DMU_IOC_BIND, &b);
  int err = errno;
  *out = b;
  if (r != 0) return fail(errno_error("bind to key " + key, err));
  return {};
}

Result<std::vector<dmu_request>> RawChannel::read(size_t max) {
  std::vector<dmu_request> out(max);
  ssize_t r = ::read(fd_.get(), out.data(), max * sizeof(dmu_request));
  if (r < 0) {
    if (errno == EAGAIN) return std::vector<dmu_request>{};
    return fail(errno_error("read requests"));
  }
  if (r % DMU_MSG_SIZE) return fail(EPROTO, "read returned a partial message");
  out.resize(size_t(r) / DMU_MSG_SIZE);
  return out;
}

Result<size_t> RawChannel::write(std::span<const dmu_response> batch) {
  ssize_t r = ::write(fd_.get(), batch.data(), batch.size_bytes());
  if (r < 0) return fail(errno_error("write " + std::to_string(batch.size()) + " responses"));
  return size_t(r);
}

Result<dmu_list_extents> RawChannel::list_extents_once(uint64_t start,
                                                       std::vector<dmu_extent_info>& out) {
  dmu_list_extents l{};
  l.start_block = start;
  l.buf = reinterpret_cast<uintptr_t>(out.data());
  l.max = uint32_t(out.size());
  if (::ioctl(fd_.get(), DMU_IOC_LIST_EXTENTS, &l) != 0)
    return fail(errno_error("LIST_EXTENTS from block " + std::to_string(start)));
  return l;
}

Result<std::vector<dmu_allocation>> RawChannel::list_allocations() {
  std::vector<dmu_allocation> all, page(64);
  uint64_t start = 0;
  for (;;) {
    dmu_list_allocations l{};
    l.start = start;
    l.buf = reinterpret_cast<uintptr_t>(page.data());
    l.max = uint32_t(page.size());
    if (::ioctl(fd_.get(), DMU_IOC_LIST_ALLOCATIONS, &l) != 0)
      return fail(errno_error("LIST_ALLOCATIONS"));
    all.insert(all.end(), page.begin(), page.begin() + l.count);
    if (l.count < l.max) return all;
    start = l.next;
  }
}

dmu_response extent(uint64_t id, uint64_t block, uint64_t nr, uint32_t kind, uint32_t flags,
                    uint32_t dev, uint64_t sector, bool final) {
  dmu_response r{};
  r.type = DMU_RSP_EXTENT;
  r.flags = final ? DMU_RSP_FINAL : 0;
  r.id = id;
  r.block = block;
  r.nr_blocks = nr;
  r.kind = kind;
  r.ext_flags = flags;
  r.dev = dev;
  r.sector = sector;
  return r;
}

dmu_response complete(uint64_t id, int32_t status) {
  dmu_response r{};
  r.type = DMU_RSP_COMPLETE;
  r.id = id;
  r.status = status;
  return r;
}

dmu_response committed(uint64_t id, int32_t status) {
  dmu_response r{};
  r.type = DMU_RSP_COMMITTED;
  r.id = id;
  r.status = status;
  return r;
}

dmu_response copy(uint64_t id, uint64_t sector, uint64_t nr_sectors, uint32_t src_dev,
                  uint64_t src_sector, bool final) {
  dmu_response r{};
  r.type = DMU_RSP_COPY;
  r.flags = final ? DMU_RSP_FINAL : 0;
  r.id = id;
  r.block = sector;
  r.nr_blocks = nr_sectors;
  r.dev = src_dev;
  r.sector = src_sector;
  return r;
}

}  // namespace dmu::kprobe
