// The commit thread; see commit_worker.h.
#include "daemon/commit_worker.h"

#include <signal.h>

namespace dmu::daemon {

CommitWorker::CommitWorker(std::function<void(const std::vector<uint64_t>&)> run)
    : run_(std::move(run)) {
  // Signals (SIGTERM) belong to the request loop's thread, whose poll() they
  // interrupt; this thread starts with them blocked.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  thread_ = std::thread([this] { loop(); });
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
}

CommitWorker::~CommitWorker() { stop(); }

void CommitWorker::enqueue(uint64_t id) {
  {
    std::lock_guard lock(mu_);
    queue_.push_back(id);
  }
  wake_.notify_one();
}

void CommitWorker::drain() {
  std::unique_lock lock(mu_);
  idle_.wait(lock, [this] { return queue_.empty() && !running_; });
}

void CommitWorker::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  wake_.notify_one();
  if (thread_.joinable()) thread_.join();
}

void CommitWorker::loop() {
  std::unique_lock lock(mu_);
  for (;;) {
    wake_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) break;  // stopping, and nothing left to answer
    std::vector<uint64_t> ids(queue_.begin(), queue_.end());
    queue_.clear();
    running_ = true;
    lock.unlock();
    run_(ids);
    lock.lock();
    running_ = false;
    if (queue_.empty()) idle_.notify_all();
  }
  idle_.notify_all();
}

}  // namespace dmu::daemon
