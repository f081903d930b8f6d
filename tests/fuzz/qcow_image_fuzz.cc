// Fuzzes the qcow engine with whole image files: header, backing name, L1
// and L2 tables, compressed clusters, check.
#include <cstddef>
#include <cstdint>

#include "fileio/mem_env.h"
#include "formats/image.h"
#include "tests/fuzz/fuzz_walk.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  dmu::MemEnv env;
  env.set_contents("img.qcow", std::vector<uint8_t>(data, data + size));
  auto img =
      dmu::formats::find_driver("qcow")->open(env, "img.qcow", dmu::formats::Access::ReadOnly);
  if (img) dmu::fuzz::walk_image(**img, true);
  return 0;
}
