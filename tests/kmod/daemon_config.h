// Configuration of dmu-test-daemon, the kernel target's test daemon: which
// mode answers the MAP requests and the knobs of each mode.  Parsing of the
// command line lives in main.cc; names <-> enums live here so the unit tests
// and the program agree on them.
#pragma once

#include <cerrno>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "mapper/control_channel.h"

namespace dmu::testd {

enum class Mode {
  Identity,  // block b -> dev 0, same sector
  Zero,      // unwritten blocks read as ZERO extents; writes get NEW extents
  Copy,      // writes get NEW extents on dev 1 with COPY sources on dev 0
  Error,     // requests touching `blocks` fail with `error_errno`
  Hostile,   // requests touching `blocks` get one kind of bad answer
  Model,     // a small allocating image format on device 0 (tests/kmod/model.h)
};

enum class HostileKind {
  BadDevice,       // device index == nr_devs
  PastEnd,         // sector far past the end of the device
  ZeroLength,      // extent of zero blocks
  Overlong,        // extent running one block past the target's end
  UnknownId,       // answer for an id the kernel never issued
  DuplicateFinal,  // a valid answer, then a second FINAL for the same id
  Truncated,       // a write() whose length is not a multiple of 64
  Garbage,         // random bytes (with the request's id)
  Reserved,        // otherwise valid extent with a non-zero reserved field
  CopyOutsideNew,  // COPY after a plain (not NEW) extent
};

// Half-open range of virtual blocks.
struct BlockRange {
  uint64_t start = 0;
  uint64_t count = 0;
  uint64_t end() const { return start + count; }
  bool overlaps(uint64_t block, uint64_t nr) const {
    return count && block < end() && start < block + nr;
  }
};

struct DaemonConfig {
  std::string key = {};
  std::string control_path = kControlDevicePath;
  Mode mode = Mode::Identity;
  uint64_t features = DMU_FEATURE_ALL;
  bool writable_reads = false;  // identity/zero: read answers are writable too
  uint64_t extent_blocks = 1;   // answer with at least this many blocks (read-ahead)
  bool push_all = false;        // identity: push the whole target at start
  uint64_t push_extent_blocks = 1024;
  uint32_t commit_delay_ms = 0;  // delay before COMMITTED
  BlockRange blocks = {};        // error/hostile: the blocks the mode applies to
  int error_errno = EIO;         // error mode
  HostileKind hostile = HostileKind::BadDevice;
  bool copy_half = false;            // copy: COPY only the first half of each block
  size_t batch = 64;                 // requests read per read()
  uint64_t hang_after_requests = 0;  // stop answering once this many MAPs were read (restart tests)
  uint64_t kill_after_requests = 0;  // die (SIGKILL) right after handling the N-th request
  std::string model_device = {};     // model: device 0 (the table's first data device)
  bool verbose = false;              // log every request and response
};

std::string_view mode_name(Mode m);
std::optional<Mode> parse_mode(std::string_view name);
std::string_view hostile_name(HostileKind k);
std::optional<HostileKind> parse_hostile(std::string_view name);
// "START:COUNT" -> BlockRange.
std::optional<BlockRange> parse_block_range(std::string_view text);
// Every hostile kind, in declaration order (for --help and the tests).
inline constexpr HostileKind kAllHostileKinds[] = {
    HostileKind::BadDevice,     HostileKind::PastEnd,   HostileKind::ZeroLength,
    HostileKind::Overlong,      HostileKind::UnknownId, HostileKind::DuplicateFinal,
    HostileKind::Truncated,     HostileKind::Garbage,   HostileKind::Reserved,
    HostileKind::CopyOutsideNew};

}  // namespace dmu::testd
