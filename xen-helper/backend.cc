// Backend keys and names; see backend.h.
#include "xen-helper/backend.h"

#include <algorithm>
#include <charconv>
#include <vector>

namespace dmu::xenhelper {
namespace {

// A decimal that is the whole of `s`: no sign, no leading zero (so one
// value has one spelling), nothing after it, and it fits in T.
template <typename T>
std::optional<T> decimal(std::string_view s) {
  T v = 0;
  if (s.empty() || s[0] == '-' || (s.size() > 1 && s[0] == '0')) return std::nullopt;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return v;
}

}  // namespace

Result<Target> parse_target(const std::string& params) {
  const auto colon = params.find(':');
  const std::string prefix = colon == std::string::npos ? "" : params.substr(0, colon);
  static const std::vector<std::string> kKnown = {"qcow", "qcow2", "vmdk", "raw", "dmu"};
  bool known = false;
  for (const auto& k : kKnown) known = known || prefix == k;
  if (!known || colon + 1 >= params.size() || params[colon + 1] != '/')
    return fail(EINVAL, params +
                            ": target is not a known <format>:<absolute path> (qcow, qcow2, vmdk, "
                            "raw, dmu)");
  return Target{prefix == "dmu" ? "" : prefix, params.substr(colon + 1)};
}

std::optional<BackendId> parse_backend_path(const std::string& path) {
  std::string_view p = path;
  const std::string_view absolute = "/local/domain/0/";
  if (p.starts_with(absolute)) p.remove_prefix(absolute.size());
  const std::string_view vbd = "backend/vbd/";
  if (!p.starts_with(vbd)) return std::nullopt;
  p.remove_prefix(vbd.size());
  const auto slash = p.find('/');
  if (slash == std::string_view::npos) return std::nullopt;
  auto domid = decimal<uint32_t>(p.substr(0, slash));
  std::string_view rest = p.substr(slash + 1);
  auto devid = decimal<uint32_t>(rest.substr(0, rest.find('/')));
  if (!domid || !devid) return std::nullopt;
  return BackendId{*domid, *devid};
}

std::string backend_path(BackendId id) {
  return std::string(kVbdRoot) + "/" + std::to_string(id.domid) + "/" + std::to_string(id.devid);
}

std::string dm_name(BackendId id) {
  return "xen-vbd-" + std::to_string(id.domid) + "-" + std::to_string(id.devid);
}

std::string group_name(uint32_t domid) { return "xen-dom" + std::to_string(domid); }

std::optional<BackendId> parse_dm_name(const std::string& name) {
  std::string_view n = name;
  if (!n.starts_with("xen-vbd-")) return std::nullopt;
  n.remove_prefix(8);
  const auto dash = n.find('-');
  if (dash == std::string_view::npos) return std::nullopt;
  auto domid = decimal<uint32_t>(n.substr(0, dash));
  auto devid = decimal<uint32_t>(n.substr(dash + 1));
  if (!domid || !devid) return std::nullopt;
  return BackendId{*domid, *devid};
}

std::string hotplug_state_dir(const std::string& state_root, BackendId id) {
  return state_root + "/backend_vbd_" + std::to_string(id.domid) + "_" + std::to_string(id.devid);
}

std::string request_claim(pid_t self) { return "claimed " + std::to_string(self); }

bool request_claimable(const std::string& value, pid_t self,
                       const std::function<bool(pid_t)>& helper_alive) {
  if (value == "add") return true;
  const std::string_view prefix = "claimed ";
  if (!value.starts_with(prefix)) return false;
  const auto pid = decimal<pid_t>(std::string_view(value).substr(prefix.size()));
  if (!pid || *pid <= 0) return false;
  return *pid != self && !helper_alive(*pid);
}

std::optional<int64_t> parse_deadline(const std::string& value) {
  if (value.size() > 12) return std::nullopt;
  const auto v = decimal<int64_t>(value);
  if (!v || *v <= 0) return std::nullopt;
  return v;
}

std::chrono::milliseconds attach_budget(std::optional<int64_t> deadline_s, int64_t now_ms,
                                        std::chrono::seconds attach_timeout) {
  const std::chrono::milliseconds whole(attach_timeout);
  if (!deadline_s) return whole;
  // parse_deadline's at most 12 digits keep this far from overflowing;
  // now_ms is compared before it is subtracted, whatever the clock says.
  const int64_t end_ms = *deadline_s * 1000 - kAnswerMargin.count();
  if (now_ms >= end_ms || end_ms - now_ms < kShortestAttach.count())
    return std::chrono::milliseconds(0);
  return std::min(whole, std::chrono::milliseconds(end_ms - now_ms));
}

std::chrono::seconds gone_detach_retry_delay(unsigned failures) {
  constexpr std::chrono::seconds first{5}, most{300};
  auto delay = first;
  for (unsigned i = 1; i < failures && delay < most; ++i) delay *= 2;
  return std::min(delay, most);
}

}  // namespace dmu::xenhelper
