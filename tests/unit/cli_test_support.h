// Helpers for the tests that drive the dmu program and the qemu-img/qemu-io
// oracle from the shell: where dmu is, running with a timeout and separate
// stderr, and small qcow2 header pokes for constructing broken images.
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "tests/support/test_support.h"

namespace dmu::test {

inline std::string dmu_bin() {
  return std::string(DMU_BUILD_DIR) + "/cli/dmu";
}

struct Outcome {
  int exit_code = -1;  // 124: timed out; >= 128: killed by a signal
  std::string out, err;
};

// Runs `command` with bash in `dir` under `timeout`, capturing stdout and
// stderr apart.
inline Outcome run_split(const std::string& command, const std::string& dir, int seconds = 60) {
  const std::string out = dir + "/.stdout", err = dir + "/.stderr";
  const std::string full = "cd " + shell_quote(dir) + " && timeout -s KILL " +
                           std::to_string(seconds) + " bash -c " + shell_quote(command) + " >" +
                           shell_quote(out) + " 2>" + shell_quote(err);
  int status = std::system(full.c_str());
  Outcome o;
  o.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  auto slurp = [](const std::string& p) {
    auto b = read_file(p);
    return std::string(b.begin(), b.end());
  };
  o.out = slurp(out);
  o.err = slurp(err);
  return o;
}

inline std::string dmu(const std::string& args) {
  return dmu_bin() + " " + args;
}

inline size_t line_count(const std::string& s) {
  size_t n = 0;
  for (char c : s) n += c == '\n';
  if (!s.empty() && s.back() != '\n') ++n;
  return n;
}

inline uint64_t get_be64(const std::vector<uint8_t>& b, size_t at) {
  uint64_t v = 0;
  for (size_t i = 0; i < 8; ++i) v = (v << 8) | b.at(at + i);
  return v;
}
inline void put_be64(std::vector<uint8_t>& b, size_t at, uint64_t v) {
  for (size_t i = 0; i < 8; ++i) b.at(at + 7 - i) = uint8_t(v >> (8 * i));
}
inline void put_be32(std::vector<uint8_t>& b, size_t at, uint32_t v) {
  for (size_t i = 0; i < 4; ++i) b.at(at + 3 - i) = uint8_t(v >> (8 * i));
}

// Offset in the file of the L2 entry for guest cluster `index` of a qcow2
// image whose first L1 entry covers it.
inline size_t qcow2_l2_entry_offset(const std::vector<uint8_t>& img, uint64_t index) {
  const uint64_t l1 = get_be64(img, 40);
  const uint64_t l2 = get_be64(img, size_t(l1)) & 0x00fffffffffffe00ULL;
  return size_t(l2 + 8 * index);
}

}  // namespace dmu::test
