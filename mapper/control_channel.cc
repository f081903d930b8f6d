// ControlChannel implementation: BIND, poll + read batches, write batches
// with partial-write accounting, LIST_EXTENTS and LIST_ALLOCATIONS paging.
#include "mapper/control_channel.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>

namespace dmu::mapper {

Result<WriteOutcome> interpret_write(long ret, int err, size_t total_bytes,
                                     const std::string& what) {
  if (ret >= 0) {
    auto bytes = static_cast<size_t>(ret);
    if (bytes > total_bytes || bytes % DMU_MSG_SIZE != 0)
      return fail(EPROTO, what + ": write of " + std::to_string(total_bytes) + " bytes returned " +
                              std::to_string(ret) + ", not a whole number of messages");
    if (bytes == total_bytes) return WriteOutcome{bytes / DMU_MSG_SIZE, 0};
    return WriteOutcome{bytes / DMU_MSG_SIZE, EINVAL};
  }
  if (err == EINVAL) return WriteOutcome{0, EINVAL};
  return fail(errno_error(what + ": write of " + std::to_string(total_bytes) + " bytes", err));
}

namespace {
Error no_control_device(const std::string& path) {
  if (::access("/sys/module/dm_userspace", F_OK) == 0)
    return Error{ENOENT, path +
                             ": no such control device, though the dm-userspace module is "
                             "loaded (no device node: is devtmpfs mounted on /dev?)"};
  return Error{ENOENT, path +
                           ": no such control device: the dm-userspace module is not loaded "
                           "(modprobe dm-userspace)"};
}
}  // namespace

Result<void> ControlChannel::check_present(const std::string& path, const std::string& sysfs_dev) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return fail(no_control_device(path));
    return fail(errno_error(path + ": control device"));
  }
  if (!S_ISCHR(st.st_mode))
    return fail(ENODEV, path + ": not a character device, so not dm-userspace's control device");
  std::ifstream registered(sysfs_dev);
  std::string want;
  if (!(registered >> want))
    return fail(ENOENT, path +
                            ": the dm-userspace module is not loaded (modprobe dm-userspace); "
                            "this node is left from an earlier load");
  const std::string have =
      std::to_string(major(st.st_rdev)) + ":" + std::to_string(minor(st.st_rdev));
  if (have != want)
    return fail(ENODEV, path + ": device " + have +
                            ", but the dm-userspace module's control device is " + want +
                            " (a node left from an earlier load)");
  return {};
}

Result<ControlChannel> ControlChannel::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0 && errno == ENOENT) return fail(no_control_device(path));
  if (fd < 0) return fail(errno_error(path + ": open control device"));
  return ControlChannel(UniqueFd(fd), path);
}

std::string ControlChannel::what() const {
  return key_.empty() ? path_ : path_ + " (key " + key_ + ")";
}

Result<BindInfo> ControlChannel::bind(const std::string& key, uint64_t features) {
  if (key.empty() || key.size() >= DMU_KEY_LEN)
    return fail(EINVAL, path_ + ": key '" + key + "' must be 1.." +
                            std::to_string(DMU_KEY_LEN - 1) + " characters");
  dmu_bind b{};
  b.version_major = DMU_VERSION_MAJOR;
  b.version_minor = DMU_VERSION_MINOR;
  b.version_patch = DMU_VERSION_PATCH;
  b.features = features;
  std::memcpy(b.key, key.data(), key.size());
  const std::string what = path_ + ": bind to key '" + key + "'";
  if (::ioctl(fd_.get(), DMU_IOC_BIND, &b) != 0) {
    const int err = errno;
    // The kernel writes its version back before refusing a major mismatch.
    if (err == EPROTO) return fail(EPROTO, what + ": " + version_mismatch(b));
    // A module of protocol 1.x does not know this ioctl (magic 0xDB then).
    if (err == ENOTTY)
      return fail(ENOTTY, what + ": not a dm-userspace control device of protocol " +
                              std::to_string(DMU_VERSION_MAJOR) + ".x (ioctl magic " +
                              hex(unsigned{DMU_IOC_MAGIC}) + " unknown)");
    return fail(errno_error(what, err));
  }
  if (b.version_major != DMU_VERSION_MAJOR) return fail(EPROTO, what + ": " + version_mismatch(b));
  if (b.features & ~features)
    return fail(EPROTO, path_ + ": kernel granted features " + hex(b.features) +
                            " beyond the requested " + hex(features));
  if (b.nr_devs && b.writable_devs > b.nr_devs)
    return fail(EPROTO, what + ": kernel reports " + std::to_string(b.writable_devs) +
                            " writable devices of " + std::to_string(b.nr_devs));
  key_ = key;
  BindInfo info;
  info.version_major = b.version_major;
  info.version_minor = b.version_minor;
  info.version_patch = b.version_patch;
  info.features = b.features;
  info.target_sectors = b.target_sectors;
  info.block_sectors = b.block_sectors;
  info.nr_devs = b.nr_devs;
  info.resent = b.resent;
  info.allocations = b.allocations;
  info.redelivered = b.redelivered;
  info.writable_devs = b.writable_devs;
  return info;
}

