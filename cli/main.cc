// dmu: the command line of dm-userspace.  One table of subcommands, each in
// its own file; this file only dispatches.  Exceptions stop here: anything
// that escapes a subcommand becomes one line on stderr and exit status 1.
//
// Later issues add attach, detach, list and stats (they need the kernel
// target and the mapping daemon); they get a row in kCommands when they work.
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "cli/cli_common.h"

namespace dmu::cli {
int create_main(const std::vector<std::string>& args);
int info_main(const std::vector<std::string>& args);
int map_main(const std::vector<std::string>& args);
int check_main(const std::vector<std::string>& args);
int export_main(const std::vector<std::string>& args);
int io_main(const std::vector<std::string>& args);

// The synopses are the contract other tools rely on; keep them exact.
extern const Command kCreate, kInfo, kMap, kCheck, kExport, kIo;
const Command kCreate = {
    "create", "create -f FMT [-o opt=val,...] [-b BACKING [-F BACKING_FMT]] IMAGE [SIZE]",
    "Create an image (raw, qcow, qcow2, vmdk), optionally on a backing file.", create_main};
const Command kInfo = {"info", "info [--output=human|json] [--backing-chain] IMAGE",
                       "Show what an image is; json as qemu-img info prints it.", info_main};
const Command kMap = {"map", "map [--output=human|json] IMAGE",
                      "Show where the guest data of an image lives; json as qemu-img map.",
                      map_main};
const Command kCheck = {"check", "check [--output=human|json] [-r leaks|all] IMAGE",
                        "Check (and repair) an image's metadata.  Exit 0 clean, 1 check "
                        "incomplete, 2 corrupt, 3 leaked clusters, 63 format has no check.",
                        check_main};
const Command kExport = {"export", "export [-f FMT] IMAGE OUTPUT",
                         "Write the guest-visible bytes of an image as a sparse raw file.",
                         export_main};
const Command kIo = {"io", "io [-f FMT] IMAGE -c CMD [-c CMD ...]",
                     "Run qemu-io style commands on an image through the mapping service: "
                     "read [-P pattern] OFF LEN, write [-P pattern | -z] OFF LEN, "
                     "discard OFF LEN, flush.",
                     io_main};

namespace {
const Command* const kCommands[] = {&kCreate, &kInfo, &kMap, &kCheck, &kExport, &kIo};

void usage(FILE* out) {
  std::fprintf(out, "usage: dmu COMMAND [ARGS...]   (dmu COMMAND --help for details)\n\n");
  for (const Command* c : kCommands) std::fprintf(out, "  dmu %s\n", c->synopsis);
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    usage(stderr);
    return kExitFailure;
  }
  const std::string name = argv[1];
  if (name == "--help" || name == "-h" || name == "help") {
    usage(stdout);
    return kExitOk;
  }
  for (const Command* c : kCommands) {
    if (name != c->name) continue;
    std::vector<std::string> args(argv + 2, argv + argc);
    try {
      return c->run(args);
    } catch (const std::exception& e) {
      print_error(std::string(c->name) + ": " + e.what());
      return kExitFailure;
    }
  }
  print_error("unknown command '" + name + "' (see dmu --help)");
  return kExitFailure;
}

}  // namespace dmu::cli

int main(int argc, char** argv) {
  return dmu::cli::main(argc, argv);
}
