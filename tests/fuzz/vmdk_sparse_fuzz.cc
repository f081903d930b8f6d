// Fuzzes the vmdk engine with hosted sparse extent files: header, embedded
// descriptor, grain directory and redundant directory, grain tables, check.
#include <cstddef>
#include <cstdint>

#include "fileio/mem_env.h"
#include "formats/image.h"
#include "tests/fuzz/fuzz_walk.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  dmu::MemEnv env;
  env.set_contents("img.vmdk", std::vector<uint8_t>(data, data + size));
  auto img =
      dmu::formats::find_driver("vmdk")->open(env, "img.vmdk", dmu::formats::Access::ReadOnly);
  if (img) dmu::fuzz::walk_image(**img, true);
  return 0;
}
