// Table line and status line of the userspace target; see table_line.h.
#include "daemon/table_line.h"

#include <linux/dm-userspace.h>

#include <algorithm>
#include <sstream>

namespace dmu::daemon {

Result<void> check_table(const TableSpec& spec) {
  if (spec.key.empty() || spec.key.size() >= DMU_KEY_LEN)
    return fail(EINVAL, "table: key '" + spec.key + "' must be 1.." +
                            std::to_string(DMU_KEY_LEN - 1) + " characters");
  for (unsigned char c : spec.key)
    if (c <= ' ' || c >= 0x7f)
      return fail(EINVAL, "table: key '" + spec.key + "' has a space or unprintable character");
  const uint32_t bs = spec.block_sectors;
  if (bs < 8 || bs > (1u << 20) || (bs & (bs - 1)))
    return fail(EINVAL, "table: block_sectors " + std::to_string(bs) +
                            " is not a power of two in 8..2^20");
  if (spec.target_sectors == 0) return fail(EINVAL, "table: the device would be empty");
  if (spec.devs.empty() || spec.devs.size() > 64)
    return fail(EINVAL, "table: " + std::to_string(spec.devs.size()) +
                            " data devices (the target takes 1..64)");
  if (spec.writable_devs > spec.devs.size())
    return fail(EINVAL, "table: writable_devs " + std::to_string(spec.writable_devs) + " of " +
                            std::to_string(spec.devs.size()) + " devices");
  for (const auto& d : spec.devs)
    if (d.empty() || d.find(' ') != std::string::npos)
      return fail(EINVAL, "table: bad device name '" + d + "'");
  if (spec.daemon_timeout && *spec.daemon_timeout > 86400)
    return fail(EINVAL, "table: daemon_timeout " + std::to_string(*spec.daemon_timeout) +
                            " is above 86400 seconds");
  return {};
}

std::string table_params(const TableSpec& spec) {
  std::ostringstream s;
  s << spec.key << ' ' << spec.block_sectors << ' ' << spec.devs.size();
  for (const auto& d : spec.devs) s << ' ' << d;
  // writable_devs is always spelled out: the default (all devices writable)
  // would open backing images and the scratch store for writing.
  std::vector<std::string> opts = {"writable_devs", std::to_string(spec.writable_devs)};
  if (spec.daemon_timeout) {
    opts.push_back("daemon_timeout");
    opts.push_back(std::to_string(*spec.daemon_timeout));
  }
  s << ' ' << opts.size();
  for (const auto& o : opts) s << ' ' << o;
  return s.str();
}

Result<mapper::DmTableLine> table_line(const TableSpec& spec) {
  DMU_TRY(check_table(spec));
  return mapper::DmTableLine{0, spec.target_sectors, DMU_TARGET_NAME, table_params(spec)};
}

Result<std::vector<StatusField>> parse_status(const std::string& line) {
  std::vector<StatusField> out;
  std::istringstream words(line);
  std::string w;
  while (words >> w) {
    auto eq = w.find('=');
    if (eq == std::string::npos || eq == 0)
      return fail(EPROTO, "status line: '" + w + "' is not name=value");
    out.push_back({w.substr(0, eq), w.substr(eq + 1)});
  }
  return out;
}

}  // namespace dmu::daemon

namespace dmu::daemon {

uint64_t scratch_file_size(uint64_t block_size) {
  // 64 MiB of decompressed clusters, at least 16 slots (ScratchStore's floor).
  constexpr uint64_t kCapacity = 64 << 20;
  const uint64_t slots = std::max<uint64_t>(kCapacity / block_size, 16);
  return slots * block_size;
}

Result<std::string> userspace_status_field(const std::string& name, const std::string& field) {
  DMU_ASSIGN_OR_RETURN(auto lines, mapper::dm_status(name));
  return status_field(lines, field);
}

Result<std::string> status_field(const std::vector<mapper::DmTableLine>& status,
                                 const std::string& field) {
  for (const auto& l : status) {
    if (l.type != "userspace") continue;
    DMU_ASSIGN_OR_RETURN(auto fields, parse_status(l.params));
    for (const auto& f : fields)
      if (f.name == field) return f.value;
  }
  return std::string();
}

}  // namespace dmu::daemon
