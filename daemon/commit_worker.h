// CommitWorker: the commit thread of one device.  The request loop hands it
// the ids of COMMIT requests in the order it read them and goes on answering
// MAPs; the worker makes the image's metadata durable and answers COMMITTED.
//
// Coalescing: every COMMIT queued when a run starts was read after the DONEs
// before it had been handed to the map service (the loop hands them over in
// read order), so one image commit covers all of them: a burst of guest
// flushes costs one metadata commit (one fdatasync per file), not one each.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace dmu::daemon {

class CommitWorker {
 public:
  // run(ids) makes the metadata durable and answers every id; it is called
  // on the worker thread, never concurrently with itself.
  explicit CommitWorker(std::function<void(const std::vector<uint64_t>& ids)> run);
  ~CommitWorker();  // finishes what is queued, then joins
  CommitWorker(const CommitWorker&) = delete;
  CommitWorker& operator=(const CommitWorker&) = delete;

  void enqueue(uint64_t id);
  // Waits until everything enqueued so far has been answered.
  void drain();
  // Drains and stops the thread (idempotent).
  void stop();

 private:
  void loop();

  std::function<void(const std::vector<uint64_t>&)> run_;
  std::mutex mu_;
  std::condition_variable wake_;  // work or stop
  std::condition_variable idle_;  // queue empty and no run in progress
  std::deque<uint64_t> queue_;
  bool running_ = false;
  bool stopping_ = false;
  std::thread thread_;  // last: started once the rest is ready
};

}  // namespace dmu::daemon
