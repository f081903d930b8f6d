// ServedDevice: one device of a mapping process.  It owns the image chain,
// the map service that answers for it, the bound control channel, and the
// commit thread, and it answers the kernel's requests batch by batch.
//
// Threads and locking: the map service is single-threaded code, so one mutex
// (service_mu_) guards it.  The request loop holds it while it hands a batch
// to the service; the commit thread holds it for the image commit except
// while the disk syncs (below).  COMMIT requests never run on the loop: the
// loop queues them and keeps reading, so DONEs and MAPs are taken off the
// control device while a flush is being made durable (the kernel serves
// cached extents without us meanwhile).  Answers leave in the order they
// were made: whoever made them takes send_mu_ before letting go of
// service_mu_, and nobody waits for service_mu_ while holding send_mu_.
// Otherwise a read answer made before a write's NEW extent could reach the
// kernel after it and put the old mapping back.
//
// Reads during a commit: most of an image commit is fdatasync, so the
// commit thread lets go of the mutex while it waits in one (a SyncHook,
// fileio/sync_hook.h) and takes it back after, ahead of the loop
// (commit_waiting_: std::mutex is not fair).  While committing_ is set the
// loop hands the service only MAPs that read and abandon no earlier answer;
// everything else (write and discard MAPs, DONEs, COMMITs, a MAP asked
// again) is set aside in the order read, and a refused answer is resolved
// only after the commit.  The engines' read paths (map, read_compressed)
// see whole state at every sync their commits make and change only clean
// table cache entries (audited per engine for issue 13; commit_window_test
// reads the whole disk at every sync point of random workloads, with tiny
// caches).  When the engine's commit returns, the COMMITTED answers go out
// first (they cover only DONEs handled before the commit), then the commit
// thread hands the set-aside requests to the service, under the mutex and
// before anything the loop reads later.  A read that overtakes a set-aside
// DONE of its block still waits for that DONE in the map service
// (must_wait); one that overtakes a set-aside write MAP is one the guest
// issued alongside that write, in either order.  The on-disk order of the
// commit's writes and syncs is unchanged.
//
// Data device growth: a fresh cluster past a data file's end makes the map
// service extend the file and call device_grown; we then grow the loop
// device (LOOP_SET_CAPACITY).  For qcow2, whose allocator keeps its own idea
// of the file's end and reuses unreferenced clusters, the file is extended
// a chunk at a time so the loop is resized once per chunk, not per cluster.
// Before each batch of answers is written, every writable data file's size
// is compared with its loop device's, so an extent never points past the end
// of a loop device even when the engine grew the file by a metadata write.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/error.h"
#include "daemon/commit_worker.h"
#include "daemon/counters.h"
#include "daemon/state_file.h"
#include "fileio/file.h"
#include "formats/chain.h"
#include "mapper/control_channel.h"
#include "mapper/map_service.h"

namespace dmu::daemon {

class ServedDevice {
 public:
  // Opens the chain of state.image, binds to state.key, adopts the kernel's
  // unpublished allocations (refusing to serve when it cannot) and builds
  // the map service.  Nothing is answered yet.
  static Result<std::unique_ptr<ServedDevice>> open(const DeviceState& state);
  ~ServedDevice();

  const std::string& name() const { return state_.name; }
  int fd() const { return channel_.fd(); }
  const mapper::BindInfo& bind_info() const { return bind_; }

  // Reads the requests waiting (without blocking) and answers them; COMMITs
  // go to the commit thread.  Returns how many requests were read.
  Result<size_t> serve_batch();
  // Pushes the next stretch of the disk's mappings (at most one answer's
  // worth of extents) unless the push is over; returns whether more is to
  // push.  A device pushes once, after a bind that adopted nothing: the
  // kernel then serves reads of allocated blocks without asking (the RFC's
  // prefetch at attach).  It stops at kMaxPushedExtents (the kernel's cache
  // evicts beyond its max_extents) and at the first refused message.
  bool push_some();
  // SIGTERM: answers the COMMITs queued, then commits what the map service
  // holds (DONEs read so far), so a successor starts from durable metadata.
  Result<void> shutdown();
  // Rewrites NAME.stats.json when the counters changed since last time.
  void write_stats(bool force);

