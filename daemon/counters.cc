// Counters as JSON; see counters.h.
#include "daemon/counters.h"

#include <sys/resource.h>

namespace dmu::daemon {

uint64_t Counters::activity() const {
  return requests + responses + rejected + commits + grows + adopted + pushed + waited +
         stream_pushed;
}

void Counters::commit_took(uint64_t us) {
  // Only the commit thread writes these.  The maximum first, the total
  // after: to_json reads them the other way round, so no snapshot shows a
  // maximum above the total.
  if (us > commit_us_max.load()) commit_us_max = us;
  commit_us_last = us;
  commit_us_total += us;
}

namespace {
uint64_t process_cpu_ms() {
  struct rusage u {};
  if (::getrusage(RUSAGE_SELF, &u) != 0) return 0;
  auto ms = [](const timeval& t) { return uint64_t(t.tv_sec) * 1000 + uint64_t(t.tv_usec) / 1000; };
  return ms(u.ru_utime) + ms(u.ru_stime);
}
}  // namespace

nlohmann::json to_json(const Counters& c) {
  return {{"requests", c.requests.load()},
          {"map-reads", c.map_reads.load()},
          {"map-writes", c.map_writes.load()},
          {"map-discards", c.map_discards.load()},
          {"dones", c.dones.load()},
          {"done-errors", c.done_errors.load()},
          {"commits", c.commits.load()},
          {"commit-runs", c.commit_runs.load()},
          {"commit-errors", c.commit_errors.load()},
          {"responses", c.responses.load()},
          {"rejected", c.rejected.load()},
          {"grows", c.grows.load()},
          {"adopted", c.adopted.load()},
          {"pushed", c.pushed.load()},
          {"stream-pushed", c.stream_pushed.load()},
          {"waited", c.waited.load()},
          {"answered-during-commit", c.during_commit_answered.load()},
          {"held-during-commit", c.during_commit_held.load()},
          {"allocations", c.allocations.load()},
          {"allocated-blocks", c.allocated_blocks.load()},
          {"commit-us-max", c.commit_us_max.load()},
          {"commit-us-total", c.commit_us_total.load()},
          {"commit-us-last", c.commit_us_last.load()},
          {"cpu-ms", process_cpu_ms()}};
}

}  // namespace dmu::daemon
