// Daemon implementation; see daemon.h.
#include "tests/kmod/daemon.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <thread>

namespace dmu::testd {
namespace {

using namespace std::chrono;

std::string fates_text(const std::vector<RequestFate>& fates) {
  std::string s;
  for (const RequestFate& f : fates) {
    if (!s.empty()) s += ',';
    s +=
        std::to_string(f.id) + ':' + std::to_string(f.block) + ':' + std::string(fate_name(f.fate));
  }
  return s;
}

std::span<const uint8_t> as_bytes(const std::vector<dmu_response>& msgs) {
  return {reinterpret_cast<const uint8_t*>(msgs.data()), msgs.size() * sizeof(dmu_response)};
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
  add("commit_errors", c.commit_errors);
  add("bad_requests", c.bad_requests);
  add("responses", c.responses);
  add("rejected", c.rejected);
  add("pushed_extents", c.pushed_extents);
  add("hostile_sent", c.hostile_sent);
  add("hostile_as_promised", c.hostile_as_promised);
  add("hostile_broken", c.hostile_broken);
  add("deferred", c.deferred);
  add("adopted", c.adopted);
  add("resent", c.resent);
  return s;
}

Daemon::Daemon(const DaemonConfig& config, const mapper::BindInfo& bind, Responder responder,
               DaemonChannel& channel, std::ostream& log, Clock clock, Model* model)
    : config_(config),
      bind_(bind),
      responder_(std::move(responder)),
      channel_(channel),
      log_(log),
      clock_(std::move(clock)),
      inbox_(std::max<size_t>(config.batch, 1)),
      model_(model) {
  counters_.resent = bind.resent;
}

Result<void> Daemon::adopt() {
  if (!model_) return {};
  DMU_ASSIGN_OR_RETURN(auto records, channel_.list_allocations());
  uint64_t discards = 0, done = 0;
  for (const dmu_allocation& r : records) {
    if (config_.verbose) event("record", proto::describe(r));
    discards += (r.flags & DMU_ALLOC_DISCARD) != 0;
    done += (r.flags & DMU_ALLOC_DONE) != 0;
  }
  DMU_ASSIGN_OR_RETURN(size_t n, model_->adopt(records));
  counters_.adopted = n;
  event("adopted", "records=" + std::to_string(n) + " discards=" + std::to_string(discards) +
                       " done=" + std::to_string(done) +
                       " bind_allocations=" + std::to_string(bind_.allocations) +
                       " pending_allocations=" + std::to_string(model_->pending_allocations()) +
                       " pending_discards=" + std::to_string(model_->pending_discards()) +
                       " mapped=" + std::to_string(model_->live().size()) +
                       " free=" + std::to_string(model_->free_clusters()) +
                       " superseded=" + std::to_string(model_->stats().adopted_failed));
  return {};
}

void Daemon::final_commit() {
  if (!model_) return;
  const Model::Snapshot s = model_->snapshot();
  auto r = model_->commit(s);
  event("final_commit", "entries=" + std::to_string(s.entries.size()) +
                            " generation=" + std::to_string(model_->stats().generation) +
                            " status=" + std::to_string(r ? 0 : -r.error().code) +
                            (r ? "" : " error=\"" + r.error().message + "\""));
}

void Daemon::report_model() {
  if (!model_) return;
  const ModelStats& m = model_->stats();
  event("model", "clusters=" + std::to_string(m.clusters) +
                     " free=" + std::to_string(model_->free_clusters()) +
                     " draining=" + std::to_string(model_->draining_clusters()) +
                     " mapped=" + std::to_string(model_->live().size()) +
                     " committable=" + std::to_string(model_->committable().size()) +
                     " pending_allocations=" + std::to_string(model_->pending_allocations()) +
                     " pending_discards=" + std::to_string(model_->pending_discards()) +
                     " deferred_waiting=" + std::to_string(deferred_.size()) +
                     " allocated_blocks=" + std::to_string(m.allocated_blocks) +
                     " enospc=" + std::to_string(m.enospc) +
                     " discarded_blocks=" + std::to_string(m.discarded_blocks) +
                     " freed_clusters=" + std::to_string(m.freed_clusters) +
                     " done_allocations=" + std::to_string(m.done_allocations) +
                     " done_failed=" + std::to_string(m.done_failed) +
                     " done_discards=" + std::to_string(m.done_discards) +
                     " done_ignored=" + std::to_string(m.done_ignored) +
                     " done_duplicate=" + std::to_string(m.done_duplicate) + " done_mismatch=" +
                     std::to_string(m.done_mismatch) + " commits=" + std::to_string(m.commits) +
                     " commit_errors=" + std::to_string(m.commit_errors) +
                     " generation=" + std::to_string(m.generation) +
                     " slot=" + std::to_string(model_->newest_slot()));
}

// A mode without metadata: COMMITTED 0, or the configured failure.
dmu_response Daemon::plain_commit(uint64_t id) {
  std::error_code ec;
  const bool fail =
      config_.commit_errno && (config_.commit_errno_while.empty() ||
                               std::filesystem::exists(config_.commit_errno_while, ec));
  const int status = fail ? -config_.commit_errno : 0;
  if (status == 0 && marker_) marker_("committed-" + std::to_string(id));
  if (status != 0) ++counters_.commit_errors;
  event("commit", "id=" + std::to_string(id) +
                      " delay_ms=" + std::to_string(config_.commit_delay_ms) +
                      " status=" + std::to_string(status));
  return proto::committed(id, status);
}

dmu_response Daemon::model_commit(uint64_t id, const Model::Snapshot& s, uint32_t delay_ms) {
  auto r = model_->commit(s);
  const int32_t status = r ? 0 : -(r.error().code > 0 ? r.error().code : EIO);
  if (marker_) marker_("committed-" + std::to_string(id));
  event("commit", "id=" + std::to_string(id) + " delay_ms=" + std::to_string(delay_ms) +
                      " entries=" + std::to_string(s.entries.size()) +
                      " generation=" + std::to_string(model_->stats().generation) + " slot=" +
                      std::to_string(model_->newest_slot()) + " status=" + std::to_string(status) +
                      (r ? "" : " error=\"" + r.error().message + "\""));
  return proto::committed(id, status);
}

void Daemon::retry_deferred(std::vector<dmu_response>& out) {
  for (size_t i = deferred_.size(); i > 0; --i) {
    const dmu_request q = deferred_.front();
    deferred_.pop_front();
    auto answer = model_->answer_map(q);
    if (!answer) {
      deferred_.push_back(q);  // keeps the order of those still waiting
      continue;
    }
    if (config_.verbose) event("undeferred", proto::describe(q));
    out.insert(out.end(), answer->begin(), answer->end());
  }
}

void Daemon::event(const std::string& name, const std::string& fields) {
  // One write per line: the cases poll the log while it is written, and
  // std::cerr would write each piece on its own.
  std::string line = "dmu-test-daemon: event=" + name;
  if (!fields.empty()) line += ' ' + fields;
  line += '\n';
  log_ << line << std::flush;
}

void Daemon::report_counters() {
  event("counters", format_counters(counters_));
  report_model();
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
    DMU_ASSIGN_OR_RETURN(mapper::WriteOutcome outcome, channel_.write_responses(rest));
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

Result<void> Daemon::send_hostile(std::span<const dmu_request> qs) {
  const uint64_t seq = counters_.hostile_sent++;
  HostileAnswer a = responder_.hostile_answer(qs, seq);
  // No COMPLETE follows: the answer alone decides each request's fate,
  // which the VM case checks on the I/O (fails at once, waits for the
  // timeout, or succeeds).
  const long got = channel_.write_raw(a.bytes);
  bool ok = got == a.expected_return;
  std::string cleanup;
  if (config_.die_open && !a.cleanup.empty()) {
    // The open answers stay open: the kernel must give their room back
    // when this daemon is gone, or the next one's answers find none.
    killed_ = true;
    a.cleanup.clear();
    cleanup = " died_open=1";
  }
  if (!a.cleanup.empty()) {
    const long want = static_cast<long>(a.cleanup.size() * sizeof(dmu_response));
    const long cgot = channel_.write_raw(as_bytes(a.cleanup));
    ok = ok && cgot == want;
    if (cgot > 0) counters_.responses += static_cast<uint64_t>(cgot) / sizeof(dmu_response);
    cleanup = " cleanup_expected=" + std::to_string(want) + " cleanup_got=" + std::to_string(cgot);
  }
  if (!a.after_gate.empty()) {
    event("gate_wait", "file=" + config_.gate_file);
    const long ggot = wait_for_gate() ? channel_.write_raw(as_bytes(a.after_gate)) : 0;
    ok = ok && ggot == a.after_gate_expected;
    cleanup += " gate_expected=" + std::to_string(a.after_gate_expected) +
               " gate_got=" + std::to_string(ggot);
  }
  awaited_dones_.insert(a.awaited_dones.begin(), a.awaited_dones.end());
  if (ok)
    ++counters_.hostile_as_promised;
  else
    ++counters_.hostile_broken;
  const dmu_request& q = qs.back();
  event("hostile",
        "kind=" + std::string(hostile_name(config_.hostile)) + " id=" + std::to_string(q.id) +
            " block=" + std::to_string(q.block) + " bytes=" + std::to_string(a.bytes.size()) +
            " expected=" + std::to_string(a.expected_return) + " got=" + std::to_string(got) +
            cleanup + " fates=" + fates_text(a.fates) +
            " awaited_dones=" + std::to_string(a.awaited_dones.size()) + " ok=" + (ok ? "1" : "0"));
  return {};
}

bool Daemon::wait_for_gate() const {
  // The case reloads the table meanwhile: nothing is owed to the kernel
  // (the request is answered, the push has no I/O), so block.
  for (int i = 0; i < kGateWaitMs / 20; ++i) {
    if (std::filesystem::exists(config_.gate_file)) return true;
    std::this_thread::sleep_for(milliseconds(20));
  }
  return false;
}

Result<void> Daemon::release_held() {
  const size_t n = responder_.hostile_requests();
  while (held_.size() >= n && awaited_dones_.empty()) {
    std::vector<dmu_request> qs(held_.begin(), held_.begin() + static_cast<std::ptrdiff_t>(n));
    held_.erase(held_.begin(), held_.begin() + static_cast<std::ptrdiff_t>(n));
    DMU_TRY(send_hostile(qs));
  }
  return {};
}

Result<void> Daemon::flood(uint64_t max_batches) {
  const auto start = clock_();
  const auto end = start + milliseconds(config_.flood_ms);
  uint64_t batches = 0, extents = 0, short_writes = 0;
  while (batches < max_batches && clock_() < end) {
    const auto batch = responder_.flood_batch(batches);
    const long want = static_cast<long>(batch.size() * sizeof(dmu_response));
    const long got = channel_.write_raw(as_bytes(batch));
    ++batches;
    if (got == want) {
      extents += batch.size();
    } else {
      ++short_writes;
      event("flood_refused", "batch=" + std::to_string(batches - 1) + " expected=" +
                                 std::to_string(want) + " got=" + std::to_string(got));
    }
    DMU_TRY(step(milliseconds(0)));  // the guest's I/O goes on meanwhile
  }
  counters_.pushed_extents += extents;
  event("flood", "batches=" + std::to_string(batches) + " extents=" + std::to_string(extents) +
                     " refused=" + std::to_string(short_writes) + " ms=" +
                     std::to_string(duration_cast<milliseconds>(clock_() - start).count()));
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
      if (model_) {
        auto answer = model_->answer_map(q);
        if (!answer) {
          ++counters_.deferred;
          deferred_.push_back(q);
          if (config_.verbose) event("deferred", proto::describe(q));
          break;
        }
        out.insert(out.end(), answer->begin(), answer->end());
        break;
      }
      const bool gated = config_.mode == Mode::Error || config_.mode == Mode::Identity;
      if (gated && !config_.gate_file.empty() && config_.blocks.overlaps(q.block, q.nr_blocks)) {
        // The kernel parks what arrives for these blocks meanwhile on
        // this request (a read joining a write's MAP).
        event("gate_wait", "file=" + config_.gate_file + " " + proto::describe(q));
        if (!wait_for_gate()) event("gate_timeout", "file=" + config_.gate_file);
      }
      auto answer = responder_.answer_map(q);
      out.insert(out.end(), answer.begin(), answer.end());
      break;
    }
    case DMU_REQ_COMMIT:
      ++counters_.commits;
      if (marker_) marker_("commit-recv-" + std::to_string(q.id));
      if (model_) {
        // The map of every DONE read before this COMMIT, and nothing later.
        Model::Snapshot snap = model_->snapshot();
        if (config_.commit_delay_ms == 0) {
          out.push_back(model_commit(q.id, snap, 0));
        } else {
          snapshots_[q.id] = std::move(snap);
          pending_commits_.emplace_back(clock_() + milliseconds(config_.commit_delay_ms), q.id);
        }
        break;
      }
      if (config_.commit_delay_ms == 0) {
        out.push_back(plain_commit(q.id));
      } else {
        pending_commits_.emplace_back(clock_() + milliseconds(config_.commit_delay_ms), q.id);
      }
      break;
    case DMU_REQ_DONE:
      ++counters_.dones;
      if (q.status != 0) ++counters_.done_errors;
      awaited_dones_.erase(q.id);
      {
        std::string what;
        if (model_) what = std::string(" what=") + done_kind_name(model_->done(q, out));
        event("done", "id=" +
                          (proto::is_push_id(q.id) ? "push:" + std::to_string(q.id & ~DMU_PUSH_ID)
                                                   : std::to_string(q.id)) +
                          " status=" + std::to_string(q.status) + what);
        if (model_) retry_deferred(out);
        break;
      }
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
    if (model_) {
      auto snap = snapshots_.extract(id);
      out.push_back(model_commit(id, snap.mapped(), config_.commit_delay_ms));
      continue;
    }
    out.push_back(plain_commit(id));
  }
  return send(out);
}

Result<void> Daemon::step(milliseconds max_wait) {
  if (hung_ || killed_) return {};
  DMU_TRY(answer_due_commits());
  milliseconds wait = max_wait;
  if (!pending_commits_.empty()) {
    auto until = duration_cast<milliseconds>(pending_commits_.front().first - clock_());
    wait = std::clamp(until + milliseconds(1), milliseconds(0), max_wait);
  }
  DMU_ASSIGN_OR_RETURN(size_t n, channel_.read_requests(inbox_, wait));
  counters_.requests += n;
  // Only MAP requests count towards the hang: a batch of DONEs handed back
  // after a restart must not make the daemon hang with no request read but
  // unanswered, which is what restart tests need to see resent.
  const auto maps_read = static_cast<uint64_t>(
      std::count_if(inbox_.begin(), inbox_.begin() + static_cast<std::ptrdiff_t>(n),
                    [](const dmu_request& q) { return q.type == DMU_REQ_MAP; }));
  if (config_.hang_after_requests && maps_read &&
      counters_.maps + maps_read >= config_.hang_after_requests) {
    hung_ = true;
    event("hang", "unanswered=" + std::to_string(maps_read) +
                      " requests=" + std::to_string(counters_.maps + maps_read));
    return {};
  }
  std::vector<dmu_response> out;
  for (size_t i = 0; i < n; ++i) {
    const dmu_request& q = inbox_[i];
    if (responder_.hostile_for(q)) {
      if (config_.verbose) event("request", proto::describe(q));
      count_map(q);
      held_.push_back(q);
    } else {
      handle(q, out);
    }
    if (!held_.empty()) {
      DMU_TRY(send(out));  // keep the answers before it in order
      DMU_TRY(release_held());
    }
    if (config_.kill_after_requests && ++handled_ >= config_.kill_after_requests) {
      killed_ = true;
      event("kill",
            "handled=" + std::to_string(handled_) + " unsent=" + std::to_string(out.size()) +
                " unhandled=" + std::to_string(n - i - 1) + " last=\"" + proto::describe(q) + "\"");
      return {};
    }
  }
  DMU_TRY(send(out));
  return answer_due_commits();
}

}  // namespace dmu::testd
