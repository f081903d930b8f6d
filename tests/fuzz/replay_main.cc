// Replays a fuzz target's corpus without libFuzzer: in builds without
// -DDMU_FUZZ (g++, the normal suite, the sanitized suite) every *_fuzz.cc is
// linked with this main and run once over each file of its seed corpus, so
// the inputs that once found bugs, and the seeds, keep being exercised.
//
//   <target> FILE_OR_DIR...   runs LLVMFuzzerTestOneInput on every file
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

bool replay(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "%s: cannot open\n", file.c_str());
    return false;
  }
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  LLVMFuzzerTestOneInput(bytes.data(), bytes.size());
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  size_t count = 0;
  bool ok = true;
  for (int i = 1; i < argc; ++i) {
    const std::filesystem::path arg = argv[i];
    if (!std::filesystem::is_directory(arg)) {
      ok = replay(arg) && ok;
      ++count;
      continue;
    }
    for (const auto& entry : std::filesystem::recursive_directory_iterator(arg))
      if (entry.is_regular_file()) {
        ok = replay(entry.path()) && ok;
        ++count;
      }
  }
  std::printf("replayed %zu inputs\n", count);
  // An empty corpus proves nothing: fail rather than pass vacuously.
  return ok && count > 0 ? 0 : 1;
}
