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

// What each kind does, and what the kernel must do about it (Fate in
// responder.h): the kinds whose bad message names the request fail that
// request's I/O by themselves; the others leave it pending until the
// target's daemon_timeout (or answer it validly before the bad message).
enum class HostileKind {
  BadDevice,         // device index == nr_devs
  PastEnd,           // sector far past the end of the device
  ZeroLength,        // extent of zero blocks
  Overlong,          // extent running one block past the target's end
  UnknownId,         // answer for an id the kernel never issued
  DuplicateFinal,    // a valid answer, then a second FINAL for the same id
  Truncated,         // a write() whose length is not a multiple of 64
  Garbage,           // random bytes (with the request's id)
  Reserved,          // otherwise valid extent with a non-zero reserved field
  CopyOutsideNew,    // COPY after a plain (not NEW) extent
  ExtentBlockWrap,   // EXTENT whose block + nr_blocks wraps around 2^64
  ExtentSectorWrap,  // EXTENT whose sector + length wraps around 2^64 on its device
  CopyWrap,          // NEW extent, then a COPY whose source sector + nr_sectors wraps
                     // (answers 2, 3 of every 4: whose virtual sector + nr_sectors wraps)
  InvalidateWrap,    // INVALIDATE whose block + nr_blocks wraps (id 0: names no request)
  WritableReadOnly,  // WRITABLE (NEW too, for writes) extent on a device past writable_devs
  AnswerTooLong,     // 257 messages for one request; the kernel takes 256
  PushOpenLimit,     // 16 push batches left open (no FINAL), then a 17th
  PushTooLong,       // 257 messages in one push
  PushFillLimit,     // 64 pushes with a NEW extent each, then a 65th while they fill
  NewOverBusy,       // two requests: the first gets a NEW extent, the second, while that
                     // one is being filled, a NEW extent overlapping it
  PushNewOverBusy,   // a NEW extent for the request, then a push with a NEW extent over it
  OpenMsgsLimit,     // 64 requests left with 255 messages each and no FINAL (room for 256:
                     // the kernel's room for open answers), a message for a 65th, then
                     // the 64 FINALs
  PushAcrossReload,  // the request answered, a push opened with a NEW extent on the last
                     // block; FINAL only once --gate FILE exists (the case reloads the table
                     // read-only or shorter meanwhile): the kernel must check the whole
                     // push again at FINAL and refuse it
  PushFlood,         // no bad message: valid pushes of 256 extents, as fast as it can,
                     // for flood_ms (a daemon trying to exhaust the kernel's memory)
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
  std::string control_path = mapper::kControlDevicePath;
  Mode mode = Mode::Identity;
  uint64_t features = DMU_FEATURE_ALL;
  bool writable_reads = false;  // identity/zero: read answers are writable too
  uint64_t extent_blocks = 1;   // answer with at least this many blocks (read-ahead)
  bool push_all = false;        // identity: push the whole target at start
  uint64_t push_extent_blocks = 1024;
  uint32_t commit_delay_ms = 0;  // delay before COMMITTED
  int commit_errno = 0;          // identity/zero/copy: answer every COMMIT with -errno
  std::string commit_errno_while = {};  // ... only while this file exists
  BlockRange blocks = {};        // error/hostile: the blocks the mode applies to
  int error_errno = EIO;         // error mode
  bool error_writes_only = false;  // error mode: only write MAPs fail; reads are served
  HostileKind hostile = HostileKind::BadDevice;
  bool copy_half = false;            // copy: COPY only the first half of each block
  size_t batch = 64;                 // requests read per read()
  uint64_t hang_after_requests = 0;  // stop answering once this many MAPs were read (restart tests)
  uint64_t kill_after_requests = 0;  // die (SIGKILL) right after handling the N-th request
  uint32_t flood_ms = 10000;         // hostile push-flood: how long to push
  std::string gate_file = {};        // hostile push-across-reload: FINAL once this file exists;
                                     // error/identity: MAPs touching `blocks` wait for it
  bool die_open = false;             // hostile open-msgs-limit: SIGKILL instead of the FINALs
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
    HostileKind::BadDevice,      HostileKind::PastEnd,         HostileKind::ZeroLength,
    HostileKind::Overlong,       HostileKind::UnknownId,       HostileKind::DuplicateFinal,
    HostileKind::Truncated,      HostileKind::Garbage,         HostileKind::Reserved,
    HostileKind::CopyOutsideNew, HostileKind::ExtentBlockWrap, HostileKind::ExtentSectorWrap,
    HostileKind::CopyWrap,       HostileKind::InvalidateWrap,  HostileKind::WritableReadOnly,
    HostileKind::AnswerTooLong,  HostileKind::PushOpenLimit,   HostileKind::PushTooLong,
    HostileKind::PushFillLimit,  HostileKind::NewOverBusy,     HostileKind::PushNewOverBusy,
    HostileKind::OpenMsgsLimit,  HostileKind::PushAcrossReload, HostileKind::PushFlood};

}  // namespace dmu::testd
