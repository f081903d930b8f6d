// dmu-test-daemon: binds to a dm-userspace target by key and serves it in one
// test mode (identity, zero, copy, error, hostile, model), printing events and
// counters to stderr as `dmu-test-daemon: event=<name> key=value ...` lines.
// SIGTERM/SIGINT end it cleanly (counters printed; model mode commits its
// map first); SIGUSR1 prints counters and the kernel's extent list summary.
// --kill-after-requests N makes it die by SIGKILL right after handling the
// N-th request.  Not installed: the VM cases use it.
#include <signal.h>

#include <boost/program_options.hpp>
#include <chrono>
#include <csignal>
#include <iostream>
#include <string>
#include <thread>

#include "mapper/control_channel.h"
#include "mapper/dm_device.h"
#include "tests/kmod/daemon.h"
#include "tests/kmod/model.h"
#include "tests/kmod/model_device.h"

namespace po = boost::program_options;
using namespace dmu;
using namespace dmu::testd;

namespace {

volatile std::sig_atomic_t g_stop = 0;
volatile std::sig_atomic_t g_report = 0;

void on_signal(int sig) {
  if (sig == SIGUSR1)
    g_report = 1;
  else
    g_stop = 1;
}

void install_signals() {
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: poll() returns EINTR and the loop notices
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGUSR1, &sa, nullptr);
}

std::string hostile_kinds() {
  std::string s;
  for (auto k : kAllHostileKinds) s += (s.empty() ? "" : ", ") + std::string(hostile_name(k));
  return s;
}

