// dmu info: what an image is, as qemu-img info shows it (the json keys are
// qemu-img 7.2's, so tools can read either).  Without --backing-chain only
// the image itself is opened (a missing backing file is no error), as
// qemu-img does.
#include <iostream>
#include <set>

#include <nlohmann/json.hpp>

#include "cli/cli_common.h"
#include "formats/format_specific_json.h"

namespace dmu::cli {

extern const Command kInfo;

namespace {

using ordered = nlohmann::ordered_json;

ordered image_json(formats::Image& image) {
  const formats::ImageInfo& info = image.info();
  ordered j;
  if (info.backing_file && info.backing_file_format)
    j["backing-filename-format"] = *info.backing_file_format;
  j["virtual-size"] = info.virtual_size;
  j["filename"] = info.filename;
  if (info.cluster_size) j["cluster-size"] = info.cluster_size;
  j["format"] = info.format;
  std::set<std::string> files = {info.filename};
  for (File* f : image.data_files()) files.insert(f->path());
  uint64_t actual = 0;
  for (const std::string& f : files) actual += allocated_bytes(f);
  j["actual-size"] = actual;
  if (const auto specific = formats::format_specific_json(info.format_specific);
      !specific.is_null())
    j["format-specific"] = ordered::parse(specific.dump());
  if (info.backing_file) {
    j["full-backing-filename"] = formats::resolve_backing_path(info.filename, *info.backing_file);
    j["backing-filename"] = *info.backing_file;
  }
  j["dirty-flag"] = info.dirty;
  return j;
}

// qemu-img's human rendering of format-specific data: "lazy-refcounts" ->
// "lazy refcounts: false", nested objects and lists indented by 4.
void print_specific(const nlohmann::json& value, int indent) {
  const std::string pad(size_t(indent), ' ');
  auto name = [](std::string key) {
    for (char& c : key)
      if (c == '-') c = ' ';
    return key;
  };
  auto scalar = [](const nlohmann::json& v) {
    return v.is_string() ? v.get<std::string>() : v.dump();
  };
  if (value.is_object()) {
    for (const auto& [key, v] : value.items()) {
      if (v.is_structured()) {
        std::cout << pad << name(key) << ":\n";
        print_specific(v, indent + 4);
      } else {
        std::cout << pad << name(key) << ": " << scalar(v) << "\n";
      }
    }
  } else if (value.is_array()) {
    for (size_t i = 0; i < value.size(); ++i) {
      std::cout << pad << "[" << i << "]:\n";
      print_specific(value[i], indent + 4);
    }
  } else {
    std::cout << pad << scalar(value) << "\n";
  }
}

void print_human(const ordered& j, formats::Image& image) {
  const formats::ImageInfo& info = image.info();
  std::cout << "image: " << info.filename << "\n"
            << "file format: " << info.format << "\n"
            << "virtual size: " << human_size(info.virtual_size) << " (" << info.virtual_size
            << " bytes)\n"
            << "disk size: " << human_size(j["actual-size"].get<uint64_t>()) << "\n";
  if (info.cluster_size) std::cout << "cluster_size: " << info.cluster_size << "\n";
  if (info.backing_file) {
    std::cout << "backing file: " << *info.backing_file;
    std::string full = j["full-backing-filename"].get<std::string>();
    if (full != *info.backing_file) std::cout << " (actual path: " << full << ")";
    std::cout << "\n";
    if (info.backing_file_format)
      std::cout << "backing file format: " << *info.backing_file_format << "\n";
  }
  if (info.dirty) std::cout << "cleanly shut down: no\n";
  const nlohmann::json specific = formats::format_specific_json(info.format_specific);
  if (specific.is_object() && specific.contains("data")) {
    std::cout << "Format specific information:\n";
    print_specific(specific["data"], 4);
  }
}

}  // namespace

int info_main(const std::vector<std::string>& args) {
  po::options_description options("options");
  options.add_options()("output", po::value<std::string>()->default_value("human"),
                        "human or json")("backing-chain", "show every image of the backing chain")(
      "format,f", po::value<std::string>(), "image format (probed if absent)")(
      "image", po::value<std::string>()->required(), "the image");
  po::positional_options_description positional;
  positional.add("image", 1);
  int code = kExitOk;
  auto vm = parse_args(args, kInfo, options, positional, &code);
  if (!vm) return code;

  const std::string image = (*vm)["image"].as<std::string>();
  const std::string output = (*vm)["output"].as<std::string>();
  if (output != "human" && output != "json")
    return report(Error{EINVAL, "info: --output must be human or json, not '" + output + "'"});
  const bool whole_chain = vm->count("backing-chain") != 0;
  std::optional<std::string> format;
  if (vm->count("format")) format = (*vm)["format"].as<std::string>();

  auto chain = open_chain(image, format, formats::Access::ReadOnly, whole_chain);
  if (!chain) return report(chain.error());

  std::vector<ordered> infos;
  for (const auto& img : (*chain)->images()) infos.push_back(image_json(*img));
  if (output == "json") {
    ordered j = whole_chain ? ordered(infos) : infos.front();
    std::cout << j.dump(4) << "\n";
    return kExitOk;
  }
  for (size_t i = 0; i < infos.size(); ++i) {
    if (i) std::cout << "\n";
    print_human(infos[i], *(*chain)->images()[i]);
  }
  return kExitOk;
}

}  // namespace dmu::cli
