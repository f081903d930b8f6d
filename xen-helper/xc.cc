// Domain list; see xc.h.
#include "xen-helper/xc.h"

#include <fcntl.h>
// xenctrl.h has no extern "C" of its own.
extern "C" {
#include <xenctrl.h>
}

#include <vector>

namespace dmu::xenhelper {

Result<XenCtrl> XenCtrl::open() {
  xc_interface* h = xc_interface_open(nullptr, nullptr, 0);
  if (!h) return fail(errno_error("xenctrl: open (is this dom0 with /proc/xen mounted?)"));
  return XenCtrl(h);
}

XenCtrl::~XenCtrl() {
  if (h_) xc_interface_close(h_);
}

Result<std::set<uint32_t>> XenCtrl::domains() {
  std::set<uint32_t> out;
  std::vector<xc_domaininfo_t> info(256);
  uint32_t next = 0;
  for (;;) {
    const int n = xc_domain_getinfolist(h_, next, unsigned(info.size()), info.data());
    if (n < 0) return fail(errno_error("xenctrl: list domains"));
    for (int i = 0; i < n; ++i) out.insert(info[size_t(i)].domain);
    if (n < int(info.size())) return out;
    next = info[size_t(n) - 1].domain + 1;
  }
}

}  // namespace dmu::xenhelper
