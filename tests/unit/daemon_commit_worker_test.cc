// The commit thread (daemon/commit_worker.h): commits queued while one runs
// are answered together by the next run, in order, and stop() answers
// everything queued before it returns.
#include <gtest/gtest.h>

#include <condition_variable>
#include <mutex>

#include "daemon/commit_worker.h"

namespace dmu::daemon {
namespace {

TEST(CommitWorker, CoalescesWhatQueuedDuringARun) {
  std::mutex mu;
  std::condition_variable cv;
  bool release_first = false;
  std::vector<std::vector<uint64_t>> runs;
  CommitWorker w([&](const std::vector<uint64_t>& ids) {
    std::unique_lock lock(mu);
    runs.push_back(ids);
    cv.notify_all();
    if (runs.size() == 1) cv.wait(lock, [&] { return release_first; });
  });
  w.enqueue(1);
  {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return runs.size() == 1; });
  }
  // The first run is busy: these three wait and go together.
  w.enqueue(2);
  w.enqueue(3);
  w.enqueue(4);
  {
    std::lock_guard lock(mu);
    release_first = true;
  }
  cv.notify_all();
  w.drain();
  std::lock_guard lock(mu);
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_EQ(runs[0], (std::vector<uint64_t>{1}));
  EXPECT_EQ(runs[1], (std::vector<uint64_t>{2, 3, 4}));
}

TEST(CommitWorker, StopAnswersEverythingQueued) {
  std::vector<uint64_t> answered;
  std::mutex mu;
  {
    CommitWorker w([&](const std::vector<uint64_t>& ids) {
      std::lock_guard lock(mu);
      answered.insert(answered.end(), ids.begin(), ids.end());
    });
    for (uint64_t id = 1; id <= 100; ++id) w.enqueue(id);
    w.stop();
    w.stop();  // idempotent
  }
  ASSERT_EQ(answered.size(), 100u);
  for (size_t i = 0; i < answered.size(); ++i) EXPECT_EQ(answered[i], i + 1);
}

TEST(CommitWorker, DrainWithNothingQueuedReturns) {
  CommitWorker w([](const std::vector<uint64_t>&) {});
  w.drain();
}

}  // namespace
}  // namespace dmu::daemon
