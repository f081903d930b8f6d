// dmu detach NAME: see daemon/detach.h.
#include <cstdio>

#include "cli/cli_common.h"
#include "daemon/detach.h"

namespace dmu::cli {

extern const Command kDetach;

int detach_main(const std::vector<std::string>& args) {
  po::options_description options("options");
  // clang-format off
  options.add_options()
      ("force", po::bool_switch(), "remove the device even with no mapping process to commit "
                                   "the kernel's uncommitted allocations (they are lost)")
      ("wait-release", po::value<uint32_t>(), "first wait up to S seconds for the process "
                                              "holding NAME to let it go (what a timed-out "
                                              "attach runs in the background)")
      ("name", po::value<std::string>()->required(), "the device name");
  // clang-format on
  po::positional_options_description positional;
  positional.add("name", 1);
  int code = kExitOk;
  auto vm = parse_args(args, kDetach, options, positional, &code);
  if (!vm) return code;
  daemon::DetachOptions o;
  o.name = (*vm)["name"].as<std::string>();
  o.force = (*vm)["force"].as<bool>();
  if (vm->count("wait-release"))
    o.wait_release = std::chrono::seconds((*vm)["wait-release"].as<uint32_t>());
  auto note = daemon::detach(o);
  if (!note) return report(note.error());
  if (!note->empty()) std::fprintf(stderr, "dmu: %s\n", note->c_str());
  return kExitOk;
}

}  // namespace dmu::cli
