// Counters as JSON; see counters.h.
#include "daemon/counters.h"

namespace dmu::daemon {

uint64_t Counters::activity() const {
  return requests + responses + rejected + commits + grows + adopted + pushed + waited;
}

nlohmann::json to_json(const Counters& c) {
  return {{"requests", c.requests.load()},       {"map-reads", c.map_reads.load()},
          {"map-writes", c.map_writes.load()},   {"map-discards", c.map_discards.load()},
          {"dones", c.dones.load()},             {"done-errors", c.done_errors.load()},
          {"commits", c.commits.load()},         {"commit-runs", c.commit_runs.load()},
          {"commit-errors", c.commit_errors.load()}, {"responses", c.responses.load()},
          {"rejected", c.rejected.load()},       {"grows", c.grows.load()},
          {"adopted", c.adopted.load()},         {"pushed", c.pushed.load()},
          {"waited", c.waited.load()}};
}

}  // namespace dmu::daemon
