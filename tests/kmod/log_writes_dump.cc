// dmu-log-writes-dump: prints the entries of a dm-log-writes log device, one
// line each, in log order, so a VM case can check the order in which writes,
// flushes and marks reached the device:
//   <index> flags=<WRITE|FLUSH|FUA|DISCARD|MARK|META,...> sector=<s> sectors=<n> [mark=<text>]
// sector/sectors are in 512-byte units of the logged device.  The format and
// its reader are in log_writes.h (shared with dmu-flush-audit).
#include <cstdio>
#include <cstring>

#include "tests/kmod/log_writes.h"

using namespace dmu::testd;

int main(int argc, char** argv) {
  if (argc != 2 || std::strcmp(argv[1], "--help") == 0) {
    std::fprintf(stderr, "usage: dmu-log-writes-dump LOGDEV\n");
    return argc == 2 ? 0 : 2;
  }
  auto reader = log_writes::Reader::open(argv[1]);
  if (!reader) {
    std::fprintf(stderr, "dmu-log-writes-dump: %s\n", reader.error().message.c_str());
    return 1;
  }
  std::printf("# entries=%llu sectorsize=%u\n",
              static_cast<unsigned long long>(reader->nr_entries()), reader->sectorsize());
  for (;;) {
    auto e = reader->next();
    if (!e) {
      std::fflush(stdout);
      std::fprintf(stderr, "dmu-log-writes-dump: %s\n", e.error().message.c_str());
      return 1;
    }
    if (!*e) break;
    const auto& entry = **e;
    std::printf("%llu flags=%s sector=%llu sectors=%llu",
                static_cast<unsigned long long>(entry.index),
                log_writes::flag_names(entry.flags).c_str(),
                static_cast<unsigned long long>(entry.offset / 512),
                static_cast<unsigned long long>(entry.length / 512));
    if (entry.is_mark()) std::printf(" mark=%s", entry.mark.c_str());
    std::printf("\n");
  }
  return 0;
}
