// dmu stats NAME [--output=human|json]: the kernel's counters (the target's
// status line, read through libdevmapper) and the mapping process's own
// (/run/dmu/NAME.stats.json).
#include <fstream>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli/cli_common.h"
#include "daemon/name_lock.h"
#include "daemon/paths.h"
#include "daemon/state_file.h"
#include "daemon/table_line.h"
#include "mapper/dm_device.h"

namespace dmu::cli {

extern const Command kStats;

namespace {

// Numbers as numbers, words (daemon=bound) as strings.
nlohmann::json field_value(const std::string& v) {
  if (!v.empty() && v.find_first_not_of("0123456789") == std::string::npos)
    return std::stoull(v);
  return v;
}

}  // namespace

int stats_main(const std::vector<std::string>& args) {
  po::options_description options("options");
  options.add_options()("output", po::value<std::string>()->default_value("human"),
                        "human or json")("name", po::value<std::string>()->required(),
                                         "the device name");
  po::positional_options_description positional;
  positional.add("name", 1);
  int code = kExitOk;
  auto vm = parse_args(args, kStats, options, positional, &code);
  if (!vm) return code;
  const std::string output = (*vm)["output"].as<std::string>();
  const std::string name = (*vm)["name"].as<std::string>();
  if (output != "human" && output != "json") {
    print_error("stats: --output must be human or json, not '" + output + "'");
    return kExitFailure;
  }
  auto state = daemon::read_state(name);
  if (!state) return report(state.error());
  if (!*state) return report(Error{ENOENT, name + ": not attached (no " + daemon::state_path(name) + ")"});
  auto lines = mapper::dm_status(name);
  if (!lines) return report(lines.error());
  nlohmann::json kernel = nlohmann::json::object();
  std::vector<daemon::StatusField> fields;
  for (const auto& l : *lines) {
    if (l.type != "userspace") continue;
    auto parsed = daemon::parse_status(l.params);
    if (!parsed) return report(parsed.error().context("dm device " + name));
    fields = *parsed;
  }
  for (const auto& f : fields) kernel[f.name] = field_value(f.value);

  nlohmann::json process = nullptr;
  const bool served = daemon::lock_held(name);
  if (std::ifstream in(daemon::stats_path(name)); in) {
    std::stringstream text;
    text << in.rdbuf();
    process = nlohmann::json::parse(text.str(), nullptr, false);
    if (process.is_discarded()) process = nullptr;
  }
  if (output == "json") {
    nlohmann::json j = {{"name", name}, {"node", (*state)->node()}, {"image", (*state)->image},
                        {"served", served},
                        {"kernel", kernel}, {"daemon", process}};
    std::cout << j.dump(2) << "\n";
    return kExitOk;
  }
  std::cout << name << ": " << (*state)->image << " (" << (*state)->format << ")"
            << (served ? "" : "  [no mapping process]") << "\nkernel:";
  for (const auto& f : fields) std::cout << " " << f.name << "=" << f.value;
  std::cout << "\n";
  if (process.is_object()) {
    std::cout << "daemon" << (served ? "" : " (last process)") << ":";
    for (auto& [k, v] : process.items()) std::cout << " " << k << "=" << v.dump();
    std::cout << "\n";
  }
  return kExitOk;
}

}  // namespace dmu::cli
