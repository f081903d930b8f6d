// Shared pieces of the dmu subcommands (see cli_common.h).
#include "cli/cli_common.h"

#include <sys/stat.h>

#include <cstdio>
#include <iostream>

namespace dmu::cli {

void print_error(const std::string& message) {
  std::string line = message;
  for (char& c : line)
    if (c == '\n') c = ' ';
  std::fprintf(stderr, "dmu: %s\n", line.c_str());
}

std::optional<po::variables_map> parse_args(const std::vector<std::string>& args,
                                            const Command& command,
                                            const po::options_description& options,
                                            const po::positional_options_description& positional,
                                            int* exit_code) {
  po::options_description all(options);
  all.add_options()("help,h", "show this help and exit");
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(args).options(all).positional(positional).run(), vm);
    if (vm.count("help")) {
      std::cout << "usage: dmu " << command.synopsis << "\n\n" << command.summary << "\n\n" << all;
      *exit_code = kExitOk;
      return std::nullopt;
    }
    po::notify(vm);
  } catch (const po::error& e) {
    print_error(std::string(command.name) + ": " + e.what() + " (see dmu " + command.name +
                " --help)");
    *exit_code = kExitFailure;
    return std::nullopt;
  }
  return vm;
}

Result<std::unique_ptr<formats::Chain>> open_chain(const std::string& path,
                                                   const std::optional<std::string>& format,
                                                   formats::Access access, bool open_backing) {
  formats::ChainOptions options;
  options.format = format;
  options.access = access;
  options.lock = true;
  options.open_backing = open_backing;
  return formats::Chain::open(posix_env(), path, options);
}

uint64_t allocated_bytes(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) < 0) return 0;
  return uint64_t(st.st_blocks) * 512;
}

}  // namespace dmu::cli
