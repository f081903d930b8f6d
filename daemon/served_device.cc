// ServedDevice; see served_device.h.
#include "daemon/served_device.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <set>
#include <span>
#include <thread>

#include "common/checked.h"
#include "daemon/log.h"
#include "daemon/paths.h"
#include "daemon/table_line.h"
#include "fileio/direct_env.h"
#include "fileio/sync_hook.h"
#include "mapper/dm_device.h"
#include "mapper/loop_device.h"
#include "mapper/protocol.h"

namespace dmu::daemon {
namespace {

using namespace std::chrono_literals;

constexpr size_t kBatch = 256;                  // requests per read()
constexpr uint64_t kGrowChunk = 64ull << 20;    // qcow2 files grow by this much
constexpr auto kBindRetry = 5s;                 // a killed predecessor's file may still close
constexpr uint64_t kMaxPushedExtents = 16384;   // a quarter of the table's default max_extents
// Pushes ahead of a sequential read stream: the first covers this much,
// each next one twice the last, up to the cap.
constexpr uint64_t kFirstStreamPush = 8ull << 20;
constexpr uint64_t kMaxStreamPush = 64ull << 20;

Result<mapper::BindInfo> bind_with_retry(mapper::ControlChannel& channel, const std::string& key) {
  const auto deadline = std::chrono::steady_clock::now() + kBindRetry;
  for (;;) {
    auto b = channel.bind(key, DMU_FEATURE_ALL);
    if (b || b.error().code != EBUSY || std::chrono::steady_clock::now() >= deadline) return b;
    std::this_thread::sleep_for(100ms);
  }
}

}  // namespace

Result<std::unique_ptr<ServedDevice>> ServedDevice::open(const DeviceState& st) {
  formats::ChainOptions co;
  co.format = st.format;
  co.access = st.read_only ? formats::Access::ReadOnly : formats::Access::ReadWrite;
  // No locks of our own: attach placed them on the loop devices' files
  // (data loops and metadata loops), where they outlive this process
  // (mapper/loop_device.h, metadata_loops.h), and a lock of ours would
  // conflict with those.
  co.lock = false;
  // The kernel writes guest data into the writable files through loop
  // devices doing direct I/O: our metadata writes must not go through the
  // page cache there (fileio/direct_env.h).
  std::set<std::string> direct;
  for (const DataDevice& d : st.devices) {
    if (!d.writable) continue;
    DMU_ASSIGN_OR_RETURN(UniqueFd loop, mapper::open_loop_of(d.loop, d.file));
    DMU_ASSIGN_OR_RETURN(bool dio, mapper::loop_direct_io(loop.get(), d.loop));
    auto id = posix_env().identity(d.file);
    if (dio && id) direct.insert(*id);
  }
  auto env = direct_io_env(direct);
  DMU_ASSIGN_OR_RETURN(auto chain, formats::Chain::open(*env, st.image, co));
  const auto& files = chain->devices();
  if (files.size() + 1 != st.devices.size())
    return fail(EINVAL, st.image + ": the chain has " + std::to_string(files.size()) +
                            " data files now, the device was set up with " +
                            std::to_string(st.devices.size() - 1));
  for (size_t i = 0; i < files.size(); ++i)
    if (files[i]->path() != st.devices[i].file)
      return fail(EINVAL, st.image + ": data file " + std::to_string(i) + " is " +
                              files[i]->path() + " now, the device uses " + st.devices[i].file);
  for (File* f : files)
    if (auto id = posix_env().identity(f->path()); id && direct.count(*id) && !does_direct_io(*f))
      log_event(LogLevel::Warning, st.name,
                f->path() + ": its file system refuses 512-byte direct I/O, so metadata goes "
                            "through the page cache while the kernel writes data with direct I/O "
                            "(fileio/direct_env.h)");

  DMU_ASSIGN_OR_RETURN(mapper::ControlChannel channel, mapper::ControlChannel::open());
  std::unique_ptr<ServedDevice> dev(new ServedDevice(st, std::move(channel)));
  dev->env_ = std::move(env);
  dev->chain_ = std::move(chain);
  DMU_ASSIGN_OR_RETURN(dev->bind_, bind_with_retry(dev->channel_, st.key));
  const mapper::BindInfo& b = dev->bind_;
  if (b.block_sectors != st.block_sectors || b.nr_devs != st.devices.size() ||
      b.target_sectors != st.target_sectors)
    return fail(EINVAL, st.name + ": the kernel's table (" + std::to_string(b.target_sectors) +
                            " sectors, block " + std::to_string(b.block_sectors) + ", " +
                            std::to_string(b.nr_devs) + " devices) is not the one in " +
                            state_path(st.name));

  // Before anything is answered: what a predecessor allocated but did not
  // publish (protocol 2, "Publishing and daemon restart").
  DMU_ASSIGN_OR_RETURN(auto records, dev->channel_.list_allocations());

  // The scratch store is rebuilt empty below; cached extents may point into
  // the old contents, so the kernel drops its cache first (only performance
  // is lost: the next misses ask us again).
  DMU_TRY(mapper::dm_message(st.name, "invalidate"));

  const uint64_t block = uint64_t(st.block_sectors) * 512;
  DMU_ASSIGN_OR_RETURN(auto scratch, mapper::ScratchStore::create(posix_env(), st.scratch,
                                                                  scratch_file_size(block), block,
                                                                  true));
  mapper::MapServiceOptions mo;
  mo.block_size = block;
  ServedDevice* self = dev.get();
  mo.device_grown = [self](unsigned device, uint64_t size) { return self->grow(device, size); };
  DMU_ASSIGN_OR_RETURN(dev->service_,
                       mapper::MapService::create(*dev->chain_, std::move(scratch), mo));
  if (!records.empty()) {
    DMU_TRY(dev->service_->adopt(records));
    dev->counters_.adopted = records.size();
  }

  // DMU_STREAM_PUSH=0 turns the pushes ahead of sequential reads off, to
  // measure what they bring (daemon/README.md).  They are made after an
  // adoption too: adopted blocks are in flight, which a push skips.
  const char* stream_push = std::getenv("DMU_STREAM_PUSH");
  dev->stream_push_ =
      (b.features & DMU_FEATURE_PUSH) && !(stream_push && std::string(stream_push) == "0");
  // Push the disk's mappings only over a kernel cache nobody else filled
  // since the invalidation above, and only from a service whose view is the
  // image's committed one (nothing adopted): then a push says exactly what a
  // read answer at this moment would.  Push ids start from our pid, which
  // makes a clash with a predecessor's unlikely; it would not matter anyway:
  // the kernel drops a departed daemon's open pushes, and ours carry no NEW
  // extents.
  if ((b.features & DMU_FEATURE_PUSH) && records.empty()) dev->push_next_ = 0;
  dev->push_id_ = uint64_t(::getpid()) << 24;

  dev->growing_.resize(st.devices.size());
  for (size_t i = 0; i < st.devices.size(); ++i) {
    const DataDevice& d = st.devices[i];
    if (!d.writable) continue;
    GrowingLoop g;
    g.file = d.file;
    g.loop = d.loop;
    g.chunked = st.format == "qcow2" && d.file == st.image;
    DMU_ASSIGN_OR_RETURN(g.fd, mapper::open_loop_of(d.loop, d.file));
    // Also heals a loop left short by a predecessor that died mid-growth.
    DMU_ASSIGN_OR_RETURN(g.capacity, mapper::refresh_loop_capacity(g.fd.get(), g.loop));
    dev->growing_[i] = std::move(g);
  }
  dev->inbox_.resize(kBatch);
  dev->commits_ = std::make_unique<CommitWorker>(
      [self](const std::vector<uint64_t>& ids) { self->run_commits(ids); });
  log_event(LogLevel::Info, st.name,
            "bound to key " + st.key + " image " + st.image + " (" + st.format +
                (st.read_only ? ", read-only" : "") + "), resent " + std::to_string(b.resent) +
                ", redelivered " + std::to_string(b.redelivered) + ", adopted " +
                std::to_string(records.size()) + " allocations");
  return dev;
}

ServedDevice::~ServedDevice() {
  if (commits_) commits_->stop();
}

Result<void> ServedDevice::grow(unsigned device, uint64_t new_size) {
  if (device >= growing_.size() || !growing_[device])
    return fail(EROFS, state_.name + ": data device " + std::to_string(device) +
                           " is not writable and cannot grow");
  GrowingLoop& g = *growing_[device];
  if (g.chunked) {
    struct stat st {};
    if (::stat(g.file.c_str(), &st) != 0) return fail(errno_error(g.file + ": stat"));
    const uint64_t target = align_up(new_size, kGrowChunk).value_or(new_size);
    // Through the chain's file, which grows without dirtying the page cache
    // (fileio/direct_env.h).
    if (uint64_t(st.st_size) < target) DMU_TRY(service_->devices()[device]->truncate(target));
  }
  DMU_ASSIGN_OR_RETURN(g.capacity, mapper::refresh_loop_capacity(g.fd.get(), g.loop));
  if (g.capacity < new_size)
    return fail(EIO, g.loop + ": grew to " + std::to_string(g.capacity) + " bytes, " +
                         std::to_string(new_size) + " needed for " + g.file);
  ++counters_.grows;
  return {};
}

Result<void> ServedDevice::sync_capacity() {
  for (size_t i = 0; i < growing_.size(); ++i) {
    if (!growing_[i]) continue;
    GrowingLoop& g = *growing_[i];
    DMU_ASSIGN_OR_RETURN(uint64_t size, service_->devices()[i]->size());
    if (size <= g.capacity) continue;
    DMU_ASSIGN_OR_RETURN(g.capacity, mapper::refresh_loop_capacity(g.fd.get(), g.loop));
    ++counters_.grows;
  }
  return {};
}

void ServedDevice::handle_locked(const dmu_request& q, std::vector<dmu_response>& out) {
  ++counters_.requests;
  switch (q.type) {
    case DMU_REQ_COMMIT:
      commits_->enqueue(q.id);  // after every DONE read before it was handled
      return;
    case DMU_REQ_MAP:
      if (q.flags & DMU_MAP_DISCARD)
        ++counters_.map_discards;
      else if (q.flags & DMU_MAP_WRITE)
        ++counters_.map_writes;
      else
        ++counters_.map_reads;
      break;
    case DMU_REQ_DONE:
      ++counters_.dones;
      if (q.status != 0) ++counters_.done_errors;
      break;
    default:
      break;
  }
  const std::string before = service_->last_error();
  const size_t waiting = service_->waiting_requests();
  const size_t first = out.size();
  service_->handle(q, out);
  if (service_->waiting_requests() > waiting) ++counters_.waited;
  for (size_t i = first; i < out.size(); ++i)
    if (out[i].type == DMU_RSP_EXTENT && (out[i].ext_flags & DMU_EXT_NEW)) {
      ++counters_.allocations;
      counters_.allocated_blocks += out[i].nr_blocks;
    }
  if (service_->last_error() != before)
    log_event(LogLevel::Warning, state_.name,
              proto::describe(q) + ": " + service_->last_error());
}

std::unique_lock<std::mutex> ServedDevice::lock_for_loop() {
  std::unique_lock lock(service_mu_);
  commit_cv_.wait(lock, [this] { return !commit_waiting_; });
  return lock;
}

Result<size_t> ServedDevice::serve_batch() {
  DMU_ASSIGN_OR_RETURN(size_t n, channel_.read_requests(inbox_, 0ms));
  if (n == 0) return n;
  std::vector<dmu_response> out;
  std::unique_lock send_lock(send_mu_, std::defer_lock);
  {
    auto lock = lock_for_loop();
    for (size_t i = 0; i < n; ++i) {
      const dmu_request& q = inbox_[i];
      // During a commit's sync only what reads (served_device.h).
      if (committing_ && (!proto::is_read_map(q) || service_->awaits_done(q.id))) {
        set_aside_.push_back(q);
        ++counters_.during_commit_held;
        continue;
      }
      if (committing_) ++counters_.during_commit_answered;
      const size_t first = out.size();
      handle_locked(q, out);
      if (proto::is_read_map(q)) follow_stream(q, first, out);
    }
    if (auto s = sync_capacity(); !s)
      log_event(LogLevel::Error, state_.name, "grow loop device: " + s.error().message);
    send_lock.lock();
  }
  DMU_TRY(answer(out, send_lock));
  return n;
}

void ServedDevice::follow_stream(const dmu_request& q, size_t first,
                                 std::vector<dmu_response>& out) {
  if (!stream_push_) return;
  uint64_t end = 0;  // where the read answer ends
  for (size_t i = first; i < out.size(); ++i)
    if (out[i].id == q.id && out[i].type == DMU_RSP_EXTENT)
      end = std::max<uint64_t>(end, out[i].block + out[i].nr_blocks);
  if (end == 0) return;  // it waits, or failed: nothing to follow yet
  auto s = std::find_if(streams_.begin(), streams_.end(),
                        [&](const Stream& c) { return c.next == q.block; });
  const bool continues = s != streams_.end();
  if (!continues) {
    // A miss inside a stream's last stretch: a piece of the same reader's
    // request (a kernel that splits reads sends them at once), not a new
    // stream to follow.
    auto inside = std::find_if(streams_.begin(), streams_.end(), [&](const Stream& c) {
      return c.next != ~uint64_t(0) && q.block >= c.from && q.block < c.next;
    });
    if (inside != streams_.end()) {
      inside->used = ++stream_clock_;
      return;
    }
    // A new stream, in place of the one unused longest.
    s = std::min_element(streams_.begin(), streams_.end(),
                         [](const Stream& a, const Stream& b) { return a.used < b.used; });
    s->window = 0;
  }
  s->used = ++stream_clock_;
  s->from = q.block;
  s->next = end;
  if (!continues) return;
  // The reader reached the end of what we answered or pushed: push on.
  const uint64_t block = uint64_t(bind_.block_sectors) * 512;
  s->window =
      s->window ? std::min(2 * s->window, kMaxStreamPush / block) : kFirstStreamPush / block;
  const size_t before = out.size();
  s->next = service_->push(end, DMU_PUSH_ID | ++push_id_, out, end + s->window);
  counters_.stream_pushed += out.size() - before;
}

Result<void> ServedDevice::answer(std::vector<dmu_response>& out,
                                  std::unique_lock<std::mutex>& send_lock) {
  // A refused write answer may never get its DONE: the service resolves
  // it, which can answer requests that waited for it, which the kernel may
  // refuse too (all timed out).  Each round resolves at least one pending
  // answer, so this ends.
  std::vector<uint64_t> refused_ids;
  while (!out.empty()) {
    refused_ids.clear();
    auto sent = send(out, nullptr, &refused_ids);
    send_lock.unlock();
    if (sent && refused_ids.empty()) break;
    std::unique_lock lock(service_mu_);
    // Resolving a write answer changes the engine: not while a commit
    // waits in a sync.  A refused read answer changes nothing.
    const bool writes =
        !sent || std::any_of(refused_ids.begin(), refused_ids.end(),
                             [&](uint64_t id) { return service_->awaits_done(id); });
    if (writes) commit_cv_.wait(lock, [this] { return !committing_ && !commit_waiting_; });
    for (uint64_t id : refused_ids) service_->refused(id, out);
    if (!sent) {
      // Nothing more reaches this binding: what the service answers now
      // would wait for a DONE forever.
      while (!out.empty()) {
        std::vector<dmu_response> unsent = std::move(out);
        out.clear();
        for (const dmu_response& m : unsent)
          if (!(m.id & DMU_PUSH_ID) && m.type != DMU_RSP_INVALIDATE) service_->refused(m.id, out);
      }
      return fail(sent.error());
    }
    send_lock.lock();
  }
  if (send_lock.owns_lock()) send_lock.unlock();
  return {};
}

bool ServedDevice::push_some() {
  if (push_next_ == ~uint64_t(0)) return false;
  std::vector<dmu_response> out;
  std::unique_lock send_lock(send_mu_, std::defer_lock);
  {
    auto lock = lock_for_loop();
    if (push_next_ >= service_->target_blocks() || counters_.pushed >= kMaxPushedExtents) {
      log_event(LogLevel::Info, state_.name,
                "pushed " + std::to_string(counters_.pushed) + " extents up to block " +
                    std::to_string(push_next_));
      push_next_ = ~uint64_t(0);
      return false;
    }
    const std::string before = service_->last_error();
    push_next_ = service_->push(push_next_, DMU_PUSH_ID | ++push_id_, out);
    if (service_->last_error() != before)
      log_event(LogLevel::Warning, state_.name, "push ends early: " + service_->last_error());
    if (auto s = sync_capacity(); !s)
      log_event(LogLevel::Error, state_.name, "grow loop device: " + s.error().message);
    send_lock.lock();  // answers leave in the order made (served_device.h)
  }
  const uint64_t n = out.size();
  size_t refused = 0;
  auto sent = send(out, &refused);
  send_lock.unlock();
  if (!sent || refused) {
    log_event(LogLevel::Warning, state_.name,
              "push stopped: " +
                  (sent ? std::string("the kernel refused an extent") : sent.error().message));
    push_next_ = ~uint64_t(0);
    return false;
  }
  counters_.pushed += n;
  return true;
}

void ServedDevice::run_commits(const std::vector<uint64_t>& ids) {
  std::vector<dmu_response> out;
  const auto started = std::chrono::steady_clock::now();
  std::unique_lock lock(service_mu_);
  committing_ = true;
  {
    // The request loop answers reads while the disk syncs; coming back,
    // this thread goes first (served_device.h).
    SyncHook window([&lock] { lock.unlock(); },
                    [this, &lock] {
                      commit_waiting_ = true;
                      lock.lock();
                      commit_waiting_ = false;
                      commit_cv_.notify_all();
                    });
    service_->handle(proto::commit_request(ids.front()), out);
  }
  counters_.commit_took(uint64_t(std::chrono::duration_cast<std::chrono::microseconds>(
                                     std::chrono::steady_clock::now() - started)
                                     .count()));
  const std::string error = service_->last_error();
  int32_t status = -EIO;
  std::vector<dmu_response> answers;
  for (const auto& m : out) {
    if (m.type == DMU_RSP_COMMITTED)
      status = m.status;
    else
      answers.push_back(m);
  }
  for (uint64_t id : ids) answers.push_back(proto::committed(id, status));
  counters_.commits += ids.size();
  ++counters_.commit_runs;
  if (status != 0) {
    ++counters_.commit_errors;
    log_event(LogLevel::Error, state_.name,
              "commit of " + state_.image + " failed (" + std::to_string(status) + "): " + error);
  }

  // COMMITTED first: it covers only DONEs handled before the commit, none
  // of those set aside.  The loop keeps setting requests aside meanwhile.
  std::unique_lock send_lock(send_mu_);
  lock.unlock();
  if (auto s = send(answers); !s)
    log_event(LogLevel::Error, state_.name, "answer COMMIT: " + s.error().message);
  send_lock.unlock();

  // Then what the loop set aside, in the order it read it, before anything
  // it reads from now on.  A COMMIT among it queues the next run.
  lock.lock();
  std::vector<dmu_response> held_answers;
  std::vector<dmu_request> held = std::move(set_aside_);
  set_aside_.clear();
  for (const dmu_request& q : held) handle_locked(q, held_answers);
  if (auto s = sync_capacity(); !s)
    log_event(LogLevel::Error, state_.name, "grow loop device: " + s.error().message);
  committing_ = false;
  commit_cv_.notify_all();
  send_lock.lock();
  lock.unlock();
  if (auto s = answer(held_answers, send_lock); !s)
    log_event(LogLevel::Error, state_.name,
              "answer requests held during the commit: " + s.error().message);
}

Result<void> ServedDevice::send(std::vector<dmu_response>& batch, size_t* refused,
                                std::vector<uint64_t>* refused_ids) {
  size_t pos = 0;
  while (pos < batch.size()) {
    std::span<const dmu_response> rest(batch.data() + pos, batch.size() - pos);
    DMU_ASSIGN_OR_RETURN(mapper::WriteOutcome outcome, channel_.write_responses(rest));
    counters_.responses += outcome.accepted;
    pos += outcome.accepted;
    if (!outcome.complete()) {
      ++counters_.rejected;
      if (refused) ++*refused;
      const dmu_response& bad = batch[pos];
      if (refused_ids && !(bad.id & DMU_PUSH_ID) && bad.type != DMU_RSP_INVALIDATE)
        refused_ids->push_back(bad.id);
      log_event(LogLevel::Error, state_.name,
                "kernel refused " + proto::describe(bad) + " (errno " +
                    std::to_string(outcome.error) + ")");
      // The rest of that answer goes with it; the rest of the batch still counts.
      bool final = bad.flags & DMU_RSP_FINAL;
      const uint64_t id = bad.id;
      for (++pos; !final && bad.type != DMU_RSP_INVALIDATE && pos < batch.size() &&
                  batch[pos].id == id;
           ++pos)
        final = batch[pos].flags & DMU_RSP_FINAL;
    }
  }
  batch.clear();
  return {};
}

Result<void> ServedDevice::shutdown() {
  commits_->stop();
  if (state_.read_only) return {};
  std::vector<dmu_response> out;
  std::lock_guard lock(service_mu_);
  // Id 0 is never a kernel request: the answer is not sent, only the commit
  // it makes matters.
  service_->handle(proto::commit_request(0), out);
  for (const auto& m : out)
    if (m.type == DMU_RSP_COMMITTED && m.status != 0)
      return fail(-m.status, state_.name + ": final commit of " + state_.image + ": " +
                                 service_->last_error());
  return {};
}

void ServedDevice::write_stats(bool force) {
  const uint64_t now = counters_.activity();
  if (!force && now == stats_written_) return;
  stats_written_ = now;
  nlohmann::json j = to_json(counters_);
  j["pid"] = ::getpid();
  // Never wait for a commit in progress just for a statistic.
  if (std::unique_lock lock(service_mu_, std::try_to_lock); lock.owns_lock())
    j["pending-writes"] = service_->pending_writes();
  if (auto w = write_file_atomic(stats_path(state_.name), j.dump(2) + "\n"); !w)
    log_event(LogLevel::Warning, state_.name, w.error().message);
}

}  // namespace dmu::daemon
