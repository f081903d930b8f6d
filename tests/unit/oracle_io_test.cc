// dmu against the qemu-io oracle, write side: the same random sequence of
// qemu-io commands (pattern writes, zero writes, discards, reads, flushes, at
// unaligned offsets and lengths) applied with `dmu io` to one copy of an
// image and with qemu-io to another must leave the two identical for
// `qemu-img compare`, and both clean for `qemu-img check`.  dmu io runs the
// commands through the map service and the in-process transport, the
// daemon's code path.  Fixed seeds; a few rounds per image keep it quick.
#include <gtest/gtest.h>

#include <random>
#include <sstream>

#include "tests/unit/cli_test_support.h"

namespace dmu::test {
namespace {

constexpr uint64_t K = 1024, M = 1024 * 1024;

struct Case {
  const char* name;
  const char* format;
  const char* build;  // shell: makes "top.img" (and any backing files) in the directory
  uint64_t size;
  bool has_check;  // qemu-img check supports the format
  // Whether the guest contents after a discard are defined by the format
  // (not for raw: QEMU punches the file's holes at its own alignment).
  bool discards = true;
  // Discards are rounded inwards to this: the dm device's discard
  // granularity is its block (at least 4 KiB), so a guest never discards
  // part of one, while qemu-io would discard single 512-byte clusters.
  uint64_t discard_align = 0;
};

const Case kCases[] = {
    {"Qcow", "qcow", "qemu-img create -q -f qcow top.img 6M", 6 * M, false},
    {"QcowOverBacking", "qcow",
     "qemu-img create -q -f qcow base.qcow 6M; qemu-io -f qcow base.qcow -c 'write -P 1 0 6M' "
     ">/dev/null; qemu-img create -q -f qcow -b base.qcow -F qcow top.img",
     6 * M, false},
    {"Qcow2Compat010", "qcow2", "qemu-img create -q -f qcow2 -o compat=0.10 top.img 6M", 6 * M,
     true},
    {"Qcow2Compat11", "qcow2", "qemu-img create -q -f qcow2 -o compat=1.1 top.img 6M", 6 * M, true},
    {"Qcow2Compat11SmallClusters", "qcow2",
     "qemu-img create -q -f qcow2 -o cluster_size=4k top.img 6M", 6 * M, true},
    {"Qcow2OverCompressedBase", "qcow2",
     "truncate -s 6M s.raw; qemu-io -f raw s.raw -c 'write -P 3 0 2M' -c 'write -P 4 3M 3M' "
     ">/dev/null; qemu-img convert -c -O qcow2 s.raw base.qcow2;"
     "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.img",
     6 * M, true},
    {"Qcow2CompressedItself", "qcow2",
     "truncate -s 6M s.raw; qemu-io -f raw s.raw -c 'write -P 3 0 6M' >/dev/null;"
     "qemu-img convert -c -O qcow2 s.raw top.img",
     6 * M, true},
    {"Qcow2BackingChain", "qcow2",
     "truncate -s 6M base.raw; qemu-io -f raw base.raw -c 'write -P 5 0 6M' >/dev/null;"
     "qemu-img create -q -f qcow2 -o cluster_size=4k -b base.raw -F raw mid.qcow2;"
     "qemu-io -f qcow2 mid.qcow2 -c 'write -P 6 1M 2M' -c 'write -z 4M 512k' >/dev/null;"
     "qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.img",
     6 * M, true},
    {"Qcow2ExtendedL2OverBacking", "qcow2",
     "qemu-img create -q -f qcow2 base.qcow2 6M; qemu-io -f qcow2 base.qcow2 -c 'write -P 7 0 6M' "
     ">/dev/null; qemu-img create -q -f qcow2 -o extended_l2=on -b base.qcow2 -F qcow2 top.img",
     6 * M, true},
    {"Qcow2LazyRefcounts", "qcow2", "qemu-img create -q -f qcow2 -o lazy_refcounts=on top.img 6M",
     6 * M, true},
    // compat=0.10 cannot say "zeros" over a backing file: QEMU ignores the
    // discards, and the written data must stay.
    {"Qcow2Compat010OverBacking", "qcow2",
     "qemu-img create -q -f qcow2 base.qcow2 6M; qemu-io -f qcow2 base.qcow2 -c 'write -P 7 0 6M' "
     ">/dev/null; qemu-img create -q -f qcow2 -o compat=0.10 -b base.qcow2 -F qcow2 top.img",
     6 * M, true},
    // Clusters below the 4 KiB block: dmu moves a block whose clusters lie
    // apart (QEMU's 512-byte writes scatter them) to a contiguous run.
    {"Qcow2Cluster512", "qcow2",
     "qemu-img create -q -f qcow2 -o cluster_size=512 top.img 6M;"
     "qemu-io -f qcow2 top.img -c 'write -P 8 7680 512' -c 'write -P 9 0 512' "
     "-c 'write -P 10 3M 100k' -c 'write -P 11 2048 1024' >/dev/null",
     6 * M, true, true, 4 * K},
    {"Qcow2Cluster1kCompat010", "qcow2",
     "qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=1k top.img 6M", 6 * M, true, true,
     4 * K},
    {"Qcow2Cluster2kOverBacking", "qcow2",
     "qemu-img create -q -f qcow2 -o cluster_size=64k base.qcow2 6M;"
     "qemu-io -f qcow2 base.qcow2 -c 'write -P 12 0 6M' >/dev/null;"
     "qemu-img create -q -f qcow2 -o cluster_size=2k -b base.qcow2 -F qcow2 top.img",
     6 * M, true, true, 4 * K},
    {"Qcow2Cluster512CompressedItself", "qcow2",
     "truncate -s 6M s.raw; qemu-io -f raw s.raw -c 'write -P 13 0 6M' >/dev/null;"
     "qemu-img convert -c -O qcow2 -o cluster_size=512 s.raw top.img",
     6 * M, true, true, 4 * K},
    {"VmdkMonolithicSparse", "vmdk", "qemu-img create -q -f vmdk top.img 6M", 6 * M, true},
    {"Raw", "raw", "truncate -s 6M top.img", 6 * M, false, false},
};

// One round of random commands.  Offsets and lengths are unaligned most of
// the time and cluster-aligned sometimes, so both partial and whole-cluster
// paths run.
std::vector<std::string> random_commands(std::mt19937& rng, uint64_t size, int count, bool discards,
                                         uint64_t discard_align) {
  std::vector<std::string> cmds;
  for (int i = 0; i < count; ++i) {
    uint64_t off = rng() % size;
    uint64_t len = 1 + rng() % (200 * K);
    if (rng() % 4 == 0) {  // cluster aligned
      off = off / (64 * K) * (64 * K);
      len = (1 + rng() % 4) * 64 * K;
    }
    len = std::min(len, size - off);
    std::ostringstream c;
    switch (rng() % 10) {
      case 0:
      case 1:
      case 2:
      case 3:
        c << "write -P " << (1 + rng() % 250) << " " << off << " " << len;
        break;
      case 4:
      case 5:
        c << "write -z " << off << " " << len;
        break;
      case 6:
      case 7:
        if (discards && discard_align) {
          const uint64_t a = (off + discard_align - 1) / discard_align * discard_align;
          const uint64_t b = (off + len) / discard_align * discard_align;
          if (a < b)
            c << "discard " << a << " " << b - a;
          else
            c << "read " << off << " " << len;
        } else if (discards)
          c << "discard " << off << " " << len;
        else
          c << "write -P 0 " << off << " " << len;
        break;
      case 8:
        c << "read " << off << " " << len;
        break;
      default:
        c << "flush";
    }
    cmds.push_back(c.str());
  }
  return cmds;
}

std::string as_args(const std::vector<std::string>& cmds) {
  std::string s;
  for (const auto& c : cmds) s += " -c " + shell_quote(c);
  return s;
}

class OracleIo : public ::testing::TestWithParam<Case> {};

TEST_P(OracleIo, DmuIoLeavesTheSameImageAsQemuIo) {
  const Case& c = GetParam();
  TempDir dir;
  auto built = run_split(std::string("set -e; ") + c.build +
                             "; cp --sparse=always top.img dmu.img;"
                             "cp --sparse=always top.img qemu.img",
                         dir.path(), 120);
  ASSERT_EQ(built.exit_code, 0) << built.err;
  const std::string f = c.format;
  std::mt19937 rng(std::hash<std::string>{}(c.name) & 0xffff);
  for (int round = 0; round < 4; ++round) {
    auto cmds = random_commands(rng, c.size, 12, c.discards, c.discard_align);
    std::string trace;
    for (const auto& x : cmds) trace += "  " + x + "\n";
    auto ours = run_split(dmu("io -f " + f + " dmu.img" + as_args(cmds)), dir.path());
    ASSERT_EQ(ours.exit_code, 0) << ours.err << "round " << round << ":\n" << trace;
    auto ref = run_split("qemu-io -f " + f + " qemu.img" + as_args(cmds), dir.path());
    ASSERT_EQ(ref.exit_code, 0) << ref.err;
    ASSERT_EQ(ref.err, "") << ref.err;
    auto cmp = run_split("qemu-img compare -f " + f + " -F " + f + " dmu.img qemu.img", dir.path());
    ASSERT_EQ(cmp.exit_code, 0) << cmp.out << cmp.err << "after round " << round << ":\n" << trace;
    if (c.has_check) {
      auto check = run_split("qemu-img check -f " + f + " dmu.img", dir.path());
      ASSERT_EQ(check.exit_code, 0) << check.out << check.err << "after round " << round << ":\n"
                                    << trace;
      auto ours_check = run_split(dmu("check -f " + f + " dmu.img"), dir.path());
      EXPECT_EQ(ours_check.exit_code, 0) << ours_check.out << ours_check.err;
    }
  }
}

// QEMU's rule for a raw image it probed: no write may make the image
// probe as another format (EPERM), whatever the write's alignment; with
// -f raw anything goes.  Each command is run by both on copies of a raw
// image whose first bytes are one byte short of a qcow2 header.
TEST(OracleIoProbedRaw, AWriteThatWouldMakeAFormatIsRefusedLikeQemu) {
  TempDir dir;
  auto built = run_split(
      "set -e; truncate -s 1M img; printf 'XFI\\373\\000\\000\\000\\003' |"
      " dd of=img conv=notrunc status=none",
      dir.path());
  ASSERT_EQ(built.exit_code, 0) << built.err;
  struct Step {
    const char* cmd;
    const char* format;  // "" = probed
    bool refused;
  };
  const Step steps[] = {
      {"write -P 0x51 0 1", "", true},    // 'QFI\xfb': the qcow2 magic
      {"write -P 0x41 1 1", "", false},   // 'XAI\xfb': still raw
      {"write -P 0x46 1 1", "", false},   // 'XFI\xfb'
      {"write -P 0x51 0 1", "", true},    // refused again
      {"write -z 0 4", "", false},        // zeros: raw
      {"write -P 0x51 0 1", "raw", false},  // named: no rule
  };
  for (const Step& st : steps) {
    ASSERT_EQ(run_split("cp img dmu.img; cp img qemu.img", dir.path()).exit_code, 0);
    const std::string f = *st.format ? std::string("-f ") + st.format + " " : "";
    auto ours = run_split(dmu("io " + f + "dmu.img -c " + shell_quote(st.cmd)), dir.path());
    auto ref = run_split("qemu-io " + f + "qemu.img -c " + shell_quote(st.cmd), dir.path());
    EXPECT_EQ(ours.exit_code != 0, st.refused) << st.cmd << ": " << ours.err;
    EXPECT_EQ(ref.exit_code != 0, st.refused) << st.cmd << " (qemu-io): " << ref.out << ref.err;
    if (st.refused) {
      EXPECT_NE(ours.err.find("would make this probed raw image probe as qcow2"), std::string::npos)
          << ours.err;
      EXPECT_NE((ref.out + ref.err).find("Operation not permitted"), std::string::npos) << ref.out;
    }
    auto cmp = run_split("cmp dmu.img qemu.img", dir.path());
    EXPECT_EQ(cmp.exit_code, 0) << st.cmd << ": " << cmp.out;
    // The next step starts from what this one left.
    ASSERT_EQ(run_split("cp dmu.img img", dir.path()).exit_code, 0);
  }
}

// A length so large that offset + length wraps must not skip the check:
// the first 4 MiB piece would land before the write fails at the end of
// the image, and a failing run keeps what it wrote.  (qemu-io refuses such
// a length outright.)
TEST(OracleIoProbedRaw, AHugeLengthCannotSkipTheCheck) {
  TempDir dir;
  auto built = run_split(
      "set -e; truncate -s 8M img; printf 'QFIX' | dd of=img conv=notrunc status=none", dir.path());
  ASSERT_EQ(built.exit_code, 0) << built.err;
  auto ours = run_split(dmu("io img -c 'write -P 0xfb 3 18446744073709551614'"), dir.path());
  EXPECT_NE(ours.exit_code, 0);
  EXPECT_NE(ours.err.find("would make this probed raw image probe as qcow2"), std::string::npos)
      << ours.err;
  auto head = run_split("head -c 4 img | od -An -c", dir.path());
  EXPECT_EQ(head.out, "   Q   F   I   X\n");
}

INSTANTIATE_TEST_SUITE_P(Formats, OracleIo, ::testing::ValuesIn(kCases),
                         [](const auto& p) { return std::string(p.param.name); });

}  // namespace
}  // namespace dmu::test