std::string version_mismatch(const dmu_bind& kernel) {
  auto triple = [](uint32_t a, uint32_t b, uint32_t c) {
    return std::to_string(a) + "." + std::to_string(b) + "." + std::to_string(c);
  };
  return "kernel speaks protocol " +
         triple(kernel.version_major, kernel.version_minor, kernel.version_patch) +
         ", this daemon " + triple(DMU_VERSION_MAJOR, DMU_VERSION_MINOR, DMU_VERSION_PATCH);
}

Result<size_t> ControlChannel::read_requests(std::span<dmu_request> out,
                                             std::chrono::milliseconds timeout) {
  if (out.empty()) return size_t{0};
  pollfd p{fd_.get(), POLLIN, 0};
  int n = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(timeout.count(), INT32_MAX)));
  if (n < 0) {
    if (errno == EINTR) return size_t{0};
    return fail(errno_error(what() + ": poll"));
  }
  if (n == 0) return size_t{0};
  if (p.revents & (POLLERR | POLLHUP | POLLNVAL) && !(p.revents & POLLIN))
    return fail(ENODEV, what() + ": control channel closed by the kernel (poll revents " +
                            hex(static_cast<unsigned>(p.revents)) + ")");
  ssize_t r = ::read(fd_.get(), out.data(), out.size_bytes());
  if (r < 0) {
    if (errno == EAGAIN || errno == EINTR) return size_t{0};
    return fail(errno_error(what() + ": read requests"));
  }
  if (r % DMU_MSG_SIZE != 0)
    return fail(EPROTO, what() + ": read returned " + std::to_string(r) +
                            " bytes, not a whole number of messages");
  return static_cast<size_t>(r) / DMU_MSG_SIZE;
}

Result<WriteOutcome> ControlChannel::write_responses(std::span<const dmu_response> batch) {
  if (batch.empty()) return WriteOutcome{};
  ssize_t r;
  do {
    r = ::write(fd_.get(), batch.data(), batch.size_bytes());
  } while (r < 0 && errno == EINTR);
  return interpret_write(r, r < 0 ? errno : 0, batch.size_bytes(), what());
}

long ControlChannel::write_raw(std::span<const uint8_t> bytes) {
  ssize_t r = ::write(fd_.get(), bytes.data(), bytes.size());
  return r < 0 ? -errno : r;
}

Result<std::vector<dmu_extent_info>> ControlChannel::list_extents(uint64_t start_block,
                                                                  size_t max_total) {
  constexpr uint32_t kPage = 256;
  std::vector<dmu_extent_info> all;
  std::vector<dmu_extent_info> page(kPage);
  uint64_t next = start_block;
  while (all.size() < max_total) {
    dmu_list_extents req{};
    req.start_block = next;
    req.buf = reinterpret_cast<uintptr_t>(page.data());
    req.max = kPage;
    if (::ioctl(fd_.get(), DMU_IOC_LIST_EXTENTS, &req) != 0)
      return fail(errno_error(what() + ": list extents from block " + std::to_string(next)));
    if (req.count > kPage)
      return fail(EPROTO, what() + ": kernel listed " + std::to_string(req.count) +
                              " extents into room for " + std::to_string(kPage));
    size_t take = std::min<size_t>(req.count, max_total - all.size());
    all.insert(all.end(), page.begin(), page.begin() + static_cast<ptrdiff_t>(take));
    if (req.count < kPage) break;
    if (req.next_block <= next)
      return fail(EPROTO,
                  what() + ": list extents did not advance past block " + std::to_string(next));
    next = req.next_block;
  }
  return all;
}

Result<std::vector<dmu_allocation>> walk_allocations(const ListAllocationsCall& call, uint32_t page,
                                                     size_t max_total, const std::string& what) {
  std::vector<dmu_allocation> all;
  std::vector<dmu_allocation> buf(page);
  uint64_t cursor = 0;
  while (all.size() < max_total) {
    dmu_list_allocations req{};
    req.start = cursor;
    req.buf = reinterpret_cast<uintptr_t>(buf.data());
    req.max = page;
    if (int err = call(req); err < 0)
      return fail(errno_error(
          what + ": list allocations after " + std::to_string(all.size()) + " records", -err));
    if (req.count > page)
      return fail(EPROTO, what + ": kernel listed " + std::to_string(req.count) +
                              " allocation records into room for " + std::to_string(page));
    const size_t take = std::min<size_t>(req.count, max_total - all.size());
    all.insert(all.end(), buf.begin(), buf.begin() + static_cast<ptrdiff_t>(take));
    if (req.count < page) break;
    // The cursor is opaque, but a full page that hands back the cursor it
    // was given would list the same records forever.
    if (req.next == cursor)
      return fail(EPROTO, what + ": list allocations did not advance past cursor " + hex(cursor));
    cursor = req.next;
  }
  return all;
}

Result<std::vector<dmu_allocation>> ControlChannel::list_allocations(size_t max_total) {
  constexpr uint32_t kPage = 256;
  const int fd = fd_.get();
  return walk_allocations(
      [fd](dmu_list_allocations& req) {
        return ::ioctl(fd, DMU_IOC_LIST_ALLOCATIONS, &req) == 0 ? 0 : -errno;
      },
      kPage, max_total, what());
}

}  // namespace dmu::mapper
