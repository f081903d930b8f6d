// detach; see detach.h.
#include "daemon/detach.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <thread>
#include <vector>

#include "common/unique_fd.h"
#include "daemon/attach.h"
#include "daemon/group.h"
#include "daemon/metadata_loops.h"
#include "daemon/name_lock.h"
#include "daemon/paths.h"
#include "daemon/serve_process.h"
#include "daemon/state_file.h"
#include "daemon/table_line.h"
#include "daemon/unrecorded_device.h"
#include "formats/chain.h"
#include "mapper/dm_device.h"
#include "mapper/loop_device.h"

namespace dmu::daemon {
namespace {

constexpr auto kExitWait = std::chrono::seconds(60);
// How long a group member released after a channel error may wait for its
// group's next rebind: serve.cc's longest backoff (8 s) and a margin.
constexpr auto kRebindWait = std::chrono::seconds(12);
// How long a detach waits for another detach of the same name: that one's
// longest waits (a rebind, its process exiting or its group letting NAME
// go, serving it again when it was opened meanwhile) and a margin.
constexpr auto kDetachQueueWait = kRebindWait + 3 * kExitWait + std::chrono::seconds(30);

// A flush through the dm device: the kernel flushes the data devices and has
// the mapping process commit the metadata of every completed write.
Result<void> flush_device(const std::string& node) {
  int fd = ::open(node.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail(errno_error(node + ": open to flush"));
  UniqueFd dev(fd);
  if (::fsync(dev.get()) != 0) return fail(errno_error(node + ": flush"));
  return {};
}

// The kernel's `unpublished` gauge: allocations no COMMITTED covers yet.
Result<uint64_t> unpublished(const std::string& name) {
  DMU_ASSIGN_OR_RETURN(std::string value, userspace_status_field(name, "unpublished"));
  if (value.empty()) return uint64_t(0);
  uint64_t n = 0;
  const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
  if (ec != std::errc() || end != value.data() + value.size())
    return fail(EPROTO, name + ": target status has unpublished=" + value + ", not a number");
  return n;
}

// The mapping process grows a qcow2 file in 64 MiB steps (one loop resize
// each, served_device.cc); QEMU leaves a file that ends with its last
// cluster.  Once the loop devices let go, the tail past the image's end --
// unreferenced, zeros we added -- is cut, unless the check finds anything
// wrong (then the file is left as it is for qemu-img check to see).
Result<void> trim_growth_tail(const DeviceState& st) {
  if (st.format != "qcow2" || st.read_only) return {};
  formats::ChainOptions co;
  co.format = st.format;
  co.access = formats::Access::ReadWrite;  // the writer lock: nobody else has the file now
  co.lock = true;
  co.open_backing = false;
  DMU_ASSIGN_OR_RETURN(auto chain, formats::Chain::open(posix_env(), st.image, co));
  DMU_ASSIGN_OR_RETURN(formats::CheckReport report, chain->top().check(formats::Repair::None));
  if (report.corruptions || report.check_errors || !report.image_end_offset) return {};
  // Only the image file itself: an external data file holds the guest's
  // data at guest offsets, and check() does not count those clusters.
  File* file = chain->devices().front();
  if (file->path() != st.image) return {};
  DMU_ASSIGN_OR_RETURN(uint64_t size, file->size());
  if (size <= *report.image_end_offset) return {};
  return file->truncate(*report.image_end_offset);
}

// A group member leaves its group's process (group.h): the marker takes it
// out of the members, a SIGHUP has the process re-read them, and it lets
// the member's lock go.  `signal` is the process to tell.
Result<void> leave_group(const DeviceState& st, pid_t signal) {
  DMU_TRY(write_file_atomic(leave_path(st.name), "detach\n"));
  if (signal > 0) ::kill(signal, SIGHUP);
  return {};
}

// A group member its process released after a channel error, whose device
// stays, is bound again by that process after a backoff.  True once it is
// (the record re-read into st), false when the wait or the group ends.
bool wait_rebound(DeviceState& st) {
  // One whose bind failed when the group (re)started is not waiting for a
  // rebind: a SIGHUP has the process bind members it neither serves nor
  // waits for.
  (void)signal_group(st.group);
  const auto deadline = std::chrono::steady_clock::now() + kRebindWait;
  while (std::chrono::steady_clock::now() < deadline && group_alive(st.group)) {
    if (bound(st.name, st.group)) {
      if (auto again = read_state(st.name); again && *again) {
        st = **again;
        return true;
      }
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

// NAME's lock once its group let it go: a rebind that took it just before
// the leave marker was written drops it again (set_up checks the marker
// under the lock), or on the SIGHUP once bound.
Result<NameLock> lock_left_member(const DeviceState& st) {
  const auto deadline = std::chrono::steady_clock::now() + kExitWait;
  for (;;) {
    auto lock = NameLock::try_acquire(st.name);
    if (lock || lock.error().code != EWOULDBLOCK) return lock;
    (void)signal_group(st.group);
    if (std::chrono::steady_clock::now() >= deadline ||
        !wait_lock_free(st.name, std::chrono::duration_cast<std::chrono::milliseconds>(
                                     deadline - std::chrono::steady_clock::now())))
      return fail(ETIMEDOUT, st.name + ": group " + st.group +
                                 "'s mapping process did not let it go within " +
                                 std::to_string(kExitWait.count()) + " s");
  }
}

// Detach gave up before letting NAME go: the marker goes, and the group
// (which dropped NAME from its rebinds on seeing it) re-reads its members.
void cancel_leave(const DeviceState& st) {
  (void)::unlink(leave_path(st.name).c_str());
  (void)signal_group(st.group);
}

// Detach gave up: the member is served again (by its group, started anew if
// it ended meanwhile).
Result<void> rejoin_group(const DeviceState& st, const std::string& program) {
  (void)::unlink(leave_path(st.name).c_str());
  DMU_TRY(mark_unbound(st.name));
  return join_group(program, st.group, st.name);
}

// The attach id in NAME's record now ("" if there is none).
std::string current_attach_id(const std::string& name) {
  if (!check_name(name)) return {};
  auto st = read_state(name);
  return st && *st ? (*st)->attach_id : std::string();
}

// Whether the attach this detach was asked to remove (`asked`) went and
// another set NAME up since.  A record without an id (rewritten by an older
// dmu, which drops the field) is taken for the asked one.
bool attached_again(const std::string& asked, const DeviceState* st, bool device_exists) {
  if (asked.empty()) return false;
  return st ? !st->attach_id.empty() && st->attach_id != asked : device_exists;
}

// Files a killed attach or mapping process left for NAME (no record, no
// device), removed under NAME's lock: its holder removes a lock file, the
// pattern NameLock expects; one unlinked by anyone else could be the file an
// attach has just locked, and the next attach would lock a new one beside
// it.  Left alone while the lock is held (try_acquire waits half a second
// for a probe to pass) or when NAME was set up meanwhile.  The log stays: a
// failed attach names it in its error, and block-dmu's remove of the failed
// disk comes right after.
void remove_stale_companions(const std::string& name) {
  auto lock = NameLock::try_acquire(name);
  if (!lock) return;
  auto st = read_state(name);
  auto info = mapper::dm_device_info(name);
  if (!st || *st || !info || info->exists) return;
  remove_state_files(name, /*keep_log=*/true);
}

std::string left_alone(const std::string& name) {
  return name + ": already detached by another dmu detach; attached again since, left alone";
}

// `asked`: the attach id NAME had when this detach started ("" if none).
Result<std::string> detach_once(const DetachOptions& o, const std::string& asked) {
  const std::string& name = o.name;
  DMU_TRY(check_name(name));
  // One detach of NAME at a time; the record is read after this, so a
  // second detach sees what the first one left (usually: nothing).
  DMU_ASSIGN_OR_RETURN(DetachLock serial, DetachLock::acquire(name, kDetachQueueWait));
  DMU_ASSIGN_OR_RETURN(auto st, read_state(name));
  DMU_ASSIGN_OR_RETURN(mapper::DmInfo info, mapper::dm_device_info(name));
  // What it was asked to remove went while it waited (another detach); a
  // device set up since belongs to a later attach, whose own detach comes.
  if (attached_again(asked, st ? &*st : nullptr, info.exists)) return left_alone(name);
  if (!st && !info.exists) {
    remove_stale_companions(name);
    return name + ": not attached; nothing to do";
  }
  if (!st && made_by_attach(name, info)) {
    // Left by an attach killed before it wrote the record (block-dmu's
    // remove or the helper's clean-up is the only detach it will get), or
    // being set up by one that holds NAME's lock.
    auto lock = NameLock::try_acquire(name);
    if (!lock)
      return fail(
          EBUSY, name + ": being set up by a dmu attach (" + lock.error().message + "); try again");
    DMU_ASSIGN_OR_RETURN(UnrecordedRemoval removal, remove_unrecorded_device(name));
    if (removal == UnrecordedRemoval::kRecorded)
      return fail(EBUSY, name + ": attached meanwhile; try again");
    remove_state_files(name);
    if (removal == UnrecordedRemoval::kAlreadyGone) return name + ": not attached; nothing to do";
    return name + ": " + kUnrecordedRemoved;
  }
  if (!st)
    return fail(ENOENT, "dm device " + name + " has no dmu record (" + state_path(name) +
                            "); not touching it (dmsetup remove " + name + " if it is yours)");
  if (info.exists && info.open_count > 0)
    return fail(EBUSY, name + ": device is in use (open count " + std::to_string(info.open_count) +
                           "); unmount or close it first");

  bool alive = lock_held(name);
  if (info.exists && !alive && !o.force) {
    DMU_ASSIGN_OR_RETURN(uint64_t pending, unpublished(name));
    // Its group may be about to bind it again; then it commits them.
    if (pending && !st->group.empty()) alive = wait_rebound(*st);
    if (pending && !alive)
      return fail(EBUSY, name + ": no mapping process, and the kernel holds " +
                             std::to_string(pending) +
                             " uncommitted allocations; run dmu attach --name " + name + " " +
                             st->image + " to rebind first (or detach --force to drop them)");
  }
  if (info.exists && alive) DMU_TRY(flush_device(st->node()));
  if (alive) {
    // The supervisor, when there is one: between a death and a restart
    // the recorded mapping process is gone, and a SIGTERM to it would be lost.
    const pid_t target = serves_device(st->supervisor, *st, true) ? st->supervisor
                         : serves_device(st->pid, *st, false)     ? st->pid
                                                                  : 0;
    if (!st->group.empty()) {
      DMU_TRY(leave_group(*st, target));
    } else if (target > 0) {
      ::kill(target, SIGTERM);
    }
    if (!wait_lock_free(name, kExitWait)) {
      if (!st->group.empty()) cancel_leave(*st);
      return fail(ETIMEDOUT, name + ": the mapping process (pid " + std::to_string(target) +
                                 ") did not " + (st->group.empty() ? "exit" : "let it go") +
                                 " within " + std::to_string(kExitWait.count()) + " s of " +
                                 (st->group.empty() ? "SIGTERM" : "SIGHUP"));
    }
  } else if (!st->group.empty()) {
    // Its group process (restarting, rebinding it, or started by a
    // concurrent attach) must not take it up again while it goes.
    DMU_TRY(write_file_atomic(leave_path(name), "detach\n"));
  }
  // Held from here to the end: nobody may start serving NAME while its
  // device and files go away (and the lock file is removed by its holder,
  // the pattern NameLock expects).
  auto locked = st->group.empty() ? NameLock::try_acquire(name) : lock_left_member(*st);
  if (!locked && !st->group.empty()) cancel_leave(*st);
  DMU_ASSIGN_OR_RETURN(NameLock lock, std::move(locked));
  if (info.exists) {
    // A test seam (vm attach-errors): time for the test to open the device
    // between the check and the removal, the race this path handles.
    if (const char* ms = std::getenv("DMU_TEST_DETACH_DELAY_MS");
        ms && std::getenv("DMU_TEST_SEAMS"))
      std::this_thread::sleep_for(std::chrono::milliseconds(std::atoi(ms)));
    DMU_ASSIGN_OR_RETURN(mapper::DmDevice dm, mapper::DmDevice::adopt(name));
    if (auto r = dm.remove(); !r) {
      // Opened after the open-count check (a mount, blkid from udev):
      // the device stays, so it must be served again, or its I/O would
      // wait for a mapping process nobody starts.
      dm.release();
      lock.release();
      if (!alive && !st->group.empty()) cancel_leave(*st);
      if (alive) {
        if (auto s = st->group.empty() ? start_mapping_process(o.program, name)
                                       : rejoin_group(*st, o.program);
            !s)
          return fail(r.error().code, r.error().message +
                                          "; and the mapping process could not be "
                                          "started again: " +
                                          s.error().message);
      }
      return fail(r.error().code,
                  name + ": device is in use (it was opened while detaching); it stays attached");
    }
  }
  // Autoclear usually detached them with the table; a loop still bound to
  // our file (the table never took it, or the kernel defers) goes now.
  for (const auto& d : st->devices) {
    DMU_TRY(mapper::detach_loop_of(d.loop, d.file));
    mapper::wait_loop_released(d.loop, d.file);
  }
  // Before the trim, which takes the writer lock these hold.
  DMU_TRY(release_metadata_loops(*st));
  auto trimmed = trim_growth_tail(*st);
  // Last: an attach waiting for NAME (its lock file, which goes here) must
  // find the image unlocked, not held by the trim.
  remove_state_files(name);
  if (!trimmed)
    return name + ": detached; the image's growth tail was not trimmed: " + trimmed.error().message;
  return std::string();
}

}  // namespace

Result<std::string> detach(const DetachOptions& o) {
  // Taken before any wait for another detach of NAME (detach_once).
  const std::string asked = current_attach_id(o.name);
  // A test seam (vm attach-errors): time for another detach and a new
  // attach of NAME to happen between that look and the queue.
  if (const char* ms = std::getenv("DMU_TEST_DETACH_QUEUE_DELAY_MS");
      ms && std::getenv("DMU_TEST_SEAMS"))
    std::this_thread::sleep_for(std::chrono::milliseconds(std::atoi(ms)));
  if (o.wait_release.count() == 0) return detach_once(o, asked);
  // Left behind by a timed-out attach: nobody else will remove the device,
  // so a moment's open (udev's blkid) is waited out, not given up on.
  const auto deadline = std::chrono::steady_clock::now() + o.wait_release;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    // Not the new device's process to wait for (nor to blame below).
    if (auto now = read_state(o.name); now && *now && attached_again(asked, &**now, false))
      return left_alone(o.name);
    if (!wait_lock_free(o.name, std::max(left, std::chrono::milliseconds(0))))
      return fail(ETIMEDOUT, o.name + ": its process did not let it go within " +
                                 std::to_string(o.wait_release.count()) + " s; run dmu detach " +
                                 o.name);
    auto r = detach_once(o, asked);
    if (r || r.error().code != EBUSY || std::chrono::steady_clock::now() >= deadline) return r;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

}  // namespace dmu::daemon
