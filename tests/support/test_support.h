// Helpers for unit tests.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dmu::test {

// A fresh directory under $TMPDIR, removed with everything in it.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr, interleaved
};

// Runs `command` with /bin/sh -c.
CommandResult run(const std::string& command);
// Runs it and fails the current test (ADD_FAILURE) unless it exits 0.
std::string run_ok(const std::string& command);
// Single-quotes s for the shell.
std::string shell_quote(const std::string& s);

std::vector<uint8_t> read_file(const std::string& path);
void write_file(const std::string& path, const std::vector<uint8_t>& bytes);
std::vector<uint8_t> random_bytes(size_t n, uint32_t seed);

}  // namespace dmu::test
