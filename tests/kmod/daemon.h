// Daemon: the test daemon's request loop over a DaemonChannel.  It reads
// batches, answers MAP through the Responder (hostile answers in their own
// write() with the return value checked), delays COMMITTED by the configured
// time without blocking MAP answers, logs and counts DONE, resumes a batch
// after a message the kernel rejected, and prints everything as
// `dmu-test-daemon: event=<name> key=value ...` lines the VM cases parse.
//
// In model mode a Model (tests/kmod/model.h) answers MAP and takes DONE;
// write MAPs it cannot answer yet wait in the daemon and are asked again
// after every DONE; a COMMIT freezes the committable map when it is read and
// answers COMMITTED only after that map was written and fdatasync()ed (after
// the commit delay, if any).
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <ostream>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "common/error.h"
#include "tests/kmod/daemon_channel.h"
#include "tests/kmod/daemon_config.h"
#include "tests/kmod/model.h"
#include "tests/kmod/responder.h"

namespace dmu::testd {

struct Counters {
  uint64_t requests = 0;  // every message read from the kernel
  uint64_t maps = 0;
  uint64_t map_reads = 0;
  uint64_t map_writes = 0;
  uint64_t map_discards = 0;
  uint64_t commits = 0;
  uint64_t dones = 0;
  uint64_t done_errors = 0;
  uint64_t commit_errors = 0;  // COMMITs answered with a failure (--commit-errno)
  uint64_t bad_requests = 0;  // malformed messages from the kernel
  uint64_t responses = 0;     // messages the kernel accepted
  uint64_t rejected = 0;      // messages the kernel refused (not hostile ones)
  uint64_t pushed_extents = 0;
  uint64_t hostile_sent = 0;
  uint64_t hostile_as_promised = 0;  // write() returned what the header promises
  uint64_t hostile_broken = 0;       // it did not
  uint64_t deferred = 0;             // model: write MAPs that waited for a DONE
  uint64_t adopted = 0;              // model: records adopted from LIST_ALLOCATIONS
  uint64_t resent = 0;               // from BIND
};

// "key=value key=value ..." of every counter, in declaration order.
std::string format_counters(const Counters& c);

class Daemon {
 public:
  using Clock = std::function<std::chrono::steady_clock::time_point()>;

  // `model` (model mode only) must outlive the daemon.
  Daemon(const DaemonConfig& config, const mapper::BindInfo& bind, Responder responder,
         DaemonChannel& channel, std::ostream& log, Clock clock, Model* model = nullptr);

  // Model mode, before anything is answered: adopts the kernel's unpublished
  // allocation records (LIST_ALLOCATIONS) and logs event=adopted records=N.
  Result<void> adopt();
  // Model mode, on a clean exit: commits the committable map (nobody waits
  // for it; the next daemon starts from it).
  void final_commit();

  // --push-all: pushes the whole target, then checks LIST_EXTENTS shows the
  // pushed extents.
  Result<void> push_all();
  // Hostile push-flood: pushes Responder::flood_batch(0), (1), ... for
  // config.flood_ms (at most max_batches), answering requests in between;
  // logs event=flood batches=N extents=N refused=N ms=N.
  Result<void> flood(uint64_t max_batches = UINT64_MAX);
  // One cycle: answer commits that are due, wait up to max_wait for requests
  // (less when a commit falls due sooner), answer them.
  Result<void> step(std::chrono::milliseconds max_wait);
  // Logs event=extents with cached/pushed/used counts from LIST_EXTENTS.
  Result<void> report_extents();
  void report_counters();

  // Called with "commit-recv-<id>" when a COMMIT arrives and "committed-<id>"
  // right before its answer is written (dm-log-writes marks in kmod-flush).
  void set_marker(std::function<void(const std::string&)> marker) { marker_ = std::move(marker); }
  // True once --hang-after-requests was reached: the last batch read stays
  // unanswered and nothing more is read.
  bool hung() const { return hung_; }
  // True once --kill-after-requests was reached: the N-th request was
  // handled, nothing of its batch was answered; the program dies now.
  bool killed() const { return killed_; }
  size_t deferred_waiting() const { return deferred_.size(); }

  const Counters& counters() const { return counters_; }
  size_t commits_waiting() const { return pending_commits_.size(); }

 private:
  void event(const std::string& name, const std::string& fields);
  void count_map(const dmu_request& q);
  void handle(const dmu_request& q, std::vector<dmu_response>& out);
  // Writes the batch; after a rejected message, logs it and goes on with the
  // rest.  Clears the batch.
  Result<void> send(std::vector<dmu_response>& batch);
  // One hostile answer for qs (Responder::hostile_requests() of them).
  Result<void> send_hostile(std::span<const dmu_request> qs);
  // push-across-reload, and MAPs touching --blocks in error/identity mode:
  // true once config_.gate_file exists, false after
  // kGateWaitMs without it.
  bool wait_for_gate() const;
  static constexpr int kGateWaitMs = 120000;
  // Sends hostile answers for the held requests once there are enough of
  // them and no push DONE the last one owes is still outstanding.
  Result<void> release_held();
  Result<void> answer_due_commits();
  // Other modes: the COMMITTED for commit `id`, failed with --commit-errno
  // (while --commit-errno-while's file exists).
  dmu_response plain_commit(uint64_t id);
  // Model mode: the COMMITTED for commit `id` of snapshot `s`, once durable.
  dmu_response model_commit(uint64_t id, const Model::Snapshot& s, uint32_t delay_ms);
  // Model mode: answers deferred write MAPs that no longer wait.
  void retry_deferred(std::vector<dmu_response>& out);
  void report_model();

  DaemonConfig config_;
  mapper::BindInfo bind_;
  Responder responder_;
  DaemonChannel& channel_;
  std::ostream& log_;
  Clock clock_;
  Counters counters_;
  std::deque<std::pair<std::chrono::steady_clock::time_point, uint64_t>> pending_commits_;
  std::vector<dmu_request> inbox_;
  std::function<void(const std::string&)> marker_;
  bool hung_ = false;
  bool killed_ = false;
  uint64_t handled_ = 0;  // requests handled (--kill-after-requests)
  Model* model_ = nullptr;
  std::vector<dmu_request> held_;                  // hostile: requests waiting for their answer
  std::set<uint64_t> awaited_dones_;               // hostile: push DONEs the last answer owes
  std::deque<dmu_request> deferred_;               // model: write MAPs waiting for a DONE
  std::map<uint64_t, Model::Snapshot> snapshots_;  // model: delayed commits' contents
};

}  // namespace dmu::testd
