// Daemon implementation; see daemon.h.
#include "tests/kmod/daemon.h"

#include <algorithm>
#include <cstring>

namespace dmu::testd {
namespace {

using namespace std::chrono;

const char* followup_name(FollowUp f) {
  switch (f) {
    case FollowUp::Rejected:
      return "rejected";
    case FollowUp::Accepted:
      return "accepted";
    case FollowUp::Either:
      return "either";
  }
  return "?";
}

}  // namespace

std::string format_counters(const Counters& c) {
  std::string s;
  auto add = [&](const char* k, uint64_t v) {
    if (!s.empty()) s += ' ';
    s += k;
    s += '=';
    s += std::to_string(v);
  };
  add("requests", c.requests);
  add("maps", c.maps);
  add("map_reads", c.map_reads);
  add("map_writes", c.map_writes);
  add("map_discards", c.map_discards);
  add("commits", c.commits);
  add("dones", c.dones);
  add("done_errors", c.done_errors);
  add("bad_requests", c.bad_requests);
  add("responses", c.responses);
  add("rejected", c.rejected);
  add("pushed_extents", c.pushed_extents);
  add("hostile_sent", c.hostile_sent);
  add("hostile_as_promised", c.hostile_as_promised);
  add("hostile_broken", c.hostile_broken);
  add("resent", c.resent);
  return s;
}

Daemon::Daemon(const DaemonConfig& config, const BindInfo& bind, Responder responder,
               DaemonChannel& channel, std::ostream& log, Clock clock)
    : config_(config),
      bind_(bind),
      responder_(std::move(responder)),
      channel_(channel),
      log_(log),
      clock_(std::move(clock)),
      inbox_(std::max<size_t>(config.batch, 1)) {
  counters_.resent = bind.resent;
}

void Daemon::event(const std::string& name, const std::string& fields) {
  log_ << "dmu-test-daemon: event=" << name;
  if (!fields.empty()) log_ << ' ' << fields;
  log_ << '\n' << std::flush;
}

void Daemon::report_counters() {
  event("counters", format_counters(counters_));
}

Result<void> Daemon::report_extents() {
  DMU_ASSIGN_OR_RETURN(auto extents, channel_.list_extents());
  uint64_t pushed = 0, pushed_used = 0, used = 0, zero = 0, busy = 0, blocks = 0;
  for (const auto& e : extents) {
    blocks += e.nr_blocks;
    if (e.state & DMU_EXTENT_PUSHED) ++pushed;
    if ((e.state & DMU_EXTENT_PUSHED) && (e.state & DMU_EXTENT_USED)) ++pushed_used;
    if (e.state & DMU_EXTENT_USED) ++used;
    if (e.state & DMU_EXTENT_BUSY) ++busy;
    if (e.kind == DMU_EXT_ZERO) ++zero;
  }
  event("extents", "cached=" + std::to_string(extents.size()) +
                       " blocks=" + std::to_string(blocks) + " pushed=" + std::to_string(pushed) +
                       " pushed_used=" + std::to_string(pushed_used) +
                       " used=" + std::to_string(used) + " zero=" + std::to_string(zero) +
                       " busy=" + std::to_string(busy));
  return {};
}

Result<void> Daemon::push_all() {
  auto batches = responder_.push_batches();
  uint64_t extents = 0;
  for (auto& batch : batches) {
    const size_t n = batch.size();
    const uint64_t rejected_before = counters_.rejected;
    DMU_TRY(send(batch));
    extents += n - (counters_.rejected - rejected_before);
  }
  counters_.pushed_extents += extents;
  event("push",
        "extents=" + std::to_string(extents) + " batches=" + std::to_string(batches.size()));
  return report_extents();
}

Result<void> Daemon::send(std::vector<dmu_response>& batch) {
  size_t pos = 0;
  while (pos < batch.size()) {
    std::span<const dmu_response> rest(batch.data() + pos, batch.size() - pos);
    DMU_ASSIGN_OR_RETURN(WriteOutcome outcome, channel_.write_responses(rest));
    counters_.responses += outcome.accepted;
    if (config_.verbose)
      for (size_t i = pos; i < pos + outcome.accepted; ++i)
        event("response", proto::describe(batch[i]));
    pos += outcome.accepted;
    if (!outcome.complete()) {
      ++counters_.rejected;
      event("rejected", "errno=" + std::to_string(outcome.error) + " msg=\"" +
                            proto::describe(batch[pos]) + "\"");
      ++pos;  // skip the refused message, deliver the rest
    }
  }
  batch.clear();
  return {};
}

Result<void> Daemon::send_hostile(const dmu_request& q) {
  const uint64_t seq = counters_.hostile_sent++;
  HostileAnswer a = responder_.hostile_answer(q, seq);
  const long got = channel_.write_raw(a.bytes);
  const bool as_promised = got == a.expected_return;
  // COMPLETE(id, -EIO) afterwards: accepted only while the request is still
  // pending, so its fate shows whether the kernel failed the request itself.
  const dmu_response follow = proto::complete(q.id, -EIO);
  DMU_ASSIGN_OR_RETURN(WriteOutcome fo, channel_.write_responses({&follow, 1}));
  const bool accepted = fo.complete();
  const bool follow_ok =
      a.followup == FollowUp::Either || (a.followup == FollowUp::Accepted) == accepted;
  if (as_promised && follow_ok)
    ++counters_.hostile_as_promised;
  else
    ++counters_.hostile_broken;
  if (accepted) ++counters_.responses;
  event("hostile",
        "kind=" + std::string(hostile_name(config_.hostile)) + " id=" + std::to_string(q.id) +
            " block=" + std::to_string(q.block) + " bytes=" + std::to_string(a.bytes.size()) +
            " expected=" + std::to_string(a.expected_return) + " got=" + std::to_string(got) +
            " followup=" + (accepted ? "accepted" : "rejected") + " followup_expected=" +
            followup_name(a.followup) + " ok=" + ((as_promised && follow_ok) ? "1" : "0"));
  return {};
}

void Daemon::count_map(const dmu_request& q) {
  ++counters_.maps;
  if (q.flags & DMU_MAP_DISCARD)
    ++counters_.map_discards;
  else if (q.flags & DMU_MAP_WRITE)
    ++counters_.map_writes;
  else
    ++counters_.map_reads;
}

void Daemon::handle(const dmu_request& q, std::vector<dmu_response>& out) {
  if (config_.verbose) event("request", proto::describe(q));
  if (std::string problem = proto::request_problem(q); !problem.empty()) {
    ++counters_.bad_requests;
    event("bad_request", "problem=\"" + problem + "\"");
  }
  switch (q.type) {
    case DMU_REQ_MAP: {
      count_map(q);
      auto answer = responder_.answer_map(q);
      out.insert(out.end(), answer.begin(), answer.end());
      break;
    }
    case DMU_REQ_COMMIT:
      ++counters_.commits;
      if (marker_) marker_("commit-recv-" + std::to_string(q.id));
      if (config_.commit_delay_ms == 0) {
        if (marker_) marker_("committed-" + std::to_string(q.id));
        out.push_back(proto::committed(q.id, 0));
        event("commit", "id=" + std::to_string(q.id) + " delay_ms=0");
      } else {
        pending_commits_.emplace_back(clock_() + milliseconds(config_.commit_delay_ms), q.id);
      }
      break;
    case DMU_REQ_DONE:
      ++counters_.dones;
      if (q.status != 0) ++counters_.done_errors;
      event("done", "id=" +
                        (proto::is_push_id(q.id) ? "push:" + std::to_string(q.id & ~DMU_PUSH_ID)
                                                 : std::to_string(q.id)) +
                        " status=" + std::to_string(q.status));
      break;
    default:
      break;  // counted as a bad request above; nothing to answer
  }
}

Result<void> Daemon::answer_due_commits() {
  std::vector<dmu_response> out;
  const auto now = clock_();
  while (!pending_commits_.empty() && pending_commits_.front().first <= now) {
    const uint64_t id = pending_commits_.front().second;
    pending_commits_.pop_front();
    if (marker_) marker_("committed-" + std::to_string(id));
    out.push_back(proto::committed(id, 0));
    event("commit",
          "id=" + std::to_string(id) + " delay_ms=" + std::to_string(config_.commit_delay_ms));
  }
  return send(out);
}

Result<void> Daemon::step(milliseconds max_wait) {
  if (hung_) return {};
  DMU_TRY(answer_due_commits());
  milliseconds wait = max_wait;
  if (!pending_commits_.empty()) {
    auto until = duration_cast<milliseconds>(pending_commits_.front().first - clock_());
    wait = std::clamp(until + milliseconds(1), milliseconds(0), max_wait);
  }
  DMU_ASSIGN_OR_RETURN(size_t n, channel_.read_requests(inbox_, wait));
  counters_.requests += n;
  if (config_.hang_after_requests && counters_.requests >= config_.hang_after_requests && n) {
    hung_ = true;
    event("hang",
          "unanswered=" + std::to_string(n) + " requests=" + std::to_string(counters_.requests));
    return {};
  }
  std::vector<dmu_response> out;
  for (size_t i = 0; i < n; ++i) {
    const dmu_request& q = inbox_[i];
    if (responder_.hostile_for(q)) {
      if (config_.verbose) event("request", proto::describe(q));
      count_map(q);
      DMU_TRY(send(out));  // keep the answers before it in order
      DMU_TRY(send_hostile(q));
      continue;
    }
    handle(q, out);
  }
  DMU_TRY(send(out));
  return answer_due_commits();
}

}  // namespace dmu::testd
