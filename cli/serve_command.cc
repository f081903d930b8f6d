// dmu serve --name NAME [--name NAME ...] | --group GROUP: the mapping process of attached
// devices (attach starts it with --supervise; run it by hand to rebind after
// a crash).
#include <cstdio>

#include "cli/cli_common.h"
#include "daemon/serve.h"
#include "daemon/supervise.h"

namespace dmu::cli {

extern const Command kServe;

int serve_main(const std::vector<std::string>& args) {
  po::options_description options("options");
  // clang-format off
  options.add_options()
      ("name", po::value<std::vector<std::string>>(),
       "an attached device to serve (repeat for a fixed set)")
      ("group", po::value<std::string>(),
       "serve the devices attached with --group GROUP; SIGHUP re-reads them")
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
  if (vm->count("name")) o.names = (*vm)["name"].as<std::vector<std::string>>();
  if (vm->count("group")) o.group = (*vm)["group"].as<std::string>();
  if (o.names.empty() == o.group.empty()) {
    std::fprintf(stderr, "dmu serve: give --name NAME... or --group GROUP (one of the two)\n");
    return kExitFailure;
  }
  o.ready_fd = (*vm)["ready-fd"].as<int>();
  return (*vm)["supervise"].as<bool>() ? daemon::supervise(o) : daemon::serve(o);
}

}  // namespace dmu::cli
