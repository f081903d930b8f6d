// XenStore handle; see xs.h.
#include "xen-helper/xs.h"

#include <fcntl.h>
// xenstore.h has no extern "C" of its own.
extern "C" {
#include <xenstore.h>
}

#include <chrono>
#include <cstdlib>
#include <memory>
#include <thread>

namespace dmu::xenhelper {
namespace {

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

}  // namespace

Result<XenStore> XenStore::open() {
  xs_handle* h = xs_open(0);
  if (!h) return fail(errno_error("xenstore: open (is xenstored running?)"));
  // The mapping processes we start must not inherit our connection.
  const int fd = xs_fileno(h);
  if (fd >= 0) ::fcntl(fd, F_SETFD, ::fcntl(fd, F_GETFD) | FD_CLOEXEC);
  return XenStore(h);
}

XenStore& XenStore::operator=(XenStore&& o) noexcept {
  if (this != &o) {
    if (h_) xs_close(h_);
    h_ = std::exchange(o.h_, nullptr);
  }
  return *this;
}

XenStore::~XenStore() {
  if (h_) xs_close(h_);
}

std::optional<std::string> XenStore::read(const std::string& path) {
  unsigned int len = 0;
  std::unique_ptr<char, FreeDeleter> v(static_cast<char*>(xs_read(h_, XBT_NULL, path.c_str(), &len)));
  if (!v) return std::nullopt;
  return std::string(v.get(), len);
}

Result<void> XenStore::write(const std::vector<std::pair<std::string, std::string>>& keys) {
  return write_if("", nullptr, keys).map([](bool) {});
}

Result<bool> XenStore::write_if_exists(const std::string& guard,
                                       const std::vector<std::pair<std::string, std::string>>& keys) {
  return write_if(guard, [](const std::optional<std::string>& v) { return v.has_value(); }, keys);
}

Result<bool> XenStore::write_if(const std::string& guard, const GuardTest& ok,
                                const std::vector<std::pair<std::string, std::string>>& keys,
                                const std::vector<std::string>& removes) {
  for (int attempt = 0; attempt < 20; ++attempt) {
    // A conflict (libxl writes the same backends), or EAGAIN at the start:
    // a growing pause, then again.
    if (attempt > 0) std::this_thread::sleep_for(std::chrono::milliseconds(5 * attempt));
    xs_transaction_t t = xs_transaction_start(h_);
    if (t == XBT_NULL) {
      if (errno == EAGAIN) continue;
      return fail(errno_error("xenstore: start a transaction"));
    }
    if (!guard.empty()) {
      unsigned int len = 0;
      std::unique_ptr<char, FreeDeleter> v(static_cast<char*>(xs_read(h_, t, guard.c_str(), &len)));
      if (!v && errno != ENOENT) {  // "missing" only when it is
        Error e = errno_error("xenstore: read " + guard);
        xs_transaction_end(h_, t, true);
        if (e.code == EAGAIN) continue;
        return fail(e);
      }
      const std::optional<std::string> value =
          v ? std::optional<std::string>(std::string(v.get(), len)) : std::nullopt;
      if (!ok(value)) {
        xs_transaction_end(h_, t, true);
        return false;
      }
    }
    for (const auto& [path, value] : keys) {
      if (!xs_write(h_, t, path.c_str(), value.data(), unsigned(value.size()))) {
        Error e = errno_error("xenstore: write " + path);
        xs_transaction_end(h_, t, true);
        return fail(e);
      }
    }
    for (const auto& path : removes) {
      if (!xs_rm(h_, t, path.c_str()) && errno != ENOENT) {
        Error e = errno_error("xenstore: remove " + path);
        xs_transaction_end(h_, t, true);
        return fail(e);
      }
    }
    if (xs_transaction_end(h_, t, false)) return true;
    if (errno != EAGAIN) return fail(errno_error("xenstore: commit a transaction"));
  }
  return fail(EAGAIN, "xenstore: transaction kept conflicting");
}

Result<void> XenStore::remove(const std::string& path) {
  if (!xs_rm(h_, XBT_NULL, path.c_str()) && errno != ENOENT)
    return fail(errno_error("xenstore: remove " + path));
  return {};
}

std::vector<std::string> XenStore::directory(const std::string& path) {
  unsigned int n = 0;
  std::unique_ptr<char*, FreeDeleter> names(xs_directory(h_, XBT_NULL, path.c_str(), &n));
  std::vector<std::string> out;
  if (!names) return out;
  for (unsigned i = 0; i < n; ++i) out.emplace_back(names.get()[i]);
  return out;
}

Result<void> XenStore::watch(const std::string& path, const std::string& token) {
  if (!xs_watch(h_, path.c_str(), token.c_str()))
    return fail(errno_error("xenstore: watch " + path));
  return {};
}

int XenStore::fileno() const { return xs_fileno(h_); }

std::vector<std::string> XenStore::fired() {
  std::vector<std::string> out;
  for (;;) {
    std::unique_ptr<char*, FreeDeleter> ev(xs_check_watch(h_));
    if (!ev) break;
    out.emplace_back(ev.get()[XS_WATCH_PATH]);
  }
  return out;
}

}  // namespace dmu::xenhelper
