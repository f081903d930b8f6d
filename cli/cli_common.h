// Shared pieces of the dmu subcommands: the command table entry, argument
// parsing helpers with qemu-img's conventions (size suffixes), opening images
// with QEMU-compatible locks, and the one-line error report.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <boost/program_options.hpp>

#include "common/error.h"
#include "common/size.h"  // parse_size, human_size: qemu-img's size conventions
#include "formats/chain.h"

namespace dmu::cli {

namespace po = boost::program_options;

// Exit codes shared by the subcommands (check has its own on top).
constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;

// One subcommand: `dmu NAME ...`.  run() gets the arguments after NAME.
struct Command {
  const char* name;
  const char* synopsis;  // the usage line after "dmu "
  const char* summary;   // one line for `dmu --help`
  int (*run)(const std::vector<std::string>& args);
};

// Prints "dmu: <message>" as one line on stderr (newlines folded).
void print_error(const std::string& message);
inline int report(const Error& e) {
  print_error(e.message);
  return kExitFailure;
}

// Parses args with the options and positional names given; `--help` prints
// usage (synopsis + options) to stdout and returns an empty optional with
// exit code 0 in *exit_code; a usage error prints one line and sets 1.
std::optional<po::variables_map> parse_args(const std::vector<std::string>& args,
                                            const Command& command,
                                            const po::options_description& options,
                                            const po::positional_options_description& positional,
                                            int* exit_code);

// Opens IMAGE's chain with QEMU-compatible locks on its files.
Result<std::unique_ptr<formats::Chain>> open_chain(const std::string& path,
                                                   const std::optional<std::string>& format,
                                                   formats::Access access, bool open_backing);

// Bytes the file takes on disk (st_blocks), 0 when it cannot be stat'ed.
uint64_t allocated_bytes(const std::string& path);

}  // namespace dmu::cli
