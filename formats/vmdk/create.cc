// Creating vmdk images as `qemu-img create -f vmdk` (QEMU 7.2) does, with its
// option names: subformat (monolithicSparse, monolithicFlat,
// twoGbMaxExtentSparse, twoGbMaxExtentFlat, streamOptimized), adapter_type,
// hwversion, compat6, toolsversion, zeroed_grain, backing_file (a vmdk; its
// CID becomes our parentCID).  An empty streamOptimized image is QEMU's
// monolithicSparse layout with version 3, the compressed and markers flags
// and deflate named in the header (vmdk_init_extent); the engine opens it
// read-only, so only creating an empty one is offered here.
// Sparse extents get 64 KiB grains, 512-entry grain tables all allocated up
// front, a redundant directory, and QEMU's layout byte for byte; split
// subformats use 2 GiB extents named <name>-s001.vmdk / <name>-f001.vmdk.
#include "formats/vmdk/create.h"

#include <random>

#include "common/checked.h"
#include "common/endian.h"
#include "formats/vmdk/descriptor.h"
#include "formats/vmdk/sparse_header.h"
#include "formats/vmdk/vmdk_image.h"

namespace dmu::formats::vmdk {
namespace {

constexpr uint64_t kSplitSize = uint64_t(1) << 31;
constexpr uint64_t kEmbeddedDescSectors = 20;

bool parse_bool(const std::string& v, bool& out) {
  if (v == "on" || v == "true" || v == "yes") return out = true, true;
  if (v == "off" || v == "false" || v == "no") return out = false, true;
  return false;
}

// A sparse extent of `bytes` (no descriptor inside unless the caller writes
// one at sector 1, which the header reserves either way).
Result<void> init_sparse(File& f, uint64_t bytes, bool zeroed_grain, bool stream) {
  SparseHeader h;
  h.version = stream ? 3 : zeroed_grain ? 2 : 1;
  h.flags = kFlagRedundantGd | kFlagNewlineDetect | (zeroed_grain ? kFlagZeroGrain : 0) |
            (stream ? kFlagCompressed | kFlagMarkers : 0);
  h.compress_algorithm = stream ? kCompressDeflate : 0;
  h.capacity = bytes / 512;
  h.grain_size = 128;
  h.gtes_per_gt = 512;
  uint64_t grains = (h.capacity + h.grain_size - 1) / h.grain_size;
  uint64_t gt_sectors = (h.gtes_per_gt * 4 + 511) / 512;
  uint64_t gt_count = (grains + h.gtes_per_gt - 1) / h.gtes_per_gt;
  uint64_t gd_sectors = (gt_count * 4 + 511) / 512;
  h.desc_offset = 1;
  h.desc_size = kEmbeddedDescSectors;
  h.rgd_offset = h.desc_offset + h.desc_size;
  h.gd_offset = h.rgd_offset + gd_sectors + gt_sectors * gt_count;
  h.grain_offset = *align_up(h.gd_offset + gd_sectors + gt_sectors * gt_count, h.grain_size);
  DMU_TRY(f.write(0, encode_header(h)));
  DMU_TRY(f.truncate(h.grain_offset * 512));
  std::vector<uint8_t> gd(gd_sectors * 512, 0);
  for (uint64_t dir : {h.rgd_offset, h.gd_offset}) {
    for (uint64_t i = 0; i < gt_count; ++i)
      store_le32(&gd[i * 4], uint32_t(dir + gd_sectors + i * gt_sectors));
    DMU_TRY(f.write(dir * 512, gd));
  }
  return {};
}

struct Names {
  std::string dir, prefix, postfix;  // "/a/", "disk", ".vmdk"
};

Names decompose(const std::string& path) {
  Names n;
  size_t slash = path.rfind('/');
  std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  n.dir = slash == std::string::npos ? "" : path.substr(0, slash + 1);
  size_t dot = base.rfind('.');
  n.prefix = dot == std::string::npos ? base : base.substr(0, dot);
  n.postfix = dot == std::string::npos ? "" : base.substr(dot);
  return n;
}

}  // namespace

Result<void> create(Env& env, const std::string& path, const CreateOptions& options) {
  std::string subformat = "monolithicSparse", adapter = "ide", hw, tools = "2147483647";
  bool zeroed_grain = false, compat6 = false;
  std::optional<std::string> backing = options.backing_file;
  auto opt_fail = [&](const std::string& msg) { return fail(EINVAL, path + ": vmdk: " + msg); };
  for (const auto& [key, value] : options.options) {
    if (key == "subformat") {
      subformat = value;
    } else if (key == "adapter_type") {
      adapter = value;
    } else if (key == "hwversion") {
      if (value != "undefined") hw = value;
    } else if (key == "toolsversion") {
      tools = value;
    } else if (key == "zeroed_grain") {
      if (!parse_bool(value, zeroed_grain)) return opt_fail("bad zeroed_grain '" + value + "'");
    } else if (key == "compat6") {
      if (!parse_bool(value, compat6)) return opt_fail("bad compat6 '" + value + "'");
    } else if (key == "backing_file") {
      if (!backing) backing = value;
    } else if (key == "backing_fmt") {
      if (value != "vmdk") return opt_fail("backing_file must be a vmdk image");
    } else if (key == "preallocation" && value == "off") {
    } else {
      return opt_fail("unsupported option '" + key + "=" + value + "'");
    }
  }
  if (options.backing_format && *options.backing_format != "vmdk")
    return opt_fail("backing_file must be a vmdk image");
  if (adapter != "ide" && adapter != "lsilogic" && adapter != "buslogic" && adapter != "legacyESX")
    return opt_fail("unknown adapter_type '" + adapter + "'");
  if (compat6) {
    if (!hw.empty()) return opt_fail("compat6 cannot be enabled with hwversion set");
    hw = "6";
  }
  if (hw.empty()) hw = "4";
  const bool stream = subformat == "streamOptimized";
  bool split = subformat == "twoGbMaxExtentSparse" || subformat == "twoGbMaxExtentFlat";
  bool flat = subformat == "monolithicFlat" || subformat == "twoGbMaxExtentFlat";
  if (!split && !flat && !stream && subformat != "monolithicSparse")
    return opt_fail("unknown subformat '" + subformat + "'");
  if (flat && backing) return fail(ENOTSUP, path + ": Flat image can't have backing file");
  if (flat && zeroed_grain) return fail(ENOTSUP, path + ": Flat image can't enable zeroed grain");
  auto size = align_up(options.virtual_size, 512);
  if (!size || *size == 0 || *size / 512 > kMaxCapacitySectors * 1024)
    return opt_fail("invalid virtual size " + std::to_string(options.virtual_size));
  if (!split && !flat && *size / 512 > kMaxCapacitySectors)
    return opt_fail(subformat + " extents hold at most 2 TiB");

  std::random_device rd;
  DescriptorSpec spec;
  spec.cid = rd();
  spec.create_type = subformat;
  spec.hw_version = hw;
  spec.size = *size;
  spec.adapter_type = adapter;
  spec.tools_version = tools;
  if (backing) {
    std::string full = backing->front() == '/' ? *backing : decompose(path).dir + *backing;
    auto parent = VmdkImage::open(env, full, Access::ReadOnly);
    if (!parent) return fail(parent.error().context(path + ": backing file"));
    spec.parent_cid = (*parent)->cid();
    spec.parent_hint = *backing;
  }

  Names n = decompose(path);
  DMU_ASSIGN_OR_RETURN(auto desc_file, env.open(path, OpenMode::CreateTruncate));
  auto line = [&](uint64_t bytes, const std::string& name) {
    return "RW " + std::to_string(bytes / 512) + (flat ? " FLAT \"" : " SPARSE \"") + name +
           (flat ? "\" 0" : "\"");
  };
  if (!split && !flat) {
    DMU_TRY(init_sparse(*desc_file, *size, zeroed_grain, stream));
    spec.extent_lines.push_back(line(*size, n.prefix + n.postfix));
  } else {
    uint64_t done = 0;
    for (unsigned idx = 1; done < *size; ++idx) {
      uint64_t bytes = split ? std::min(kSplitSize, *size - done) : *size;
      char num[8];
      std::snprintf(num, sizeof num, "%03u", idx);
      std::string name = split ? n.prefix + (flat ? "-f" : "-s") + num + n.postfix
                               : n.prefix + "-flat" + n.postfix;
      DMU_ASSIGN_OR_RETURN(auto f, env.open(n.dir + name, OpenMode::CreateTruncate));
      if (flat)
        DMU_TRY(f->truncate(bytes));
      else
        DMU_TRY(init_sparse(*f, bytes, zeroed_grain, false));
      DMU_TRY(f->sync());
      spec.extent_lines.push_back(line(bytes, name));
      done += bytes;
    }
  }
  std::string desc = build_descriptor(spec);
  auto bytes = std::span(reinterpret_cast<const uint8_t*>(desc.data()), desc.size());
  if (!split && !flat) {
    if (desc.size() > kEmbeddedDescSectors * 512)
      return opt_fail("descriptor does not fit in the 10 KiB the sparse header reserves");
    DMU_TRY(desc_file->write(512, bytes));
  } else {
    DMU_TRY(desc_file->write(0, bytes));
    DMU_TRY(desc_file->truncate(desc.size()));
  }
  DMU_TRY(desc_file->sync());
  // The extents' names live in the descriptor's directory.
  return env.sync_directory_of(path);
}

}  // namespace dmu::formats::vmdk
