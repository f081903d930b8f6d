// attach: image -> /dev/mapper/NAME.  Opens the chain once to learn its
// files, block size and size (with QEMU-compatible locks, so an image in use
// elsewhere is refused), sets up a loop device per data file (read-only for
// backing images) plus the scratch store, creates the dm device with its
// `userspace` table, writes the state record and starts the mapping process
// (`dmu serve --name NAME`, re-executed from /proc/self/exe, in a session of
// its own), then waits until it reports that it is bound.
//
// On an existing device whose mapping process is gone (killed, upgraded),
// attach only starts a new mapping process, which rebinds; on one that is
// served as asked, it does nothing.
//
// Every loop and dm device is owned by an RAII object until the mapping
// process is ready, so any failure on the way leaves nothing behind.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/error.h"
#include "daemon/group.h"

namespace dmu::daemon {

struct AttachOptions {
  std::string image;
  std::optional<std::string> name;    // default: the image's file name without extension
  std::optional<std::string> format;  // probed when absent
  bool read_only = false;
  // Served by group G's mapping process (daemon/group.h) rather than a
  // process of its own.
  std::optional<std::string> group;
  std::optional<uint32_t> daemon_timeout;
  std::string program = "/proc/self/exe";  // the dmu binary that runs `serve`
  // How long the attach may take, counted from its start, until the
  // device's process (its own, or its group's) has bound it: dmu-xen-helper
  // and block-dmu answer inside libxl's 40 s.  A new device's bind gets all
  // but a quarter of it (at most 10 s), kept for clean-up: past it the
  // attach fails and leaves nothing (or, if the process bound the device
  // after all and does not let it go in the time kept, says so and leaves
  // it for dmu detach).
  std::chrono::seconds join_timeout = kJoinTimeout;
};

struct Attached {
  std::string node;         // /dev/mapper/NAME
  bool already = false;     // it was attached and served as asked: nothing done
};

// The dm name attach uses for an image when --name is absent.
std::string default_name(const std::string& image);

// Returns the device node (/dev/mapper/NAME) once it is usable.  Attaching
// again what is attached and served already (same image, mode, format if
// given, group if given) succeeds with `already` set, so a script may run
// its attach twice; anything else attached under NAME is EEXIST.
Result<Attached> attach(const AttachOptions& options);

// How long start_serve_process waits for `ready` by default.
inline constexpr std::chrono::milliseconds kReadyTimeout{120'000};

// Starts `program serve --name NAME` in the background (stderr to
// /run/dmu/NAME.log) and waits until it reports ready or fails; ETIMEDOUT
// after `timeout`, the process sent SIGTERM (a group's, started through
// start_serve_process, is left to serve its other members).
Result<void> start_mapping_process(const std::string& program, const std::string& name,
                                   std::chrono::milliseconds timeout = kReadyTimeout);

// The same for any `serve` selector ({"--name", N} or {"--group", G}), its
// stderr going to log_path(log_name).
Result<void> start_serve_process(const std::string& program,
                                 const std::vector<std::string>& selector,
                                 const std::string& log_name,
                                 std::chrono::milliseconds timeout = kReadyTimeout);

}  // namespace dmu::daemon
