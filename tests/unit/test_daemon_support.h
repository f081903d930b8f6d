// Shared by the test daemon's unit tests (test_daemon_test.cc,
// test_daemon_hostile_test.cc): the target geometry they use and a Responder
// for a configuration.
#pragma once

#include <gtest/gtest.h>

#include "tests/kmod/responder.h"

namespace dmu::testd {

inline constexpr uint32_t kBs = 8;          // 4 KiB blocks
inline constexpr uint64_t kSectors = 8192;  // 4 MiB target = 1024 blocks

inline Geometry geometry(uint32_t devs = 2) {
  return {kSectors, kBs, devs, DMU_FEATURE_ALL};
}

inline Responder make(const DaemonConfig& c, uint32_t devs = 2) {
  auto r = Responder::create(c, geometry(devs));
  EXPECT_TRUE(r) << r.error().message;
  return std::move(*r);
}

}  // namespace dmu::testd
