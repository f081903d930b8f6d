// attach; see attach.h.
#include "daemon/attach.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "daemon/group.h"
#include "daemon/log.h"
#include "daemon/metadata_loops.h"
#include "daemon/name_lock.h"
#include "daemon/paths.h"
#include "daemon/serve_process.h"
#include "daemon/spawn.h"
#include "daemon/state_file.h"
#include "daemon/table_line.h"
#include "daemon/unrecorded_device.h"
#include "formats/chain.h"
#include "mapper/control_channel.h"
#include "mapper/dm_device.h"
#include "mapper/loop_device.h"
#include "mapper/map_service.h"

namespace dmu::daemon {
namespace {

using namespace std::chrono_literals;
// How long attach waits for a device another attach is setting up.
constexpr std::chrono::seconds kSettleTime{10};

Result<std::string> absolute(const std::string& path) {
  char buf[PATH_MAX];
  if (!::realpath(path.c_str(), buf)) return fail(errno_error(path));
  return std::string(buf);
}

// What the chain looks like, learnt with the image open (and locked).  The
// chain stays open until the loop devices hold the locks themselves.
struct Plan {
  std::unique_ptr<formats::Chain> chain_open;
  std::string format;
  std::vector<std::string> chain;
  std::vector<std::string> files;                    // data files, table order
  std::vector<std::optional<std::string>> named_by;  // by data file
  std::vector<MetadataFile> metadata;                // files with no data of the chain
  uint32_t writable = 0;
  uint64_t block = 0;
  uint64_t target_sectors = 0;
};

// Files an image names (backing images, external data files, extents) are
// loop-attached, writable for the top image: a hostile image naming
// /dev/sda or /etc/shadow would hand the guest a host device or file.  Only
// regular files may be reached that way (LoopOptions::named_by); the image
// the user names is theirs to choose.  Returns, for data file `device`, the
// image that names it, or none for the user's image itself.
std::optional<std::string> named_by(const formats::Chain& chain, unsigned device,
                                    const std::string& image) {
  const std::string& path = chain.devices()[device]->path();
  if (path == image) return std::nullopt;
  const unsigned depth = chain.device_depth(device);
  const auto images = chain.images();
  // An image's own file (raw, qcow2 without a data file) is named by the
  // image above it; a data file or extent by its image.
  if (path == images[depth]->info().filename && depth > 0)
    return images[depth - 1]->info().filename;
  return images[depth]->info().filename;
}

Result<Plan> plan(const std::string& image, const AttachOptions& o) {
  formats::ChainOptions co;
  co.format = o.format;
  co.access = o.read_only ? formats::Access::ReadOnly : formats::Access::ReadWrite;
  co.lock = true;
  DMU_ASSIGN_OR_RETURN(auto chain, formats::Chain::open(posix_env(), image, co));
  Plan p;
  p.format = chain->top().info().format;
  // QEMU's probing rule.  Raw is what a probe finds when no header is
  // there, so a guest on a probed raw image could write a qcow2 header into
  // its first sector, and the next probe (of this or any tool) would take
  // the file for qcow2 and follow its backing path into host files.  QEMU
  // refuses such writes to sector 0; here the kernel moves guest data
  // without the mapping process seeing it, so a writable raw device must be
  // asked for by name (the record keeps the format: a restart never probes).
  if (!o.format && !o.read_only && p.format == "raw")
    return fail(EINVAL, image +
                            ": probed as raw, which a writable attach must not rely on (the "
                            "guest could write a header that a later probe takes for another "
                            "format): name the format (-f raw, or a raw: target) or attach "
                            "--read-only");
  for (const auto& im : chain->images()) p.chain.push_back(im->info().filename);
  for (unsigned i = 0; i < chain->devices().size(); ++i) {
    p.files.push_back(chain->devices()[i]->path());
    p.named_by.push_back(named_by(*chain, i, image));
  }
  DMU_ASSIGN_OR_RETURN(p.metadata, metadata_files(*chain, image, !o.read_only));
  p.writable = o.read_only ? 0 : uint32_t(chain->top().data_files().size());
  p.block = mapper::choose_block_size(*chain);
  // A partial last sector cannot be expressed in a dm table; it is left out
  // rather than exposing bytes past the image's end.
  p.target_sectors = chain->virtual_size() / 512;
  if (p.target_sectors == 0)
    return fail(EINVAL, image + ": virtual size " + std::to_string(chain->virtual_size()) +
                            " bytes is less than one sector");
  p.chain_open = std::move(chain);
  return p;
}

Result<void> create_scratch_file(const std::string& path, uint64_t size) {
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return fail(errno_error(path + ": create scratch store"));
  UniqueFd file(fd);
  if (::ftruncate(file.get(), off_t(size)) != 0)
    return fail(errno_error(path + ": size scratch store"));
  return {};
}

// Removes the record and companions unless dismissed (attach succeeded);
// the log stays, since the error message names it.  Runs after the dm
// device's owner: a device it could not remove (opened meanwhile) keeps its
// record, so dmu detach can remove it later.
struct StateGuard {
  std::string name;
  bool armed = true;
  ~StateGuard() {
    if (!armed) return;
    if (auto info = mapper::dm_device_info(name); info && info->exists) return;
    remove_state_files(name, /*keep_log=*/true);
  }
};

// EEXIST unless NAME's record is the attachment asked for: the same image
// and mode, and the format and group when they are given.
Result<void> same_attachment(const DeviceState& st, const std::string& image,
                             const AttachOptions& o) {
  if (st.image != image)
    return fail(EEXIST, st.name + ": attached to " + st.image + ", not " + image);
  if (st.read_only != o.read_only)
    return fail(EEXIST, st.name + ": attached " + (st.read_only ? "read-only" : "read-write") +
                            "; detach it first to change that");
  if (o.format && *o.format != st.format)
    return fail(EEXIST, st.name + ": attached as " + st.format + ", not " + *o.format);
  if (o.group && *o.group != st.group)
    return fail(EEXIST, st.name + ": attached " +
                            (st.group.empty() ? "on its own" : "in group " + st.group) +
                            ", not in group " + *o.group + "; detach it first");
  return {};
}

// What is left of an attach's join_timeout (at least a second).
std::chrono::milliseconds time_left(std::chrono::steady_clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      deadline - std::chrono::steady_clock::now());
  return std::max(left, std::chrono::milliseconds(1000));
}

// What a new device's attach keeps of its time for clean-up after a failed
// bind (taking NAME's lock back): a quarter, at most 10 s.
std::chrono::milliseconds cleanup_reserve(std::chrono::seconds timeout) {
  return std::min<std::chrono::milliseconds>(kSettleTime, std::chrono::milliseconds(timeout) / 4);
}

// Takes NAME's lock, waiting up to `timeout` for its holder to let go.
Result<NameLock> acquire_within(const std::string& name, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    auto l = NameLock::try_acquire(name);  // itself retries for 500 ms
    if (l || l.error().code != EWOULDBLOCK || std::chrono::steady_clock::now() >= deadline)
      return l;
  }
}

