// dmu-log-writes-replay: writes the entries of a dm-log-writes log onto a
// target up to a mark, so a VM case can look at the logged device as a crash
// right at that mark would have left it (tests/vm/cases/attach-crash.sh).
//   dmu-log-writes-replay --log LOG --target DEV [--to-mark TEXT]
//                         [--from-entry N [--from-offset BYTES]]
// On success it prints one line, `next-entry=N next-offset=BYTES`: passed
// back as --from-entry/--from-offset, the next replay goes on after the mark
// without reading the log again from its start.
#include <boost/program_options.hpp>
#include <iostream>

#include "tests/kmod/log_writes.h"

namespace po = boost::program_options;
using namespace dmu::testd;

int main(int argc, char** argv) {
  log_writes::ReplayOptions o;
  uint64_t from_offset = 0;
  po::options_description opts(
      "dmu-log-writes-replay --log LOG --target DEV [options]\n"
      "Writes the log's entries, in order, to DEV (discards as zeros) up to a mark");
  // clang-format off
  opts.add_options()
      ("help,h", "this help")
      ("log", po::value(&o.log_path)->required(), "the dm-log-writes log (device or file)")
      ("target", po::value(&o.target)->required(),
       "the device (or file) to write, at least as large as the logged device")
      ("to-mark", po::value(&o.to_mark), "stop at this mark (default: replay to the end)")
      ("from-entry", po::value(&o.from_entry)->default_value(0),
       "skip the entries before this one (a previous replay's next-entry)")
      ("from-offset", po::value(&from_offset),
       "the log offset of --from-entry's header (a previous replay's next-offset)");
  // clang-format on
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(argc, argv).options(opts).run(), vm);
    if (vm.count("help")) {
      std::cout << opts << "\n";
      return 0;
    }
    po::notify(vm);
  } catch (const po::error& e) {
    std::cerr << "dmu-log-writes-replay: " << e.what() << "\n";
    return 2;
  }
  if (vm.count("from-offset")) o.from_offset = from_offset;
  auto r = log_writes::replay(o);
  if (!r) {
    std::cerr << "dmu-log-writes-replay: " << r.error().message << "\n";
    return 1;
  }
  std::cerr << "dmu-log-writes-replay: " << o.log_path << " -> " << o.target << ": entries "
            << o.from_entry << ".." << r->next_entry << ", writes=" << r->writes
            << " discards=" << r->discards << " bytes=" << r->bytes;
  if (r->stopped_at_mark)
    std::cerr << ", stopped at mark " << o.to_mark << " (entry " << r->mark_entry << ")";
  std::cerr << "\n";
  std::cout << "next-entry=" << r->next_entry << " next-offset=" << r->next_offset << "\n";
  return 0;
}
