// Reading the snapshot table (see snapshots.h).
#include "formats/qcow2/snapshots.h"

#include "common/checked.h"
#include "common/endian.h"
#include "formats/qcow2/table_cache.h"

namespace dmu::formats::qcow2 {

Result<SnapshotTable> read_snapshot_table(File& file, const Header& h, const std::string& path) {
  SnapshotTable t;
  const uint64_t cs = uint64_t(1) << h.cluster_bits;
  uint64_t off = h.snapshots_offset;
  for (uint32_t i = 0; i < h.nb_snapshots; ++i) {
    auto where = [&] { return path + ": snapshot " + std::to_string(i) + " at " + hex(off); };
    uint8_t fixed[40];
    DMU_TRY(read_padded(file, off, fixed));
    Snapshot s;
    s.l1_table_offset = load_be64(fixed);
    s.l1_size = load_be32(fixed + 8);
    uint16_t id_size = load_be16(fixed + 12);
    uint16_t name_size = load_be16(fixed + 14);
    uint32_t extra_size = load_be32(fixed + 36);
    if (extra_size > kMaxSnapshotExtraData)
      return fail(EINVAL, where() + ": extra data of " + std::to_string(extra_size) +
                              " bytes exceeds " + std::to_string(kMaxSnapshotExtraData));
    if (s.l1_size > kMaxL1Bytes / 8)
      return fail(EFBIG, where() + ": L1 table of " + std::to_string(s.l1_size) +
                             " entries exceeds the 32 MiB limit");
    if (s.l1_size && s.l1_table_offset % cs)
      return fail(EINVAL, where() + ": L1 table offset " + hex(s.l1_table_offset) +
                              " is not cluster aligned");
    uint64_t entry = 40 + uint64_t(extra_size) + id_size + name_size;
    entry = (entry + 7) & ~uint64_t(7);
    std::vector<uint8_t> strings(id_size + size_t(name_size));
    DMU_TRY(read_padded(file, off + 40 + extra_size, strings));
    s.id.assign(strings.begin(), strings.begin() + id_size);
    s.name.assign(strings.begin() + id_size, strings.end());
    t.bytes += entry;
    if (t.bytes > kMaxSnapshotTableBytes)
      return fail(EFBIG, path + ": snapshot table exceeds 64 MiB");
    off += entry;
    t.snapshots.push_back(std::move(s));
  }
  return t;
}

}  // namespace dmu::formats::qcow2
