// dmu attach [--name NAME] [--group GROUP] [--read-only] [-f FMT] IMAGE: prints
// /dev/mapper/NAME once the device is usable (daemon/attach.h does the work);
// also when it was attached and served as asked already (exit 0, a note on
// stderr), so scripts may attach twice.
#include "cli/cli_common.h"
#include "daemon/attach.h"

#include <algorithm>
#include <chrono>
#include <iostream>

namespace dmu::cli {

extern const Command kAttach;

int attach_main(const std::vector<std::string>& args) {
  po::options_description options("options");
  // clang-format off
  options.add_options()
      ("name", po::value<std::string>(), "dm device name, verbatim (default: the image's file "
                                         "name without extension)")
      ("read-only", po::bool_switch(), "a read-only device; the image is not written")
      ("group", po::value<std::string>(), "served by group GROUP's mapping process (started "
                                          "if none runs) rather than one of its own")
      ("format,f", po::value<std::string>(), "image format (probed if absent; a raw image "
                                              "is attached writable only when named)")
      ("timeout", po::value<uint32_t>(), "seconds the attach may take until the device is "
                                         "served (default 120); past it, it fails and removes "
                                         "what it set up (or says why it could not)")
      ("daemon-timeout", po::value<uint32_t>(), "seconds I/O waits for a mapping process "
                                                "(table option daemon_timeout; module default "
                                                "if absent)")
      ("image", po::value<std::string>()->required(), "the image");
  // clang-format on
  po::positional_options_description positional;
  positional.add("image", 1);
  int code = kExitOk;
  auto vm = parse_args(args, kAttach, options, positional, &code);
  if (!vm) return code;
  daemon::AttachOptions o;
  o.image = (*vm)["image"].as<std::string>();
  if (vm->count("name")) o.name = (*vm)["name"].as<std::string>();
  if (vm->count("group")) o.group = (*vm)["group"].as<std::string>();
  if (vm->count("format")) o.format = (*vm)["format"].as<std::string>();
  if (vm->count("daemon-timeout")) o.daemon_timeout = (*vm)["daemon-timeout"].as<uint32_t>();
  if (vm->count("timeout"))
    o.join_timeout = std::chrono::seconds(std::max<uint32_t>(1, (*vm)["timeout"].as<uint32_t>()));
  o.read_only = (*vm)["read-only"].as<bool>();
  auto attached = daemon::attach(o);
  if (!attached) return report(attached.error());
  if (attached->already)
    std::cerr << "dmu: " << attached->node << " is attached and served already\n";
  std::cout << attached->node << "\n";
  return kExitOk;
}

}  // namespace dmu::cli