Result<std::string> rebind(const DeviceState& st, const std::string& image, const AttachOptions& o,
                           std::chrono::steady_clock::time_point deadline) {
  DMU_TRY(same_attachment(st, image, o));
  if (!st.group.empty()) {
    // Bound is told by the pid the group process writes (group.cc); a group
    // process its supervisor restarted since we looked may have written it
    // already, which mark_unbound leaves alone.
    DMU_TRY(mark_unbound(st.name));
    const auto until = std::max(deadline, std::chrono::steady_clock::now() + 1s);
    DMU_ASSIGN_OR_RETURN(NameLock setup, lock_group_setup(st.group, until));
    DMU_TRY(join_group_locked(o.program, st.group, st.name, until, setup));
    return st.node();
  }
  DMU_TRY(start_mapping_process(o.program, st.name, time_left(deadline)));
  return st.node();
}

}  // namespace

std::string default_name(const std::string& image) {
  std::string base = image.substr(image.rfind('/') == std::string::npos ? 0 : image.rfind('/') + 1);
  if (auto dot = base.rfind('.'); dot != std::string::npos && dot > 0) base.resize(dot);
  return base.empty() ? "dmu" : base;
}

Result<void> start_mapping_process(const std::string& program, const std::string& name,
                                   std::chrono::milliseconds timeout) {
  return start_serve_process(program, {"--name", name}, name, timeout);
}