// Parses the command line; returns 0 to go on, else the exit code.
int parse(int argc, char** argv, DaemonConfig& c, unsigned& bind_wait_ms,
          std::string& mark_device) {
  std::string mode = "identity", hostile, blocks;
  po::options_description opts(
      "dmu-test-daemon --key KEY [--mode MODE] [options]\n"
      "Serves one dm-userspace target in a test mode; events go to stderr");
  // clang-format off
  opts.add_options()
      ("help,h", "this help")
      ("key", po::value(&c.key)->required(), "the key in the target's table line")
      ("control", po::value(&c.control_path)->default_value(c.control_path), "control device")
      ("mode", po::value(&mode)->default_value(mode),
       "identity | zero | copy | error | hostile | model")
      ("writable-reads", po::bool_switch(&c.writable_reads),
       "identity/zero: answer reads with writable extents")
      ("extent-blocks", po::value(&c.extent_blocks)->default_value(c.extent_blocks),
       "answer reads with extents of at least N blocks (read-ahead)")
      ("push-all", po::bool_switch(&c.push_all),
       "identity: push the whole target at start, then check LIST_EXTENTS")
      ("push-extent-blocks", po::value(&c.push_extent_blocks)->default_value(c.push_extent_blocks),
       "blocks per pushed extent")
      ("commit-delay-ms", po::value(&c.commit_delay_ms)->default_value(0),
       "wait N ms before answering COMMIT")
      ("commit-errno", po::value(&c.commit_errno)->default_value(0),
       "answer every COMMIT with this errno (positive; not in model mode)")
      ("commit-errno-while", po::value(&c.commit_errno_while),
       "fail COMMITs (--commit-errno) only while this file exists")
      ("blocks", po::value(&blocks), "error/hostile/identity: START:COUNT blocks the mode (or --gate) applies to")
      ("errno", po::value(&c.error_errno)->default_value(c.error_errno),
       "error mode: the errno (positive) requests fail with")
      ("error-writes-only", po::bool_switch(&c.error_writes_only),
       "error mode: only write MAPs in --blocks fail; reads there are answered")
      ("hostile", po::value(&hostile), ("hostile mode: the kind of bad answer: " +
                                        hostile_kinds()).c_str())
      ("flood-ms", po::value(&c.flood_ms)->default_value(c.flood_ms),
       "hostile push-flood: push for N ms after start, then serve as identity")
      ("gate", po::value(&c.gate_file),
       "hostile push-across-reload: send the push's FINAL once this file exists; "
       "error/identity: answer MAPs touching --blocks only once it exists")
      ("die-open", po::bool_switch(&c.die_open),
       "hostile open-msgs-limit: die by SIGKILL instead of sending the open answers' FINALs")
      ("copy-half", po::bool_switch(&c.copy_half),
       "copy mode: COPY only the first half of each block (the kernel zeroes the rest)")
      ("features", po::value(&c.features)->default_value(c.features), "feature bits to ask for")
      ("batch", po::value(&c.batch)->default_value(c.batch), "requests per read()")
      ("mark-device", po::value(&mark_device),
       "dm-log-writes device to mark commit-recv-<id> / committed-<id> in")
      ("hang-after-requests", po::value(&c.hang_after_requests)->default_value(0),
       "answer MAP requests until the N-th is read, then answer nothing more (kill -9 restart tests)")
      ("kill-after-requests", po::value(&c.kill_after_requests)->default_value(0),
       "handle N requests, then die by SIGKILL before answering that batch (restart tests)")
      ("model-device", po::value(&c.model_device),
       "model mode: device 0 of the table (block device or file), opened O_DIRECT")
      ("bind-wait-ms", po::value(&bind_wait_ms)->default_value(0),
       "retry BIND for up to N ms (target not created yet, old daemon still closing)")
      ("verbose,v", po::bool_switch(&c.verbose), "log every request and response");
  // clang-format on
  po::variables_map vm;
  try {
    po::store(po::parse_command_line(argc, argv, opts), vm);
    if (vm.count("help")) {
      std::cout << opts << "\n";
      return -1;
    }
    po::notify(vm);
  } catch (const po::error& e) {
    std::cerr << "dmu-test-daemon: " << e.what() << "\n";
    return 2;
  }
  auto m = parse_mode(mode);
  if (!m) {
    std::cerr << "dmu-test-daemon: unknown mode '" << mode << "'\n";
    return 2;
  }
  c.mode = *m;
  if (c.die_open && (c.mode != Mode::Hostile || hostile != "open-msgs-limit")) {
    std::cerr << "dmu-test-daemon: --die-open is for --mode hostile --hostile open-msgs-limit\n";
    return 2;
  }
  if (c.error_writes_only && c.mode != Mode::Error) {
    std::cerr << "dmu-test-daemon: --error-writes-only is for --mode error\n";
    return 2;
  }
  if (c.mode == Mode::Hostile) {
    auto k = parse_hostile(hostile);
    if (!k) {
      std::cerr << "dmu-test-daemon: --hostile must be one of: " << hostile_kinds() << "\n";
      return 2;
    }
    c.hostile = *k;
    if (c.hostile == HostileKind::PushAcrossReload && c.gate_file.empty()) {
      std::cerr << "dmu-test-daemon: --hostile push-across-reload needs --gate FILE\n";
      return 2;
    }
  }
  // Error and hostile modes act on --blocks; identity mode may name the
  // blocks --gate holds (read-ahead stops short of them).
  bool needs_blocks = c.mode == Mode::Error || c.mode == Mode::Hostile;
  if (needs_blocks || !blocks.empty()) {
    auto r = parse_block_range(blocks);
    if (!r) {
      std::cerr << "dmu-test-daemon: " << mode << " mode: "
                << (blocks.empty() ? "needs --blocks START:COUNT"
                                   : "--blocks must be START:COUNT, not '" + blocks + "'")
                << "\n";
      return 2;
    }
    if (!needs_blocks && c.mode != Mode::Identity) {
      std::cerr << "dmu-test-daemon: --blocks is for error, hostile and identity modes\n";
      return 2;
    }
    c.blocks = *r;
  }
  if (c.mode == Mode::Model && c.model_device.empty()) {
    std::cerr << "dmu-test-daemon: model mode needs --model-device PATH (the table's device 0)\n";
    return 2;
  }
  if (c.commit_errno < 0 || c.commit_errno > 4095 || (c.commit_errno && c.mode == Mode::Model)) {
    std::cerr << "dmu-test-daemon: --commit-errno must be a positive errno value, "
                 "and model mode commits its own metadata\n";
    return 2;
  }
  if (c.error_errno <= 0 || c.error_errno > 4095) {
    std::cerr << "dmu-test-daemon: --errno must be a positive errno value\n";
    return 2;
  }
  return 0;
}

