// Sizes on command lines: qemu-img's suffixes, exact over all of uint64_t.
#include <gtest/gtest.h>

#include "common/size.h"

namespace dmu {
namespace {

uint64_t parsed(const std::string& text) {
  auto r = parse_size(text);
  EXPECT_TRUE(r) << text << ": " << (r ? "" : r.error().message);
  return r ? *r : 0;
}

TEST(ParseSize, TakesQemuImgsSuffixes) {
  EXPECT_EQ(parsed("0"), 0u);
  EXPECT_EQ(parsed("512"), 512u);
  EXPECT_EQ(parsed("512B"), 512u);
  EXPECT_EQ(parsed("64k"), 64u << 10);
  EXPECT_EQ(parsed("64K"), 64u << 10);
  EXPECT_EQ(parsed("10M"), 10u << 20);
  EXPECT_EQ(parsed("1.5G"), 3ull << 29);
  EXPECT_EQ(parsed("2T"), 2ull << 40);
  EXPECT_EQ(parsed("1P"), 1ull << 50);
  EXPECT_EQ(parsed("15E"), 15ull << 60);
  EXPECT_EQ(parsed("1."), 1u);
  EXPECT_EQ(parsed("0.5k"), 512u);
  EXPECT_EQ(parsed("0x10000"), 0x10000u);
  EXPECT_EQ(parsed("0XfFfF"), 0xffffu);
  EXPECT_EQ(parsed("0xffffffffffffffff"), UINT64_MAX);
}

// A double holds integers exactly only up to 2^53: 2^53 + 1 and 2^62 + 512
// would come back rounded through strtod.
TEST(ParseSize, IsExactAbove2To53) {
  EXPECT_EQ(parsed("9007199254740993"), (1ull << 53) + 1);
  EXPECT_EQ(parsed("4611686018427388416"), (1ull << 62) + 512);
  EXPECT_EQ(parsed("18446744073709551615"), UINT64_MAX);
  EXPECT_EQ(parsed("4503599627370496.5k"), (1ull << 62) + 512);
  EXPECT_EQ(parsed("0.0009765625k"), 1u);
}

TEST(ParseSize, RefusesWhatIsNoSize) {
  for (const char* bad : {"", "-1", "k", ".5M", "1x", "1MB", "1 M", "0x", "0x10k", "0x1.8", "0xg",
                          "1e3", "1.5", "0.3k", "1.0000000000000000001M"}) {
    auto r = parse_size(bad);
    EXPECT_FALSE(r) << "'" << bad << "' parsed as " << (r ? *r : 0);
    if (!r) {
      EXPECT_EQ(r.error().code, EINVAL) << bad << ": " << r.error().message;
    }
  }
  for (const char* big : {"18446744073709551616", "16E", "16384P", "99999999999999999999999",
                          "0x10000000000000000"}) {
    auto r = parse_size(big);
    EXPECT_FALSE(r) << big;
    if (!r) {
      EXPECT_EQ(r.error().code, ERANGE) << big << ": " << r.error().message;
    }
  }
}

TEST(HumanSize, PrintsThreeSignificantDigitsAsQemuImg) {
  EXPECT_EQ(human_size(512), "512 B");
  EXPECT_EQ(human_size(4u << 20), "4 MiB");
  EXPECT_EQ(human_size(3ull << 29), "1.5 GiB");
  EXPECT_EQ(human_size(324u << 10), "324 KiB");
}

}  // namespace
}  // namespace dmu