Result<void> start_serve_process(const std::string& program,
                                 const std::vector<std::string>& selector,
                                 const std::string& log_name, std::chrono::milliseconds timeout) {
  if (selector.size() != 2) return fail(EINVAL, "serve process: selector is not OPTION NAME");
  DMU_TRY(ensure_run_dir());
  const std::string& name = selector[1];
  const std::string log = log_path(log_name);
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) return fail(errno_error("pipe"));
  UniqueFd ready_read(pipe_fds[0]), ready_write(pipe_fds[1]);
  DMU_ASSIGN_OR_RETURN(
      const pid_t pid,
      spawn_dmu(program, {"serve", selector[0], name, "--ready-fd", "3", "--supervise"}, log,
                ready_write.get()));
  ready_write.reset();

  std::string text;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      // A device's own process goes (the attach tears the device down once
      // it has let go).  A group's stays: it serves the group's other
      // members, or will once bound; the one joining is told to leave.
      if (selector[0] == "--name") ::kill(pid, SIGTERM);
      return fail(ETIMEDOUT, name + ": the mapping process (pid " + std::to_string(pid) +
                                 ") did not bind within " +
                                 std::to_string(std::max<long long>(1, timeout.count() / 1000)) +
                                 " s; see " + log);
    }
    pollfd p{ready_read.get(), POLLIN, 0};
    int n = ::poll(&p, 1, int(left.count()));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail(errno_error("wait for the mapping process"));
    if (n == 0) continue;
    char buf[512];
    ssize_t r = ::read(ready_read.get(), buf, sizeof buf);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;  // EOF: the process exited or closed the pipe
    text.append(buf, size_t(r));
    if (text.rfind("ready\n", 0) == 0) return {};
  }
  int status = 0;
  (void)::waitpid(pid, &status, 0);
  std::string why = text;
  if (why.rfind("error: ", 0) == 0) why = why.substr(7);
  while (!why.empty() && why.back() == '\n') why.pop_back();
  if (why.empty()) why = "the mapping process exited before it was bound; see " + log;
  return fail(EIO, why);
}