Result<mapper::BindInfo> bind_with_retry(mapper::ControlChannel& ch, const DaemonConfig& c,
                                         unsigned wait_ms) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(wait_ms);
  for (;;) {
    auto b = ch.bind(c.key, c.features);
    if (b || std::chrono::steady_clock::now() >= deadline || g_stop) return b;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

int run(const DaemonConfig& c, unsigned bind_wait_ms, const std::string& mark_device) {
  auto channel = mapper::ControlChannel::open(c.control_path);
  if (!channel) {
    std::cerr << "dmu-test-daemon: " << channel.error().message << "\n";
    return 1;
  }
  auto bind = bind_with_retry(*channel, c, bind_wait_ms);
  if (!bind) {
    std::cerr << "dmu-test-daemon: " << bind.error().message << "\n";
    return 1;
  }
  auto responder = Responder::create(c, Geometry::from(*bind));
  if (!responder) {
    std::cerr << "dmu-test-daemon: key " << c.key << ": " << responder.error().message << "\n";
    return 1;
  }
  std::cerr << "dmu-test-daemon: event=bind key=" << c.key << " mode=" << mode_name(c.mode)
            << " version=" << bind->version_major << "." << bind->version_minor << "."
            << bind->version_patch << " features=" << bind->features
            << " target_sectors=" << bind->target_sectors
            << " block_sectors=" << bind->block_sectors << " nr_devs=" << bind->nr_devs
            << " resent=" << bind->resent << " redelivered=" << bind->redelivered << " allocations=" << bind->allocations
            << " writable_devs=" << bind->writable_devs << std::endl;

  std::unique_ptr<File> device0;
  std::unique_ptr<Model> model;
  if (c.mode == Mode::Model) {
    auto dev = model::open_direct(c.model_device);
    auto m = dev ? Model::open(**dev, bind->target_sectors, bind->block_sectors)
                 : Result<std::unique_ptr<Model>>(fail(dev.error()));
    if (!m) {
      std::cerr << "dmu-test-daemon: key " << c.key << ": " << m.error().message << "\n";
      return 1;
    }
    device0 = std::move(*dev);
    model = std::move(*m);
    std::cerr << "dmu-test-daemon: event=model_loaded device=" << c.model_device
              << " clusters=" << model->stats().clusters << " mapped=" << model->live().size()
              << " generation=" << model->stats().generation << " slot=" << model->newest_slot()
              << std::endl;
  }

  KernelChannel kernel(*channel);
  Daemon daemon(
      c, *bind, std::move(*responder), kernel, std::cerr,
      [] { return std::chrono::steady_clock::now(); }, model.get());
  if (auto r = daemon.adopt(); !r) {
    std::cerr << "dmu-test-daemon: key " << c.key << ": adopt: " << r.error().message << "\n";
    return 1;
  }
  if (!mark_device.empty()) {
    daemon.set_marker([&mark_device](const std::string& text) {
      if (auto r = mapper::dm_message(mark_device, "mark " + text); !r)
        std::cerr << "dmu-test-daemon: event=mark_failed " << r.error().message << "\n";
    });
  }
  if (c.push_all) {
    if (auto r = daemon.push_all(); !r) {
      std::cerr << "dmu-test-daemon: key " << c.key << ": push: " << r.error().message << "\n";
      return 1;
    }
  }
  std::cerr << "dmu-test-daemon: event=ready pid=" << ::getpid() << std::endl;
  int rc = 0;
  if (c.mode == Mode::Hostile && c.hostile == HostileKind::PushFlood) {
    if (auto r = daemon.flood(); !r) {
      std::cerr << "dmu-test-daemon: key " << c.key << ": flood: " << r.error().message << "\n";
      rc = 1;
    }
  }
  while (!g_stop && rc == 0) {
    if (daemon.hung()) {
      ::pause();  // until a signal; kill -9 is the point
      continue;
    }
    if (auto r = daemon.step(std::chrono::milliseconds(200)); !r) {
      std::cerr << "dmu-test-daemon: key " << c.key << ": " << r.error().message << "\n";
      rc = 1;
      break;
    }
    if (daemon.killed()) {
      std::cerr << std::flush;
      ::raise(SIGKILL);  // a crash at a chosen point: nothing is cleaned up
    }
    if (g_report) {
      g_report = 0;
      daemon.report_counters();
      if (auto r = daemon.report_extents(); !r)
        std::cerr << "dmu-test-daemon: " << r.error().message << "\n";
    }
  }
  if (rc == 0) daemon.final_commit();
  daemon.report_counters();
  std::cerr << "dmu-test-daemon: event=exit rc=" << rc
            << " commits_waiting=" << daemon.commits_waiting() << std::endl;
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  DaemonConfig config;
  unsigned bind_wait_ms = 0;
  std::string mark_device;
  if (int rc = parse(argc, argv, config, bind_wait_ms, mark_device); rc != 0)
    return rc < 0 ? 0 : rc;
  install_signals();
  return run(config, bind_wait_ms, mark_device);
}
