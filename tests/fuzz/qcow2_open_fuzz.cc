// libFuzzer target: a qcow2 image from hostile bytes.  Opens it read-only
// from a MemEnv, walks map() over the whole virtual disk (decoding
// compressed clusters on the way) and runs check(); none of it may crash,
// hang or allocate without bound.
//
// Seed corpus (tests/fuzz/corpus/qcow2_open_fuzz/): small images made with
// qemu-img create / qemu-io / qemu-img convert -c / snapshot / bitmap in
// 512-byte to 16 KiB clusters: v2, v3, extended L2, refcount widths 1..64,
// lazy refcounts, zlib and zstd compression, a snapshot, a bitmap, a
// backing file name and an external data file name.
#include <cstdint>
#include <vector>

#include "fileio/mem_env.h"
#include "formats/qcow2/qcow2_image.h"

using namespace dmu;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > (4u << 20)) return 0;
  MemEnv env;
  env.set_contents("fuzz.qcow2", std::vector<uint8_t>(data, data + size));
  (void)formats::qcow2::probe({data, size}, "fuzz.qcow2");
  formats::qcow2::OpenOptions options;
  options.l2_cache_bytes = 1 << 20;
  options.refcount_cache_bytes = 1 << 20;
  auto im = formats::qcow2::open(env, "fuzz.qcow2", formats::Access::ReadOnly, options);
  if (!im) return 0;
  formats::Image& image = **im;
  const uint64_t vsize = image.info().virtual_size;
  std::vector<uint8_t> buf(4096);
  uint64_t pos = 0;
  for (int i = 0; i < 20000 && pos < vsize; ++i) {
    auto m = image.map(pos, vsize - pos);
    if (!m) {
      pos += image.info().granularity - pos % image.info().granularity;  // skip a bad unit
      continue;
    }
    if (m->length == 0 || m->length > vsize - pos) __builtin_trap();  // contract broken
    if (m->kind == formats::MapKind::Compressed) {
      uint64_t n = std::min<uint64_t>(m->length, buf.size());
      (void)image.read_compressed(pos, {buf.data(), n});
    }
    pos += m->length;
  }
  (void)image.check(formats::Repair::None);
  return 0;
}