namespace {

// The device is set up anew under `lock` (NAME's, held while the device is
// set up, so two attaches of one name cannot race; released right before
// the mapping process takes it over).
Result<Attached> attach_new(const AttachOptions& o, const std::string& image,
                            const std::string& name, NameLock lock,
                            std::chrono::steady_clock::time_point deadline) {
  // Declared after the lock: a failure removes the files (the lock file
  // too) while still holding it (NameLock copes with that).
  StateGuard guard{name};
  DMU_ASSIGN_OR_RETURN(Plan p, plan(image, o));

  DeviceState st;
  st.name = name;
  st.image = image;
  st.format = p.format;
  st.chain = p.chain;
  st.key = key_for(name);
  st.attach_id = new_attach_id();
  st.read_only = o.read_only;
  st.block_sectors = uint32_t(p.block / 512);
  st.target_sectors = p.target_sectors;
  st.scratch = scratch_path(name);
  if (o.group) st.group = *o.group;
  DMU_TRY(create_scratch_file(st.scratch, scratch_file_size(p.block)));

  std::vector<mapper::LoopDevice> loops;  // declared before dm: the dm device goes first
  std::vector<std::string> files = p.files;
  files.push_back(st.scratch);
  TableSpec spec;
  spec.key = st.key;
  spec.target_sectors = p.target_sectors;
  spec.block_sectors = st.block_sectors;
  spec.writable_devs = p.writable;
  spec.daemon_timeout = o.daemon_timeout;
  for (size_t i = 0; i < files.size(); ++i) {
    mapper::LoopOptions lo;
    lo.read_only = i >= p.writable;
    // The image locks move to the loop devices (see LoopOptions::lock); the
    // scratch store is ours alone.
    if (i < p.files.size()) {
      lo.lock = lo.read_only ? LockMode::Reader : LockMode::Writer;
      lo.named_by = p.named_by[i];
    }
    DMU_ASSIGN_OR_RETURN(mapper::LoopDevice loop, mapper::LoopDevice::attach(files[i], lo));
    st.devices.push_back({files[i], loop.path(), !lo.read_only});
    spec.devs.push_back(loop.dev_string());
    loops.push_back(std::move(loop));
  }
  // The files with no data in the table get loop devices of their own
  // only to hold their locks (metadata_loops.h).
  std::vector<mapper::LoopDevice> metadata_loops;
  for (const MetadataFile& m : p.metadata) {
    DMU_ASSIGN_OR_RETURN(mapper::LoopDevice loop, attach_metadata_loop(m));
    st.metadata_loops.push_back({m.path, loop.path(), m.mode == LockMode::Writer});
    metadata_loops.push_back(std::move(loop));
  }
  DMU_ASSIGN_OR_RETURN(mapper::DmTableLine line, table_line(spec));
  mapper::DmCreateOptions dco;
  dco.read_only = o.read_only;
  dco.uuid = dm_uuid_for(name);
  DMU_ASSIGN_OR_RETURN(mapper::DmDevice dm, mapper::DmDevice::create(name, {line}, dco));
  // A test seam (vm attach-errors): killed here, the attach leaves a
  // device with no record (unrecorded_device.h).
  if (std::getenv("DMU_TEST_ATTACH_KILL_AFTER_CREATE") && std::getenv("DMU_TEST_SEAMS"))
    ::raise(SIGKILL);
  DMU_TRY(write_state(st));
  // A test seam (vm attach-group; with DMU_TEST_SEAMS set): time for a
  // second attach of NAME to arrive while this one sets it up, the race
  // attach() waits out.
  if (const char* ms = std::getenv("DMU_TEST_ATTACH_DELAY_MS"); ms && std::getenv("DMU_TEST_SEAMS"))
    std::this_thread::sleep_for(std::chrono::milliseconds(std::atoi(ms)));
  // Recorded: detach finds them from here on, so they may outlive us.
  // Until now a crash of ours took them along (autoclear).
  for (auto& l : metadata_loops) DMU_TRY(l.keep_after_close());
  p.chain_open.reset();  // the loop devices hold the image locks from here on

  // The bind gets the attach's time less a reserve for taking NAME back
  // from a process that binds it late, so a failed attach ends near its
  // deadline rather than up to 10 s past it (block-dmu has libxl's 40 s).
  // (At least a second, whatever setting the device up took.)
  const auto bind_deadline =
      std::max(deadline - cleanup_reserve(o.join_timeout), std::chrono::steady_clock::now() + 1s);
  // The device, its loops and its files outlive this process from here:
  // served, or left to the process that holds it.
  auto keep_all = [&] {
    dm.release();
    for (auto& l : loops) l.release();
    for (auto& l : metadata_loops) l.release();
    guard.armed = false;
  };
  Result<void> bound;
  if (o.group) {
    // The group's setup lock before NAME's goes: another attach of NAME in
    // between would find it unlocked and not being joined, and rebind it.
    DMU_ASSIGN_OR_RETURN(NameLock setup, lock_group_setup(*o.group, bind_deadline));
    lock.release();
    bound = join_group_locked(o.program, *o.group, name, bind_deadline, setup);
    if (!bound) {
      // The group's process may be binding NAME right now (a slow set_up):
      // the marker keeps it (and its rebinds) away, the SIGHUP makes a
      // process that bound it let it go.  Written with the setup lock
      // still held, so no other join can bring NAME in before it.
      (void)write_file_atomic(leave_path(name), "attach failed\n");
      (void)signal_group(*o.group);
    }
  } else {
    lock.release();
    // Past the deadline the process is sent SIGTERM; it lets NAME go as it
    // exits.  The marker tells another attach of NAME meanwhile that this
    // device is going: a process finishing its set-up writes its pid into
    // the record before it stops, which would look served.
    bound = start_mapping_process(o.program, name, time_left(bind_deadline));
    if (!bound) (void)write_file_atomic(leave_path(name), "attach failed\n");
  }
  if (!bound) {
    // Nothing is torn down under a process that may serve the device:
    // NAME's lock first, or the device is handed to a background detach.
    auto back = acquire_within(name, time_left(deadline));
    if (!back) {
      // Still held when our time is up: a `dmu detach --wait-release` in
      // the background removes the device once the process lets it go, so
      // nothing is left holding the image (block-dmu has no record of it
      // to detach, and a retried xl create would find the image locked).
      keep_all();
      std::string later = name + " is detached in the background once " +
                          (o.group ? "its group" : "its mapping process") + " lets it go (" +
                          log_path(name) + ")";
      if (auto d = spawn_dmu(o.program, {"detach", name, "--wait-release", "60"}, log_path(name));
          !d)
        later = name + " stays attached (" + d.error().message + "): dmu detach " + name;
      return fail(bound.error().code, bound.error().message + "; " + later);
    }
    lock = std::move(*back);  // held while the guard and the RAII owners tear down
    return fail(bound.error());
  }
  // Serving: the device and its loops now outlive this process.
  keep_all();
  return Attached{st.node(), false};
}

}  // namespace

