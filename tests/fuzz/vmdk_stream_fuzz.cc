// Fuzzes stream-optimized vmdk reading: the footer that replaces the header,
// grain markers and deflated grains, decoded for every compressed mapping.
#include <cstddef>
#include <cstdint>

#include "fileio/mem_env.h"
#include "formats/image.h"
#include "tests/fuzz/fuzz_walk.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  dmu::MemEnv env;
  env.set_contents("s.vmdk", std::vector<uint8_t>(data, data + size));
  auto img = dmu::formats::find_driver("vmdk")->open(env, "s.vmdk", dmu::formats::Access::ReadOnly);
  if (img) dmu::fuzz::walk_image(**img, false);
  return 0;
}
