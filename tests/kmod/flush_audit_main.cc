// dmu-flush-audit: proves from a dm-log-writes log that the kernel target
// never acknowledges a flush before the data it covers is durable.
//   dmu-flush-audit write  --device DEV --mark-device LW [...]   stamped writes, fsyncs, marks
//   dmu-flush-audit verify --log LOG --layout identity|model [...]   replay and check the marks
//   dmu-flush-audit check-image --image RAW --journal J [--mark M]   a crash state's virtual disk
// See flush_audit.h; tests/vm/cases/kmod-flush-audit.sh* runs both.
#include <libdevmapper.h>

#include <boost/program_options.hpp>
#include <cstdarg>
#include <cstdio>
#include <iostream>
#include <memory>
#include <mutex>
#include <string>

#include "tests/kmod/flush_audit.h"
#include "tests/kmod/log_writes.h"

namespace po = boost::program_options;
using namespace dmu;
using namespace dmu::testd;

namespace {

constexpr const char* kName = "dmu-flush-audit";

void usage(std::ostream& out) {
  out << "usage: " << kName << " write --device DEV --mark-device LW [options]\n"
      << "       " << kName << " verify --log LOG --layout identity|model [options]\n"
      << "       " << kName << " check-image --image RAW --journal FILE [--mark TEXT]\n"
      << "       " << kName << " write|verify|check-image --help\n";
}

// libdevmapper reports problems through its log; what one message logs
// becomes its error (one line).  Marks are sent one at a time.
std::string g_dm_log;

void capture_dm_log(int level, const char* /*file*/, int /*line*/, int /*dm_errno_or_class*/,
                    const char* f, ...) {
  if ((level & 0xf) > 4) return;  // notices and debug chatter (4: warnings)
  char buf[512];
  va_list ap;
  va_start(ap, f);
  std::vsnprintf(buf, sizeof buf, f, ap);
  va_end(ap);
  g_dm_log += (g_dm_log.empty() ? "" : "; ") + std::string(buf);
}

// `dmsetup message DEVICE 0 mark TEXT`: dm-log-writes queues the mark
// behind everything already logged or waiting to be (log_mark()).
Result<void> dm_mark(const std::string& device, const std::string& text) {
  static std::once_flag once;
  std::call_once(once, [] { dm_log_with_errno_init(capture_dm_log); });
  const std::string what = "dm device " + device + ": message 'mark " + text + "'";
  if (text.size() > log_writes::max_mark_bytes(512) || text.find(' ') != std::string::npos)
    return fail(EINVAL, what + ": dm-log-writes would not keep this mark whole");
  g_dm_log.clear();
  std::unique_ptr<dm_task, void (*)(dm_task*)> t(dm_task_create(DM_DEVICE_TARGET_MSG),
                                                 dm_task_destroy);
  const std::string message = "mark " + text;
  if (!t || !dm_task_set_name(t.get(), device.c_str()) || !dm_task_set_sector(t.get(), 0) ||
      !dm_task_set_message(t.get(), message.c_str()) || !dm_task_run(t.get()))
    return fail(EIO, what + ": " + (g_dm_log.empty() ? "device-mapper failed" : g_dm_log));
  return {};
}

// Parses argv (after the subcommand) into vm; returns -1 to go on, else the exit code.
int parse(const char* what, const po::options_description& opts, int argc, char** argv,
          po::variables_map& vm) {
  try {
    po::store(po::command_line_parser(argc, argv).options(opts).run(), vm);
    if (vm.count("help")) {
      std::cout << opts << "\n";
      return 0;
    }
    po::notify(vm);
  } catch (const po::error& e) {
    std::cerr << kName << " " << what << ": " << e.what() << "\n";
    return 2;
  }
  return -1;
}

int cmd_write(int argc, char** argv) {
  audit::WriterOptions o;
  std::string mark_device, journal;
  uint64_t region_mib = 0;
  po::options_description opts(
      "dmu-flush-audit write --device DEV --mark-device LW --region-mib M [options]\n"
      "Threads write stamped blocks with O_DIRECT, each to its own part of the first M MiB,\n"
      "fdatasync every 1..K writes and then mark the dm-log-writes log synced-<thread>-<seq>");
  // clang-format off
  opts.add_options()
      ("help,h", "this help")
      ("device", po::value(&o.device)->required(), "the device to write (the target)")
      ("mark-device", po::value(&mark_device)->required(),
       "the dm-log-writes device (name or /dev/mapper/NAME) to put the marks in")
      ("threads", po::value(&o.threads)->default_value(o.threads), "writer threads")
      ("region-mib", po::value(&region_mib)->required(),
       "MiB from the start of the device, split evenly between the threads")
      ("seconds", po::value(&o.seconds)->default_value(o.seconds), "how long to write")
      ("fsync-every", po::value(&o.fsync_every)->default_value(o.fsync_every),
       "fdatasync after a random 1..K writes")
      ("block-size", po::value(&o.block_size)->default_value(o.block_size),
       "bytes per write (a multiple of 4096; every 4 KiB carries a stamp)")
      ("journal", po::value(&journal), "write what was written and synced to FILE");
  // clang-format on
  po::variables_map vm;
  if (int rc = parse("write", opts, argc, argv, vm); rc >= 0) return rc;
  o.region_bytes = region_mib << 20;
  if (region_mib == 0 || (o.region_bytes >> 20) != region_mib) {
    std::cerr << kName << ": --region-mib must be a positive number of MiB\n";
    return 2;
  }
  constexpr std::string_view kMapper = "/dev/mapper/";
  if (mark_device.starts_with(kMapper)) mark_device.erase(0, kMapper.size());
  audit::Marker marker = [&mark_device](const std::string& text) {
    return dm_mark(mark_device, text);
  };
  auto res = audit::run_writer(o, marker);
  if (!res) {
    std::cerr << kName << ": " << res.error().message << "\n";
    return res.error().code == EINVAL ? 2 : 1;
  }
  std::cout << kName << ": run=" << hex(res->journal.run) << " threads=" << o.threads
            << " block_size=" << o.block_size << std::endl;
  for (const auto& m : res->error_messages) std::cerr << kName << ": " << m << "\n";
  int rc = res->errors ? 1 : 0;
  if (!journal.empty()) {
    if (auto j = audit::write_journal(journal, res->journal); !j) {
      std::cerr << kName << ": " << j.error().message << "\n";
      rc = 1;
    }
  }
  std::cout << kName << ": writes=" << res->writes << " fsyncs=" << res->fsyncs
            << " errors=" << res->errors << std::endl;
  return rc;
}

int cmd_verify(int argc, char** argv) {
  audit::VerifyOptions o;
  std::string layout;
  size_t max_report = 200;
  po::options_description opts(
      "dmu-flush-audit verify --log LOG --layout identity|model [options]\n"
      "Replays a dm-log-writes log and checks, at every synced-<thread>-<seq> mark, that the\n"
      "thread's writes up to seq are durable; exit 0 only with no failure and a mark checked");
  // clang-format off
  opts.add_options()
      ("help,h", "this help")
      ("log", po::value(&o.log_path)->required(), "the dm-log-writes log (device or file)")
      ("layout", po::value(&layout)->required(),
       "identity: virtual offset = device 0 offset; model: through the model daemon's map")
      ("block-size", po::value(&o.block_size),
       "the writer's --block-size (default: the journal's, else 4096)")
      ("journal", po::value(&o.journal_path),
       "the writer's journal: the writes to expect (default: the stamps found in the log)")
      ("max-report", po::value(&max_report)->default_value(max_report),
       "list at most N failures (all are counted; a write failing the same way at later "
       "marks is listed once)");
  // clang-format on
  po::variables_map vm;
  if (int rc = parse("verify", opts, argc, argv, vm); rc >= 0) return rc;
  o.max_failures = max_report;
  if (layout == "identity") {
    o.layout = audit::Layout::Identity;
  } else if (layout == "model") {
    o.layout = audit::Layout::Model;
  } else {
    std::cerr << kName << ": --layout must be identity or model, not '" << layout << "'\n";
    return 2;
  }
  auto report = audit::verify(o);
  if (!report) {
    std::cerr << kName << ": " << report.error().message << "\n";
    return 1;
  }
  std::cout << kName << ": log " << o.log_path << ": entries=" << report->entries
            << " sectorsize=" << report->sectorsize << " flushes=" << report->flushes
            << " run=" << (report->run_known ? hex(report->run) : std::string("none"));
  if (o.layout == audit::Layout::Model) std::cout << " map_generations=" << report->map_changes;
  std::cout << "\n";
  for (const auto& f : report->failures) std::cout << kName << ": " << f.line() << "\n";
  if (report->failure_count > report->failures.size())
    std::cout << kName << ": (" << report->failure_count - report->failures.size()
              << " more failed checks not listed: the same write again at later marks, or "
                 "past --max-report)\n";
  std::cout << report->summary() << "\n";
  if (report->failure_count == 0 && !report->passed())
    std::cerr << kName << ": " << o.log_path
              << ": no synced-<thread>-<seq> mark with a write to check\n";
  return report->passed() ? 0 : 1;
}

int cmd_check_image(int argc, char** argv) {
  audit::ImageCheckOptions o;
  o.max_failures = 200;
  po::options_description opts(
      "dmu-flush-audit check-image --image RAW --journal FILE [--mark synced-T-S]\n"
      "Checks the virtual disk of an image the writer ran on (read out raw, e.g. by\n"
      "qemu-img convert) as a crash at the mark left it: every write synced before the mark\n"
      "holds its stamp, nothing holds data the writer did not write there; without --mark,\n"
      "every offset holds its last write");
  // clang-format off
  opts.add_options()
      ("help,h", "this help")
      ("image", po::value(&o.image_path)->required(), "the virtual disk, raw (file or device)")
      ("journal", po::value(&o.journal_path)->required(), "the writer's journal")
      ("mark", po::value(&o.mark), "the synced-<thread>-<seq> mark of the crash")
      ("max-report", po::value(&o.max_failures)->default_value(o.max_failures),
       "list at most N failures (all are counted)");
  // clang-format on
  po::variables_map vm;
  if (int rc = parse("check-image", opts, argc, argv, vm); rc >= 0) return rc;
  auto report = audit::check_image(o);
  if (!report) {
    std::cerr << kName << ": " << report.error().message << "\n";
    return 2;
  }
  for (const auto& f : report->failures) std::cout << kName << ": " << f << "\n";
  if (report->failure_count > report->failures.size())
    std::cout << kName << ": (" << report->failure_count - report->failures.size()
              << " more failed checks not listed)\n";
  std::cout << report->summary() << "\n";
  return report->passed() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    usage(std::cerr);
    return 2;
  }
  const std::string cmd = argv[1];
  if (cmd == "--help" || cmd == "-h") {
    usage(std::cout);
    return 0;
  }
  if (cmd == "write") return cmd_write(argc - 1, argv + 1);
  if (cmd == "verify") return cmd_verify(argc - 1, argv + 1);
  if (cmd == "check-image") return cmd_check_image(argc - 1, argv + 1);
  std::cerr << kName << ": unknown subcommand '" << cmd << "'\n";
  usage(std::cerr);
  return 2;
}