// Two attaches of one disk at once (block-dmu falling back while
// dmu-xen-helper attaches, libxl running add twice) both end with it served:
// while NAME's lock is held by an attach setting the device up (or a group
// process binding it), attach waits a little and then looks again.
Result<Attached> attach(const AttachOptions& o) {
  DMU_ASSIGN_OR_RETURN(const std::string image, absolute(o.image));
  const std::string name = o.name ? *o.name : default_name(image);
  DMU_TRY(check_name(name));
  if (o.group) DMU_TRY(check_name(*o.group));
  DMU_TRY(mapper::ControlChannel::check_present());
  DMU_TRY(ensure_run_dir());

  const auto deadline = std::chrono::steady_clock::now() + o.join_timeout;
  const auto settle = std::chrono::steady_clock::now() + std::min(o.join_timeout, kSettleTime);
  // Sleeps a little and says true while the settle time lasts.
  auto settling = [&] {
    if (std::chrono::steady_clock::now() >= settle) return false;
    std::this_thread::sleep_for(100ms);
    return true;
  };
  auto wait_a_little = [&](const std::string& why) -> Result<void> {
    if (!settling()) return fail(EBUSY, why);
    return {};
  };
  for (;;) {
    DMU_ASSIGN_OR_RETURN(auto existing, read_state(name));
    DMU_ASSIGN_OR_RETURN(mapper::DmInfo info, mapper::dm_device_info(name));
    const bool locked = lock_held(name);
    if (existing && info.exists) {
      // Being detached (or withdrawn by the Xen helper): waited for, then
      // attached anew; a marker a killed detach left is for dmu detach.
      if (leaving(name)) {
        DMU_TRY(wait_a_little(name + ": being detached (" + leave_path(name) +
                              "); if no dmu detach runs, run dmu detach " + name));
        continue;
      }
      // A record no process ever took (pid 0, no supervisor, no group): its
      // attach is starting the mapping process; one killed there is
      // rebound after the wait.
      if (!locked && existing->group.empty() && existing->pid == 0 && existing->supervisor == 0 &&
          settling())
        continue;
      // Unlocked while an attach hands it to its group (join_group): not
      // ours to rebind, whose lock grab could fail the group's bind.  (The
      // join may be another member's: after a while we rebind anyway.)
      if (!locked && !existing->group.empty() && group_joining(existing->group) && settling())
        continue;
      if (!locked) {
        DMU_ASSIGN_OR_RETURN(std::string node, rebind(*existing, image, o, deadline));
        return Attached{node, false};
      }
      // Served as asked: done.  Its lock held but not served yet: being set
      // up by another attach, or bound by its (restarted) process.
      if (served(*existing)) {
        DMU_TRY(same_attachment(*existing, image, o));
        return Attached{existing->node(), true};
      }
      DMU_TRY(wait_a_little(name + ": being set up by another attach; try again"));
      continue;
    }
    if (locked) {
      DMU_TRY(wait_a_little(name + ": being set up (or let go) by another dmu; try again"));
      continue;
    }
    if (info.exists && !made_by_attach(name, info))
      return fail(EEXIST, "dm device " + name + " exists and was not made by dmu attach");
    auto lock = NameLock::try_acquire(name);
    if (!lock && lock.error().code == EWOULDBLOCK) {
      DMU_TRY(wait_a_little(name + ": being set up by another attach; try again"));
      continue;  // another attach took it since we looked
    }
    if (!lock) return fail(lock.error());
    if (info.exists) {
      // Ours, with no record and nobody setting it up: an attach killed
      // before it wrote the record.  An attach that wrote its record since
      // (looked at again under the lock) is not ours to undo.
      DMU_ASSIGN_OR_RETURN(UnrecordedRemoval removal, remove_unrecorded_device(name));
      if (removal == UnrecordedRemoval::kRecorded) continue;
      if (removal == UnrecordedRemoval::kRemoved)
        log_event(LogLevel::Warning, name, kUnrecordedRemoved);
    }
    if (existing) {
      // A stale record of a device long gone (removed with dmsetup): its
      // metadata loops would keep the image locked against us.  Its files
      // go, but not the lock file we hold (another attach would lock a new
      // one and set up beside us).
      DMU_TRY(release_metadata_loops(*existing));
      remove_state_files(name, /*keep_log=*/false, /*keep_lock=*/true);
    }
    return attach_new(o, image, name, std::move(*lock), deadline);
  }
}

}  // namespace dmu::daemon
