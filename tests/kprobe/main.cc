// dmu-kmod-probe: checks of the kernel target's control device that need
// bare syscalls (see scenarios.h).  Run by the VM cases; not installed.
//   dmu-kmod-probe serve --key K [--relocate B --relocate-to T]
//   dmu-kmod-probe stall-copy --key K --op read|write
//   dmu-kmod-probe version
//   dmu-kmod-probe done-replay --key K --phase 1|2|3 --block B [--id ID]
//   dmu-kmod-probe list-extents --key K --count N
//   dmu-kmod-probe fsync --device PATH
#include <boost/program_options.hpp>
#include <cstdio>
#include <iostream>
#include <string>

#include "tests/kprobe/scenarios.h"

namespace po = boost::program_options;

int main(int argc, char** argv) {
  std::string command, key, key2, device, op;
  int phase = 0;
  uint64_t block = 0, id = 0, count = 0, relocate = 0, relocate_to = 0;
  po::options_description opts(
      "dmu-kmod-probe COMMAND [options]\n"
      "Commands: serve, stall-copy, version, done-replay, list-extents, bind-race, fsync");
  // clang-format off
  opts.add_options()
      ("help,h", "this help")
      ("key", po::value(&key), "the target's key")
      ("phase", po::value(&phase), "done-replay: 1 (first daemon), 2 (next), 3 (after the commit)")
      ("block", po::value(&block), "done-replay: the block written")
      ("id", po::value(&id), "done-replay phase 2: the request id phase 1 printed")
      ("key2", po::value(&key2), "bind-race: the other target's key")
      ("count", po::value(&count), "list-extents: extents to push; bind-race: rounds")
      ("device", po::value(&device), "fsync: the block device")
      ("relocate", po::value(&relocate), "serve: on SIGUSR1 push block B as a NEW extent...")
      ("relocate-to", po::value(&relocate_to), "serve: ...at block T's sectors, copied from its own")
      ("op", po::value(&op), "stall-copy: read or write");
  // clang-format on
  po::options_description hidden;
  hidden.add_options()("command", po::value(&command));
  po::positional_options_description pos;
  pos.add("command", 1);
  po::options_description all;
  all.add(opts).add(hidden);
  try {
    po::variables_map vm;
    po::store(po::command_line_parser(argc, argv).options(all).positional(pos).run(), vm);
    po::notify(vm);
    if (vm.count("help") || command.empty()) {
      std::cout << opts << "\n";
      return vm.count("help") ? 0 : 2;
    }
  } catch (const po::error& e) {
    std::fprintf(stderr, "dmu-kmod-probe: %s\n", e.what());
    return 2;
  }
  using namespace dmu::kprobe;
  if (command == "serve" && !key.empty()) return serve({key, relocate, relocate_to});
  if (command == "stall-copy" && !key.empty() && (op == "read" || op == "write"))
    return stall_copy(key, op == "write");
  if (command == "version") return version_mismatch();
  if (command == "done-replay" && !key.empty() && phase >= 1 && phase <= 3)
    return done_replay(key, phase, block, id);
  if (command == "list-extents" && !key.empty() && count) return list_extents(key, count);
  if (command == "bind-race" && !key.empty() && !key2.empty() && count)
    return bind_race(key, key2, count);
  if (command == "fsync" && !device.empty()) return fsync_device(device);
  std::fprintf(stderr, "dmu-kmod-probe: unknown command or missing option: %s (see --help)\n",
               command.c_str());
  return 2;
}
