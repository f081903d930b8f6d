// The pure part of dmu-xen-helper: what a vbd backend's keys mean to us and
// where ours go.  No xenstore or Xen calls here, so the unit tests cover it
// on any host (tests/unit/xen_helper_backend_test.cc).
//
// Key layout beside a backend B = /local/domain/0/backend/vbd/<domid>/<devid>:
//   B/params                  written by libxl: the target ("qcow2:/vm/a.qcow2")
//   B/mode                    written by libxl: "r" or "w"
//   B/dmu/request             block-dmu: "add" = "helper, attach this for me";
//                             the helper claims it ("claimed <pid>") before it
//                             works, and writes its answer only while its claim
//                             stands (block-dmu removes the key when it gives up)
//   B/dmu/deadline            block-dmu, with the request (one transaction): the
//                             Unix time (s) it stops waiting; absent from an
//                             older block-dmu.  A key of its own, so a helper
//                             that predates it still reads "add".
//   B/physical-device         ours: hex major:minor of /dev/mapper/xen-vbd-<domid>-<devid>
//   B/physical-device-path    ours: that node
//   B/hotplug-status          ours: connected | error (with B/hotplug-error)
//   B/dmu/{image,format,chain,device,dm-name,group,pid,supervisor,read-only}
//   B/dmu/stats/<counter>     the kernel's counters, refreshed every few seconds
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "common/error.h"

namespace dmu::xenhelper {

inline constexpr const char* kVbdRoot = "/local/domain/0/backend/vbd";
// The key whose live pid tells block-dmu a helper takes requests.
inline constexpr const char* kHelperPidKey = "/local/domain/0/dmu-xen-helper/pid";

struct Target {
  std::string format;  // "qcow", "qcow2", "vmdk", "raw", or "" (dmu: probe)
  std::string path;
};

// "qcow2:/vm/a.qcow2" -> {qcow2, /vm/a.qcow2}; "dmu:/p" -> {"", /p}.  Only
// the prefixes we serve, and absolute paths; anything else is an error
// naming the target (the same words as block-dmu).
Result<Target> parse_target(const std::string& params);

struct BackendId {
  uint32_t domid = 0;
  uint32_t devid = 0;
  bool operator==(const BackendId&) const = default;
};

// "/local/domain/0/backend/vbd/7/51712[/anything]" or the relative
// "backend/vbd/7/51712" -> {7, 51712}; nullopt for anything else.
std::optional<BackendId> parse_backend_path(const std::string& path);

std::string backend_path(BackendId id);
// xen-vbd-<domid>-<devid>: the dm name block-dmu uses too.
std::string dm_name(BackendId id);
// xen-dom<domid>: one mapping process per domain.
std::string group_name(uint32_t domid);
// The inverse of dm_name, for records found under /run/dmu.
std::optional<BackendId> parse_dm_name(const std::string& name);

// The claim a helper with pid `self` writes into B/dmu/request.
std::string request_claim(pid_t self);
// Whether helper `self` may claim a request that reads `value`: a fresh
// "add", or the claim of a helper that is gone (`helper_alive` says whether
// a pid is a live dmu-xen-helper): a helper killed mid-add left it, and
// block-dmu still waits.  Never another live helper's claim, nor our own.
bool request_claimable(const std::string& value, pid_t self,
                       const std::function<bool(pid_t)>& helper_alive);

// B/dmu/deadline's value, or nullopt for anything but a positive decimal.
std::optional<int64_t> parse_deadline(const std::string& value);

// How long the helper may spend attaching a request whose block-dmu stops
// waiting at Unix time `deadline_s` (from parse_deadline), at Unix time
// `now_ms` (milliseconds): its own `attach_timeout`, cut so that the answer
// lands while block-dmu still waits (kAnswerMargin before the deadline): a
// request that queued behind other slow disks of one `xl create` gets only
// what is left.  Zero when less than kShortestAttach would be left: too late
// to start.
inline constexpr std::chrono::milliseconds kAnswerMargin{2000};
// (3 s: an attach can end a second or two past its join_timeout -- the
// bind and the clean-up each get at least a second -- and the margin must
// still hold.)
inline constexpr std::chrono::milliseconds kShortestAttach{3000};
std::chrono::milliseconds attach_budget(std::optional<int64_t> deadline_s, int64_t now_ms,
                                        std::chrono::seconds attach_timeout);

// How long to wait before the next `dmu detach` of a gone domain's device
// after `failures` (>= 1) of them failed: 5 s, doubling, at most 5 min.  A
// device that stays in use (a dom0 process holds it open) is then neither
// re-forked nor logged at every tick for as long as it stays.
std::chrono::seconds gone_detach_retry_delay(unsigned failures);

// block-dmu's own state directory for a backend (it reads it on remove):
// /run/dmu/hotplug/ + the relative backend path with '/' -> '_'.
std::string hotplug_state_dir(const std::string& state_root, BackendId id);

}  // namespace dmu::xenhelper
