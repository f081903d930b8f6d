// dmu check: the engine's metadata check, reported and exited as qemu-img
// check does (0 clean, 1 check incomplete, 2 corruptions, 3 leaks, 63 the
// format has no check).  The image is opened read-only unless -r asks for
// repairs; its backing chain is opened too (read-only), as qemu-img check
// does, so a missing, unreadable or looping backing file fails with exit 1
// and one line naming the file instead of a clean report.
#include <iostream>

#include <nlohmann/json.hpp>

#include "cli/cli_common.h"

namespace dmu::cli {

extern const Command kCheck;

namespace {

constexpr int kExitIncomplete = 1;
constexpr int kExitCorrupt = 2;
constexpr int kExitLeaks = 3;
constexpr int kExitNoCheck = 63;

int exit_code(const formats::CheckReport& r) {
  if (r.check_errors) return kExitIncomplete;
  if (r.corruptions) return kExitCorrupt;
  if (r.leaks) return kExitLeaks;
  return kExitOk;
}

void print_json(const formats::CheckReport& r, const formats::ImageInfo& info) {
  // qemu-img leaves out the counters that are zero (all but check-errors).
  nlohmann::ordered_json j;
  if (r.image_end_offset) j["image-end-offset"] = *r.image_end_offset;
  if (r.total_clusters) j["total-clusters"] = r.total_clusters;
  j["check-errors"] = r.check_errors;
  if (r.leaks) j["leaks"] = r.leaks;
  if (r.corruptions) j["corruptions"] = r.corruptions;
  if (r.leaks_fixed) j["leaks-fixed"] = r.leaks_fixed;
  if (r.corruptions_fixed) j["corruptions-fixed"] = r.corruptions_fixed;
  if (r.allocated_clusters) j["allocated-clusters"] = r.allocated_clusters;
  j["filename"] = info.filename;
  j["format"] = info.format;
  if (r.fragmented_clusters) j["fragmented-clusters"] = r.fragmented_clusters;
  if (r.compressed_clusters) j["compressed-clusters"] = r.compressed_clusters;
  std::cout << j.dump(4) << "\n";
}

void print_human(const formats::CheckReport& r) {
  for (const std::string& m : r.messages) std::cout << m << "\n";
  if (r.corruptions_fixed || r.leaks_fixed)
    std::cout << "The following inconsistencies were found and repaired:\n\n    " << r.leaks_fixed
              << " leaked clusters\n    " << r.corruptions_fixed << " corruptions\n\n";
  if (!r.corruptions && !r.leaks && !r.check_errors)
    std::cout << "No errors were found on the image.\n";
  if (r.corruptions)
    std::cout << "\n"
              << r.corruptions << " errors were found on the image.\n"
              << "Data may be corrupted, or further writes to the image may corrupt it.\n";
  if (r.leaks)
    std::cout << "\n"
              << r.leaks << " leaked clusters were found on the image.\n"
              << "This means waste of disk space, but no harm to data.\n";
  if (r.check_errors)
    std::cout << "\n" << r.check_errors << " internal errors have occurred during the check.\n";
  if (r.total_clusters) {
    const double total = double(r.total_clusters);
    char line[160];
    std::snprintf(line, sizeof line,
                  "%llu/%llu = %0.2f%% allocated, %0.2f%% fragmented, %0.2f%% compressed "
                  "clusters\n",
                  (unsigned long long)r.allocated_clusters, (unsigned long long)r.total_clusters,
                  100.0 * double(r.allocated_clusters) / total,
                  100.0 * double(r.fragmented_clusters) / total,
                  100.0 * double(r.compressed_clusters) / total);
    std::cout << line;
  }
  if (r.image_end_offset) std::cout << "Image end offset: " << *r.image_end_offset << "\n";
}

}  // namespace

int check_main(const std::vector<std::string>& args) {
  po::options_description options("options");
  options.add_options()("output", po::value<std::string>()->default_value("human"),
                        "human or json")("repair,r", po::value<std::string>(),
                                         "leaks: repair leaked clusters; all: repair everything")(
      "format,f", po::value<std::string>(), "image format (probed if absent)")(
      "image", po::value<std::string>()->required(), "the image");
  po::positional_options_description positional;
  positional.add("image", 1);
  int code = kExitOk;
  auto vm = parse_args(args, kCheck, options, positional, &code);
  if (!vm) return code;
  const std::string image = (*vm)["image"].as<std::string>();
  const std::string output = (*vm)["output"].as<std::string>();
  if (output != "human" && output != "json")
    return report(Error{EINVAL, "check: --output must be human or json, not '" + output + "'"});
  formats::Repair repair = formats::Repair::None;
  if (vm->count("repair")) {
    const std::string r = (*vm)["repair"].as<std::string>();
    if (r == "leaks")
      repair = formats::Repair::Leaks;
    else if (r == "all")
      repair = formats::Repair::All;
    else
      return report(Error{EINVAL, "check: -r must be leaks or all, not '" + r + "'"});
  }
  std::optional<std::string> format;
  if (vm->count("format")) format = (*vm)["format"].as<std::string>();

  const auto access =
      repair == formats::Repair::None ? formats::Access::ReadOnly : formats::Access::ReadWrite;
  auto chain = open_chain(image, format, access, true);
  if (!chain) return report(chain.error());
  formats::Image& top = (*chain)->top();
  auto result = top.check(repair);
  if (!result && result.error().code == ENOTSUP) {
    print_error(image + ": this image format (" + top.info().format + ") does not support checks");
    return kExitNoCheck;
  }
  if (!result) {
    print_error(result.error().message);
    return kExitIncomplete;
  }
  formats::CheckReport r = *result;
  if (repair != formats::Repair::None && (r.leaks_fixed || r.corruptions_fixed)) {
    // Report what the repaired image looks like now, keeping the repair counts.
    auto again = top.check(formats::Repair::None);
    if (!again) {
      print_error(again.error().message);
      return kExitIncomplete;
    }
    again->leaks_fixed = r.leaks_fixed;
    again->corruptions_fixed = r.corruptions_fixed;
    r = *again;
  }
  if (output == "json")
    print_json(r, top.info());
  else
    print_human(r);
  return exit_code(r);
}

}  // namespace dmu::cli
