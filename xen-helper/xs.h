// XenStore: an RAII handle over libxenstore (xs_open/xs_close) with errors
// as values.  Paths are absolute.  Not thread-safe beyond what libxenstore
// is; the helper uses it from one thread.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/error.h"

struct xs_handle;

namespace dmu::xenhelper {

class XenStore {
 public:
  static Result<XenStore> open();
  XenStore(XenStore&& o) noexcept : h_(std::exchange(o.h_, nullptr)) {}
  XenStore& operator=(XenStore&& o) noexcept;
  XenStore(const XenStore&) = delete;
  XenStore& operator=(const XenStore&) = delete;
  ~XenStore();

  // nullopt when the key does not exist.
  std::optional<std::string> read(const std::string& path);
  // Writes all pairs in one transaction (retried when xenstored says EAGAIN).
  Result<void> write(const std::vector<std::pair<std::string, std::string>>& keys);
  Result<void> write(const std::string& path, const std::string& value) {
    return write({{path, value}});
  }
  // The same, but only while `guard` exists (checked in the transaction):
  // a write below a backend libxl is removing must not bring it back.
  // Returns false when guard was missing and nothing was written.
  Result<bool> write_if_exists(const std::string& guard,
                               const std::vector<std::pair<std::string, std::string>>& keys);
  // The same, but only while `ok` holds for guard's value (nullopt: missing),
  // read in the transaction: a compare-and-set.
  using GuardTest = std::function<bool(const std::optional<std::string>&)>;
  // `removes` go in the same transaction (a missing one is not an error).
  Result<bool> write_if(const std::string& guard, const GuardTest& ok,
                        const std::vector<std::pair<std::string, std::string>>& keys,
                        const std::vector<std::string>& removes = {});
  // Removes a key and everything below it; a missing key is not an error.
  Result<void> remove(const std::string& path);
  // Child names; empty when the key does not exist.
  std::vector<std::string> directory(const std::string& path);

  Result<void> watch(const std::string& path, const std::string& token);
  // The descriptor that becomes readable when a watch fired.
  int fileno() const;
  // The fired watches' paths (non-blocking; empty when none is queued).
  std::vector<std::string> fired();

 private:
  explicit XenStore(xs_handle* h) : h_(h) {}
  xs_handle* h_ = nullptr;
};

}  // namespace dmu::xenhelper
