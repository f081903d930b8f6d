// The internal snapshot table: parsed and validated at open, because the
// snapshots' L1 tables are metadata the allocator must avoid and check()
// must count.  The engine only ever reads and writes the active L1 table.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/error.h"
#include "fileio/file.h"
#include "formats/qcow2/header.h"

namespace dmu::formats::qcow2 {

struct Snapshot {
  uint64_t l1_table_offset = 0;
  uint32_t l1_size = 0;
  std::string id;
  std::string name;
};

struct SnapshotTable {
  std::vector<Snapshot> snapshots;
  uint64_t bytes = 0;  // size of the table on disk
};

Result<SnapshotTable> read_snapshot_table(File& file, const Header& h, const std::string& path);

}  // namespace dmu::formats::qcow2
