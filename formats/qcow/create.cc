// Creating qcow images exactly as `qemu-img create -f qcow` (QEMU 7.2) does:
// 4 KiB clusters and 512-entry L2 tables, or with a backing file 512-byte
// clusters and 4096-entry L2 tables (so a partial write copies little), the
// backing name right after the header, the L1 table 8-byte aligned after it
// and written as whole zeroed sectors.  qcow stores no backing format.
#include "formats/qcow/create.h"

#include "common/checked.h"
#include "formats/qcow/header.h"

namespace dmu::formats::qcow {

Result<void> create(Env& env, const std::string& path, const CreateOptions& options) {
  for (const auto& [key, value] : options.options) {
    if (key == "preallocation" && value == "off") continue;
    if ((key == "encryption" && value == "off") || key == "backing_fmt" || key == "backing_file")
      continue;
    if (key == "encryption" || key == "encrypt.format")
      return fail(ENOTSUP, path + ": encrypted qcow images are not supported");
    return fail(EINVAL, path + ": qcow: unsupported option '" + key + "=" + value + "'");
  }
  std::string backing = options.backing_file.value_or("");
  if (auto it = options.options.find("backing_file");
      it != options.options.end() && backing.empty())
    backing = it->second;
  if (backing.size() > kMaxBackingName)
    return fail(EINVAL, path + ": backing file name longer than 1023 bytes");
  auto size = align_up(options.virtual_size, 512);
  if (!size || *size < 512 || *size > (uint64_t(1) << 56))
    return fail(EINVAL, path + ": invalid virtual size " + std::to_string(options.virtual_size));

  Header h;
  h.size = *size;
  uint64_t header_size = kHeaderSize;
  if (!backing.empty()) {
    h.backing_file_offset = kHeaderSize;
    h.backing_file_size = uint32_t(backing.size());
    header_size += backing.size();
    h.cluster_bits = 9;
    h.l2_bits = 12;
  } else {
    h.cluster_bits = 12;
    h.l2_bits = 9;
  }
  header_size = *align_up(header_size, 8);
  h.l1_table_offset = header_size;
  uint64_t l1_bytes = h.l1_entries() * 8;
  if (h.l1_entries() > kMaxL1Entries)
    return fail(EFBIG, path + ": virtual size too large for a qcow image");

  DMU_ASSIGN_OR_RETURN(auto file, env.open(path, OpenMode::CreateTruncate));
  DMU_TRY(file->write(0, serialize_header(h)));
  if (!backing.empty())
    DMU_TRY(file->write(
        kHeaderSize, std::span(reinterpret_cast<const uint8_t*>(backing.data()), backing.size())));
  std::vector<uint8_t> zeros(*align_up(l1_bytes, 512), 0);
  DMU_TRY(file->write(header_size, zeros));
  DMU_TRY(file->sync());
  return env.sync_directory_of(path);
}

}  // namespace dmu::formats::qcow
