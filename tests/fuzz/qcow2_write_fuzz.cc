// libFuzzer target: the write path on hostile qcow2 metadata.  Opens the
// bytes read-write from a MemEnv (a dirty image is repaired on open), then
// runs a fixed sequence of prepare_write / write_done / write_zeroes /
// discard / commit / check(Repair::All), steered by the last input bytes.
// None of it may crash or hang; after a successful repair and commit the
// image must check clean.
//
// Seed corpus: tests/fuzz/corpus/qcow2_write_fuzz/ (the same images as
// qcow2_open_fuzz).
#include <cstdint>
#include <vector>

#include "fileio/mem_env.h"
#include "formats/qcow2/qcow2_image.h"

using namespace dmu;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 8 || size > (1u << 20)) return 0;
  MemEnv env;
  env.set_contents("fuzz.qcow2", std::vector<uint8_t>(data, data + size));
  formats::qcow2::OpenOptions options;
  options.l2_cache_bytes = 256 << 10;
  options.refcount_cache_bytes = 256 << 10;
  options.max_allocation_bytes = 1 << 20;
  auto im = formats::qcow2::open(env, "fuzz.qcow2", formats::Access::ReadWrite, options);
  if (!im) return 0;
  formats::Image& image = **im;
  const uint64_t vsize = image.info().virtual_size;
  if (!vsize) return 0;
  uint64_t steer = 0;
  for (int i = 0; i < 8; ++i) steer = steer << 8 | data[size - 1 - i];
  std::vector<uint8_t> fill(64 << 10, 0x5a);
  for (int op = 0; op < 6; ++op, steer = steer * 6364136223846793005ull + 1442695040888963407ull) {
    uint64_t off = (steer >> 16) % vsize;
    uint64_t len = 1 + (steer >> 40) % 65536;
    len = std::min(len, vsize - off);
    switch (op % 3) {
      case 0: {
        auto t = image.prepare_write(off, len);
        if (!t) break;
        if (t->length > fill.size()) fill.resize(t->length, 0x5a);
        bool ok =
            bool(image.data_files().at(t->file)->write(t->host_offset, {fill.data(), t->length}));
        (void)image.write_done(t->token, ok && (steer & 1));
        break;
      }
      case 1: {
        uint64_t g = image.info().granularity;
        (void)image.write_zeroes(off / g * g, std::min(len, vsize - off / g * g), steer & 2);
        break;
      }
      case 2:
        (void)image.discard(off, len);
        break;
    }
  }
  (void)image.commit();
  auto repaired = image.check(formats::Repair::All);
  if (repaired && repaired->corruptions == 0 && repaired->check_errors == 0 && image.commit()) {
    auto again = image.check(formats::Repair::None);
    if (again && again->corruptions) __builtin_trap();  // a "repaired" image that is not
  }
  return 0;
}
