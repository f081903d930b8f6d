// dmu serve --name NAME [--name NAME ...]: the mapping process of attached
// devices (attach starts it with --supervise; run it by hand to rebind after
// a crash).
#include "cli/cli_common.h"
#include "daemon/serve.h"
#include "daemon/supervise.h"

namespace dmu::cli {

extern const Command kServe;

int serve_main(const std::vector<std::string>& args) {
  po::options_description options("options");
  // clang-format off
  options.add_options()
      ("name", po::value<std::vector<std::string>>()->required(),
       "an attached device to serve (repeat for a group)")
      ("ready-fd", po::value<int>()->default_value(-1),
       "write \"ready\" (or \"error: ...\") to this descriptor once bound")
      ("supervise", po::bool_switch(),
       "run the mapping process under a supervisor that restarts it when it dies");
  // clang-format on
  po::positional_options_description positional;
  int code = kExitOk;
  auto vm = parse_args(args, kServe, options, positional, &code);
  if (!vm) return code;
  daemon::ServeOptions o;
  o.names = (*vm)["name"].as<std::vector<std::string>>();
  o.ready_fd = (*vm)["ready-fd"].as<int>();
  return (*vm)["supervise"].as<bool>() ? daemon::supervise(o) : daemon::serve(o);
}

}  // namespace dmu::cli
