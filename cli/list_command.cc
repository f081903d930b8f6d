// dmu list [--output=human|json]: the attached devices, from their records
// under /run/dmu, with whether a mapping process serves each.
#include <iomanip>
#include <iostream>

#include <nlohmann/json.hpp>

#include "cli/cli_common.h"
#include "daemon/name_lock.h"
#include "daemon/state_file.h"

namespace dmu::cli {

extern const Command kList;

int list_main(const std::vector<std::string>& args) {
  po::options_description options("options");
  options.add_options()("output", po::value<std::string>()->default_value("human"),
                        "human or json");
  po::positional_options_description positional;
  int code = kExitOk;
  auto vm = parse_args(args, kList, options, positional, &code);
  if (!vm) return code;
  const std::string output = (*vm)["output"].as<std::string>();
  if (output != "human" && output != "json") {
    print_error("list: --output must be human or json, not '" + output + "'");
    return kExitFailure;
  }
  std::vector<std::string> problems;
  auto states = daemon::list_states(problems);
  for (const auto& p : problems) print_error(p);
  if (output == "json") {
    nlohmann::json all = nlohmann::json::array();
    for (const auto& s : states) {
      nlohmann::json j = daemon::to_json(s);
      j["served"] = daemon::lock_held(s.name);
      all.push_back(std::move(j));
    }
    std::cout << all.dump(2) << "\n";
  } else {
    for (const auto& s : states) {
      const bool served = daemon::lock_held(s.name);
      std::cout << s.node() << "  " << s.image << " (" << s.format
                << (s.read_only ? ", read-only" : "") << ")  "
                << (served ? "served by pid " + std::to_string(s.pid) : std::string("NOT SERVED"))
                << (served && s.supervisor ? " (supervisor " + std::to_string(s.supervisor) + ")"
                                           : std::string())
                << "\n";
    }
  }
  return problems.empty() ? kExitOk : kExitFailure;
}

}  // namespace dmu::cli
