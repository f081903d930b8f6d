// Which domains exist: an RAII handle over libxenctrl (xc_interface_open /
// xc_interface_close) for the one question the helper asks Xen.
#pragma once

#include <cstdint>
#include <set>
#include <utility>

#include "common/error.h"

struct xc_interface_core;

namespace dmu::xenhelper {

class XenCtrl {
 public:
  static Result<XenCtrl> open();
  XenCtrl(XenCtrl&& o) noexcept : h_(std::exchange(o.h_, nullptr)) {}
  XenCtrl(const XenCtrl&) = delete;
  XenCtrl& operator=(const XenCtrl&) = delete;
  XenCtrl& operator=(XenCtrl&&) = delete;
  ~XenCtrl();

  // The ids of every domain the hypervisor knows (dying ones included).
  Result<std::set<uint32_t>> domains();

 private:
  explicit XenCtrl(xc_interface_core* h) : h_(h) {}
  xc_interface_core* h_ = nullptr;
};

}  // namespace dmu::xenhelper
