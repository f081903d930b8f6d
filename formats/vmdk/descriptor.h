// The VMDK text descriptor ("# Disk DescriptorFile"): a strict, bounded
// tokenizer for hostile input, and the writer create() uses.
//
// Grammar, one item per line (LF or CRLF), up to the first NUL byte:
//   blank line | "#" comment
//   key = value             value bare (no spaces or quotes) or "quoted"
//   ACCESS SECTORS TYPE ["FILE" [OFFSET]]
// ACCESS is RW, RDONLY or NOACCESS; SECTORS and OFFSET are decimal; TYPE is
// one of FLAT SPARSE ZERO VMFS VMFSSPARSE VMFSRDM VMFSRAW SESPARSE.  Errors
// name the file and the line: "disk.vmdk: descriptor line 7: unknown extent
// type 'FOO'".  What the engine supports of it is decided in vmdk_image.cc.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"

namespace dmu::formats::vmdk {

inline constexpr size_t kMaxDescriptorBytes = size_t(1) << 20;
inline constexpr size_t kMaxDescriptorLines = 20000;
inline constexpr size_t kMaxExtents = 4096;
inline constexpr uint32_t kNoParentCid = 0xffffffff;

struct DescriptorExtent {
  std::string access;              // RW, RDONLY, NOACCESS
  uint64_t sectors = 0;            // > 0
  std::string type;                // FLAT, SPARSE, ...
  std::string filename;            // empty only for ZERO
  std::optional<uint64_t> offset;  // in sectors, FLAT/VMFS
  size_t line = 0;                 // 1-based, for messages
};

struct Descriptor {
  std::map<std::string, std::string> keys;  // unquoted values; a key appears once
  std::vector<DescriptorExtent> extents;
  uint32_t cid = kNoParentCid;
  uint32_t parent_cid = kNoParentCid;
  // Where the CID value's hex digits sit in the text (so a new CID of the same
  // length can be written in place, one sector write, never a torn file).
  size_t cid_pos = 0, cid_len = 0;
  std::string create_type;                 // "" if absent
  std::optional<std::string> parent_hint;  // parentFileNameHint
};

// Parses descriptor text (stops at the first NUL).  CID and parentCID are
// required (QEMU refuses images without them); `path` names the file in errors.
Result<Descriptor> parse_descriptor(std::string_view text, const std::string& path);

// The descriptor QEMU's vmdk create writes, byte for byte.
struct DescriptorSpec {
  uint32_t cid = 0;
  uint32_t parent_cid = kNoParentCid;
  std::string create_type;
  std::optional<std::string> parent_hint;
  std::vector<std::string> extent_lines;  // "RW 20480 SPARSE \"a.vmdk\""
  std::string hw_version = "4";
  uint64_t size = 0;  // bytes, for the geometry
  std::string adapter_type = "ide";
  std::string tools_version = "2147483647";
};
std::string build_descriptor(const DescriptorSpec& spec);

}  // namespace dmu::formats::vmdk