 private:
  struct GrowingLoop {
    std::string file, loop;
    UniqueFd fd;
    uint64_t capacity = 0;
    bool chunked = false;  // extend the file a chunk ahead (qcow2)
  };

  ServedDevice(DeviceState state, mapper::ControlChannel channel)
      : state_(std::move(state)), channel_(std::move(channel)) {}
  Result<void> grow(unsigned device, uint64_t new_size);
  Result<void> sync_capacity();  // under service_mu_
  void handle_locked(const dmu_request& q, std::vector<dmu_response>& out);
  void run_commits(const std::vector<uint64_t>& ids);
  // After the answer to read MAP q (out from index first): when q starts
  // where a stream's last answer or push ended, pushes the stretch after
  // this answer (the RFC's prefetch after a sequential miss), twice as long
  // as that stream's last push, up to 64 MiB.  Under service_mu_.
  void follow_stream(const dmu_request& q, size_t first, std::vector<dmu_response>& out);
  // Sends answers made under service_mu_; send_lock (of send_mu_) was
  // taken before service_mu_ was let go and is released here.  A refused
  // answer is resolved in the service (after any commit in progress), and
  // so on until nothing is left.
  Result<void> answer(std::vector<dmu_response>& out, std::unique_lock<std::mutex>& send_lock);
  // Takes service_mu_ for the request loop, after a commit thread waiting
  // for it.
  std::unique_lock<std::mutex> lock_for_loop();
  // Writes a batch; a message the kernel refuses is logged and skipped,
  // counted in *refused and its request id named in *refused_ids (pushes
  // and INVALIDATE left out) when given.
  Result<void> send(std::vector<dmu_response>& batch, size_t* refused = nullptr,
                    std::vector<uint64_t>* refused_ids = nullptr);

  DeviceState state_;
  mapper::ControlChannel channel_;
  mapper::BindInfo bind_;
  std::unique_ptr<Env> env_;  // the chain's files: direct I/O where their loops do it
  std::unique_ptr<formats::Chain> chain_;
  std::mutex service_mu_;  // guards service_, growing_, committing_, set_aside_
  std::mutex send_mu_;     // see above: answers leave in the order made
  std::condition_variable commit_cv_;  // committing_ or commit_waiting_ went false
  std::unique_ptr<mapper::MapService> service_;
  bool committing_ = false;                  // the commit thread is inside the image commit
  std::atomic<bool> commit_waiting_{false};  // it waits to take service_mu_ back
  std::vector<dmu_request> set_aside_;       // read during a commit, handled after it
  struct Stream {
    uint64_t from = 0;             // the first block of its last answer
    uint64_t next = ~uint64_t(0);  // the block where its last answer or push ended
    uint64_t window = 0;           // blocks its last push covered
    uint64_t used = 0;             // stream_clock_ when it last moved
  };
  std::array<Stream, 4> streams_{};  // sequential readers followed at once
  uint64_t stream_clock_ = 0;
  bool stream_push_ = false;  // BIND granted pushes, DMU_STREAM_PUSH is not 0
  std::vector<std::optional<GrowingLoop>> growing_;  // by device index; writable ones
  std::vector<dmu_request> inbox_;
  Counters counters_;
  uint64_t stats_written_ = ~uint64_t(0);
  uint64_t push_next_ = ~uint64_t(0);  // the block the push continues from; ~0: no push
  uint64_t push_id_ = 0;               // the last push id (DMU_PUSH_ID is added)
  std::unique_ptr<CommitWorker> commits_;  // last: stopped before the rest goes
};

}  // namespace dmu::daemon
