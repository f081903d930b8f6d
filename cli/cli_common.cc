// Shared pieces of the dmu subcommands (see cli_common.h).
#include "cli/cli_common.h"

#include <sys/stat.h>

#include <cmath>
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

Result<uint64_t> parse_size(const std::string& text) {
  const char* s = text.c_str();
  char* end = nullptr;
  errno = 0;
  if (text.empty() || text[0] == '-' || !(std::isdigit(static_cast<unsigned char>(text[0]))))
    return fail(EINVAL, "invalid size '" + text + "'");
  double value = std::strtod(s, &end);
  if (errno || end == s) return fail(EINVAL, "invalid size '" + text + "'");
  unsigned shift = 0;
  std::string suffix(end);
  if (!suffix.empty()) {
    static const std::string units = "BKMGTPE";
    auto pos = units.find(char(std::toupper(static_cast<unsigned char>(suffix[0]))));
    if (suffix.size() != 1 || pos == std::string::npos)
      return fail(EINVAL, "invalid size suffix in '" + text + "' (use k, M, G, T, P or E)");
    shift = unsigned(pos) * 10;
  }
  double bytes = std::ldexp(value, int(shift));
  if (bytes >= 18446744073709551616.0) return fail(ERANGE, "size '" + text + "' is too large");
  if (bytes != std::floor(bytes))
    return fail(EINVAL, "size '" + text + "' is not a whole number of bytes");
  return uint64_t(bytes);
}

std::string human_size(uint64_t bytes) {
  static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  if (bytes < 1024) return std::to_string(bytes) + " B";
  double v = double(bytes);
  unsigned u = 0;
  while (v >= 1024 && u < 6) {
    v /= 1024;
    ++u;
  }
  // qemu-img prints three significant digits ("1.5 GiB", "324 KiB").
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3g %s", v, units[u]);
  return buf;
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
