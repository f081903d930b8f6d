#include "formats/format_specific_json.h"

namespace dmu::formats {
namespace {

nlohmann::json data_of(const Qcow2Specific& s) {
  nlohmann::json data;
  data["compat"] = s.v3 ? "1.1" : "0.10";
  data["compression-type"] = s.zstd ? "zstd" : "zlib";
  data["refcount-bits"] = s.refcount_bits;
  if (s.v3) {
    data["lazy-refcounts"] = s.lazy_refcounts;
    data["corrupt"] = s.corrupt;
    data["extended-l2"] = s.extended_l2;
  }
  if (s.data_file) {
    data["data-file"] = *s.data_file;
    data["data-file-raw"] = s.data_file_raw;
  }
  if (!s.bitmaps.empty()) {
    nlohmann::json list = nlohmann::json::array();
    for (const Qcow2Bitmap& b : s.bitmaps) {
      nlohmann::json flags = nlohmann::json::array();
      if (b.in_use) flags.push_back("in-use");
      if (b.autoload) flags.push_back("auto");
      list.push_back({{"flags", flags}, {"name", b.name}, {"granularity", b.granularity}});
    }
    data["bitmaps"] = list;
  }
  return {{"type", "qcow2"}, {"data", data}};
}

nlohmann::json data_of(const VmdkSpecific& s) {
  nlohmann::json extents = nlohmann::json::array();
  for (const VmdkExtentSpecific& e : s.extents) {
    nlohmann::json x = {
        {"virtual-size", e.virtual_size}, {"filename", e.filename}, {"format", e.format}};
    if (e.cluster_size) x["cluster-size"] = e.cluster_size;
    if (e.compressed) x["compressed"] = true;
    extents.push_back(std::move(x));
  }
  return {{"type", "vmdk"},
          {"data",
           {{"cid", s.cid},
            {"parent-cid", s.parent_cid},
            {"create-type", s.create_type},
            {"extents", std::move(extents)}}}};
}

nlohmann::json data_of(std::monostate) {
  return nullptr;
}

}  // namespace

nlohmann::json format_specific_json(const FormatSpecific& specific) {
  return std::visit([](const auto& s) { return data_of(s); }, specific);
}

}  // namespace dmu::formats
