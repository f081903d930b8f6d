// The dm table line of a `userspace` target (kmod/README.md, "Table line"):
//   0 <target_sectors> userspace <key> <block_sectors> <nr_devs> <dev>...
//     [<#opt_args> writable_devs <n> [daemon_timeout <s>]]
// Pure functions, so the rules are unit-tested without a kernel.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/error.h"
#include "mapper/dm_device.h"

namespace dmu::daemon {

struct TableSpec {
  std::string key;
  uint64_t target_sectors = 0;
  uint32_t block_sectors = 0;
  std::vector<std::string> devs;  // "major:minor" or /dev/loopN, table order
  // Devices 0..writable_devs-1 may be written (the top image's data files);
  // the rest (backing images, scratch store) are opened read-only.
  uint32_t writable_devs = 0;
  std::optional<uint32_t> daemon_timeout;  // seconds; module default if absent
};

// Checks the spec against the target's limits; the error names the field.
Result<void> check_table(const TableSpec& spec);
// The parameters after "userspace" (what DmTableLine::params holds).
std::string table_params(const TableSpec& spec);
Result<mapper::DmTableLine> table_line(const TableSpec& spec);

// One `name=value` field of the kernel's status line, in the kernel's order.
struct StatusField {
  std::string name;
  std::string value;
};
// Splits the `userspace` status line ("requests=N hits=N ... daemon=bound
// ...") into fields; words without '=' are refused, naming the word.
Result<std::vector<StatusField>> parse_status(const std::string& line);
// Field `field` among a device's status lines (`dmsetup status`): the
// userspace target's, "" when it has no such field or there is none.
Result<std::string> status_field(const std::vector<mapper::DmTableLine>& status,
                                 const std::string& field);
// The same for dm device NAME, read from the kernel.
Result<std::string> userspace_status_field(const std::string& name, const std::string& field);

}  // namespace dmu::daemon

namespace dmu::daemon {

// Bytes of the scratch store file for a block size: attach creates the file
// (its loop device's size is fixed then), every mapping process reuses it.
uint64_t scratch_file_size(uint64_t block_size);

}  // namespace dmu::daemon
