// Fuzzes the vmdk descriptor tokenizer, and opening a descriptor file whose
// extents may name a small sparse extent and a flat file that exist.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "fileio/mem_env.h"
#include "formats/image.h"
#include "formats/vmdk/descriptor.h"
#include "tests/fuzz/fuzz_walk.h"

namespace {

// A 64-sector sparse extent with 8-sector grains, and 32 KiB of flat data.
std::vector<uint8_t> small_sparse() {
  std::vector<uint8_t> f(16 * 512, 0);
  auto le32 = [&](size_t at, uint32_t v) {
    for (int i = 0; i < 4; ++i) f[at + i] = uint8_t(v >> (8 * i));
  };
  auto le64 = [&](size_t at, uint64_t v) {
    for (int i = 0; i < 8; ++i) f[at + i] = uint8_t(v >> (8 * i));
  };
  le32(0, 0x564d444b);
  le32(4, 1);
  le32(8, 3);
  le64(12, 64);  // capacity
  le64(20, 8);   // grain
  le64(28, 1);
  le64(36, 2);
  le32(44, 8);  // GTEs per GT
  le64(48, 3);  // rgd
  le64(56, 5);  // gd
  le64(64, 8);  // grains start
  le32(3 * 512, 4);
  le32(5 * 512, 6);
  le32(6 * 512, 8);  // grain 0 at sector 8
  const char* d = "CID=1\nparentCID=ffffffff\n";
  std::copy(d, d + 25, f.begin() + 512);
  return f;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  (void)dmu::formats::vmdk::parse_descriptor(text, "fuzz.vmdk");
  dmu::MemEnv env;
  static const std::vector<uint8_t> sparse = small_sparse();
  env.set_contents("d.vmdk", std::vector<uint8_t>(data, data + size));
  env.set_contents("s.vmdk", sparse);
  env.set_contents("f.raw", std::vector<uint8_t>(32768, 0x5a));
  auto img = dmu::formats::find_driver("vmdk")->open(env, "d.vmdk", dmu::formats::Access::ReadOnly);
  if (img) dmu::fuzz::walk_image(**img, true);
  return 0;
}
