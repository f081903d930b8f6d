// dmu: the command line of dm-userspace.  One table of subcommands, each in
// its own file; this file only dispatches.  Exceptions stop here: anything
// that escapes a subcommand becomes one line on stderr and exit status 1.
//
// attach, detach, list, stats and serve (the mapping process attach starts)
// drive the kernel target through daemon/.
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
int attach_main(const std::vector<std::string>& args);
int detach_main(const std::vector<std::string>& args);
int list_main(const std::vector<std::string>& args);
int stats_main(const std::vector<std::string>& args);
int serve_main(const std::vector<std::string>& args);

// The synopses are the contract other tools rely on; keep them exact.
extern const Command kCreate, kInfo, kMap, kCheck, kExport, kIo, kAttach, kDetach, kList, kStats,
    kServe;
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
const Command kAttach = {"attach", "attach [--name NAME] [--group GROUP] [--read-only] [-f FMT] IMAGE",
                         "Make IMAGE a block device: loop devices, a dm-userspace device and its "
                         "mapping process in the background; prints /dev/mapper/NAME when usable. "
                         "On an existing device whose mapping process is gone, rebinds it.",
                         attach_main};
const Command kDetach = {"detach", "detach [--force] NAME",
                         "Commit, stop the mapping process, remove the dm device and its loop "
                         "devices.  Refuses while the device is open; a name not attached is "
                         "not an error.",
                         detach_main};
const Command kList = {"list", "list [--output=human|json]",
                       "Show the attached devices and whether a mapping process serves each.",
                       list_main};
const Command kStats = {"stats", "stats [--output=human|json] NAME",
                        "Show the kernel's counters of a device and its mapping process's own.",
                        stats_main};
const Command kServe = {"serve", "serve --name NAME [--name NAME ...] | --group GROUP [--ready-fd FD]",
                        "Be the mapping process of attached devices (attach starts it; start it "
                        "by hand to rebind devices whose process died).  SIGTERM commits and "
                        "exits, leaving the devices for the next process.",
                        serve_main};

namespace {
const Command* const kCommands[] = {&kCreate, &kInfo,   &kMap,  &kCheck, &kExport, &kIo,
                                    &kAttach, &kDetach, &kList, &kStats, &kServe};

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
