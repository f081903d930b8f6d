// The dmu command line contract: every subcommand has --help, errors are one
// line on stderr naming the file and the problem with a non-zero exit and
// nothing left behind, sizes take qemu-img's suffixes, and images made by
// `dmu create` pass qemu-img check with qemu-img info showing what was asked.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "fileio/file.h"
#include "tests/unit/cli_test_support.h"

namespace dmu::test {
namespace {

const char* const kCommands[] = {"create", "info",   "map",  "check", "export", "io",
                                 "attach", "detach", "list", "stats", "serve"};

TEST(Cli, EverySubcommandHasHelp) {
  TempDir dir;
  for (const char* c : kCommands) {
    auto r = run_split(dmu(std::string(c) + " --help"), dir.path());
    EXPECT_EQ(r.exit_code, 0) << c;
    EXPECT_EQ(r.out.rfind(std::string("usage: dmu ") + c, 0), 0u) << r.out;
    EXPECT_EQ(r.err, "");
  }
}

TEST(Cli, TopLevelHelpListsEveryCommand) {
  TempDir dir;
  auto r = run_split(dmu("--help"), dir.path());
  EXPECT_EQ(r.exit_code, 0);
  for (const char* c : kCommands) EXPECT_NE(r.out.find(std::string("dmu ") + c), std::string::npos);
}

TEST(Cli, UnknownCommandsAndOptionsAreOneLineErrors) {
  TempDir dir;
  for (const char* args : {"frobnicate", "info --bogus x.img", "info", "io x.img",
                           "map --output=yaml x.img", "check -r some x.img"}) {
    auto r = run_split(dmu(args), dir.path());
    EXPECT_EQ(r.exit_code, 1) << args;
    EXPECT_EQ(line_count(r.err), 1u) << args << ": " << r.err;
    EXPECT_EQ(r.out, "") << args;
  }
}

TEST(Cli, MissingImageIsNamedByEverySubcommand) {
  TempDir dir;
  for (const char* args :
       {"info nope.img", "map nope.img", "check nope.img", "export nope.img out.raw",
        "io nope.img -c 'read 0 512'", "create -f qcow2 -b nope.img top.qcow2"}) {
    auto r = run_split(dmu(args), dir.path());
    EXPECT_NE(r.exit_code, 0) << args;
    EXPECT_EQ(line_count(r.err), 1u) << args << ": " << r.err;
    EXPECT_NE(r.err.find("nope.img"), std::string::npos) << args << ": " << r.err;
    EXPECT_NE(r.err.find("No such file"), std::string::npos) << args << ": " << r.err;
  }
  EXPECT_FALSE(posix_env().exists(dir.file("out.raw")));
  EXPECT_FALSE(posix_env().exists(dir.file("top.qcow2")));
}

struct CreateCase {
  const char* name;
  const char* args;  // after "dmu create", the image is always img
  const char* format;
  uint64_t size;
  nlohmann::json expect;  // qemu-img info fields that must match
  bool checkable;
};

class CliCreate : public ::testing::TestWithParam<CreateCase> {};

TEST_P(CliCreate, ImagePassesQemuImgCheckAndInfoShowsWhatWasAsked) {
  const CreateCase& c = GetParam();
  TempDir dir;
  auto made = run_split(dmu(std::string("create ") + c.args), dir.path());
  ASSERT_EQ(made.exit_code, 0) << made.err;
  EXPECT_EQ(made.err, "");
  auto info = run_split("qemu-img info --output=json img", dir.path());
  ASSERT_EQ(info.exit_code, 0) << info.err;
  auto j = nlohmann::json::parse(info.out);
  EXPECT_EQ(j["format"], c.format);
  EXPECT_EQ(j["virtual-size"].get<uint64_t>(), c.size);
  for (const auto& [path, want] : c.expect.items()) {
    EXPECT_EQ(j[nlohmann::json::json_pointer(path)], want) << path << " in\n" << info.out;
  }
  if (c.checkable) {
    auto check = run_split("qemu-img check img", dir.path());
    EXPECT_EQ(check.exit_code, 0) << check.out << check.err;
  }
  // And QEMU can write it and read back what it wrote.
  auto io = run_split("qemu-io -f " + std::string(c.format) +
                          " img -c 'write -P 9 4096 70000' -c 'read -P 9 4096 70000'",
                      dir.path());
  EXPECT_EQ(io.exit_code, 0) << io.out << io.err;
  EXPECT_EQ(io.out.find("fail"), std::string::npos) << io.out;
}

using nlohmann::json;
const CreateCase kCreateCases[] = {
    {"RawFractionalSize", "-f raw img 1.5M", "raw", 1572864, json::object(), false},
    {"Qcow2Defaults",
     "-f qcow2 img 64M",
     "qcow2",
     64 << 20,
     {{"/cluster-size", 65536}, {"/format-specific/data/compat", "1.1"}},
     true},
    {"Qcow2Compat010SmallClusters",
     "-f qcow2 -o compat=0.10,cluster_size=4k img 10M",
     "qcow2",
     10 << 20,
     {{"/cluster-size", 4096}, {"/format-specific/data/compat", "0.10"}},
     true},
    {"Qcow2LazyRefcounts8Bit",
     "-f qcow2 -o lazy_refcounts=on,refcount_bits=8 img 1G",
     "qcow2",
     1 << 30,
     {{"/format-specific/data/lazy-refcounts", true}, {"/format-specific/data/refcount-bits", 8}},
     true},
    {"Qcow2ExtendedL2",
     "-f qcow2 -o extended_l2=on img 8M",
     "qcow2",
     8 << 20,
     {{"/format-specific/data/extended-l2", true}},
     true},
    {"Qcow2Zstd",
     "-f qcow2 -o compression_type=zstd img 8M",
     "qcow2",
     8 << 20,
     {{"/format-specific/data/compression-type", "zstd"}},
     true},
    {"Qcow2ExternalDataFile",
     "-f qcow2 -o data_file=img.data img 8M",
     "qcow2",
     8 << 20,
     {{"/format-specific/data/data-file", "img.data"}},
     true},
    {"Qcow", "-f qcow img 5M", "qcow", 5 << 20, json::object(), false},
    {"VmdkSparse",
     "-f vmdk img 100M",
     "vmdk",
     100 << 20,
     {{"/format-specific/data/create-type", "monolithicSparse"}},
     true},
    {"VmdkFlat",
     "-f vmdk -o subformat=monolithicFlat img 1024k",
     "vmdk",
     1 << 20,
     {{"/format-specific/data/create-type", "monolithicFlat"}},
     true},
    {"VmdkTwoGbSparse",
     "-f vmdk -o subformat=twoGbMaxExtentSparse img 3G",
     "vmdk",
     uint64_t(3) << 30,
     {{"/format-specific/data/create-type", "twoGbMaxExtentSparse"}},
     true},
};

INSTANTIATE_TEST_SUITE_P(Formats, CliCreate, ::testing::ValuesIn(kCreateCases),
                         [](const auto& p) { return std::string(p.param.name); });

TEST(Cli, CreateOnABackingFileTakesItsSizeAndResolvesItLikeQemu) {
  TempDir dir;
  auto r = run_split("mkdir a && qemu-img create -q -f qcow2 base.qcow2 3M && " +
                         dmu("create -f qcow2 -b ../base.qcow2 a/top.qcow2"),
                     dir.path());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto info = run_split("qemu-img info --output=json a/top.qcow2", dir.path());
  ASSERT_EQ(info.exit_code, 0) << info.err;
  auto j = nlohmann::json::parse(info.out);
  EXPECT_EQ(j["virtual-size"], 3 << 20);
  EXPECT_EQ(j["backing-filename"], "../base.qcow2");
  EXPECT_EQ(j["full-backing-filename"], "a/../base.qcow2");
  EXPECT_EQ(j["backing-filename-format"], "qcow2");  // probed, then recorded
  EXPECT_EQ(run_split("qemu-img check a/top.qcow2", dir.path()).exit_code, 0);
}

TEST(Cli, CreateRefusesBadInputWithOneLineAndNoFile) {
  TempDir dir;
  for (const char* args : {"-f nosuchfmt img 1M", "-f qcow2 img 12Q", "-f qcow2 img",
                           "-f qcow2 img -- -5", "-f qcow2 -o cluster_size=3000 img 1M",
                           "-f qcow2 -o nosuchoption=1 img 1M", "-f qcow2 -F qcow2 img 1M"}) {
    auto r = run_split(dmu(std::string("create ") + args), dir.path());
    EXPECT_NE(r.exit_code, 0) << args;
    EXPECT_EQ(line_count(r.err), 1u) << args << ": " << r.err;
    EXPECT_NE(r.err.find("img"), std::string::npos) << args << ": " << r.err;
    EXPECT_FALSE(posix_env().exists(dir.file("img"))) << args << " left a file behind";
  }
}

TEST(Cli, IoWritesWhatQemuIoReadsAndVerifiesPatterns) {
  TempDir dir;
  ASSERT_EQ(run_split("qemu-img create -q -f qcow2 img 1M", dir.path()).exit_code, 0);
  auto w =
      run_split(dmu("io img -c 'write -P 0x5a 1000 3000' -c 'read -P 0x5a 1000 3000'"), dir.path());
  ASSERT_EQ(w.exit_code, 0) << w.err;
  EXPECT_NE(w.out.find("wrote 3000/3000 bytes at offset 1000"), std::string::npos) << w.out;
  EXPECT_NE(w.out.find("read 3000/3000 bytes at offset 1000"), std::string::npos) << w.out;
  auto q = run_split("qemu-io -f qcow2 img -c 'read -P 0x5a 1000 3000' -c 'read -P 0 0 1000'",
                     dir.path());
  EXPECT_EQ(q.out.find("fail"), std::string::npos) << q.out;
  auto bad = run_split(dmu("io img -c 'read -P 0x5b 1000 3000'"), dir.path());
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_EQ(line_count(bad.err), 1u) << bad.err;
  EXPECT_NE(bad.err.find("Pattern verification failed at offset 1000"), std::string::npos)
      << bad.err;
  auto out_of_range = run_split(dmu("io img -c 'write 1M 1'"), dir.path());
  EXPECT_EQ(out_of_range.exit_code, 1);
  EXPECT_EQ(line_count(out_of_range.err), 1u) << out_of_range.err;
}

// qemu-img creates an empty streamOptimized vmdk, and so does dmu; dmu
// reads it (zeros, like qemu-io) but does not write it.  (Not a CliCreate
// case: QEMU itself writes such images only in whole grains.)
TEST(Cli, CreatesStreamOptimizedVmdkThatReadsZerosAndRefusesWrites) {
  TempDir dir;
  auto made = run_split(dmu("create -f vmdk -o subformat=streamOptimized img 2M"), dir.path());
  ASSERT_EQ(made.exit_code, 0) << made.err;
  EXPECT_EQ(made.err, "");
  auto info = run_split("qemu-img info --output=json img", dir.path());
  ASSERT_EQ(info.exit_code, 0) << info.err;
  auto j = nlohmann::json::parse(info.out);
  EXPECT_EQ(j["virtual-size"], 2 << 20);
  EXPECT_EQ(j["format-specific"]["data"]["create-type"], "streamOptimized") << info.out;
  EXPECT_EQ(j["format-specific"]["data"]["extents"][0]["compressed"], true) << info.out;
  auto check = run_split("qemu-img check img", dir.path());
  EXPECT_EQ(check.exit_code, 0) << check.out << check.err;
  auto q = run_split("qemu-io -f vmdk img -c 'read -P 0 0 2M'", dir.path());
  EXPECT_EQ(q.exit_code, 0) << q.err;
  EXPECT_EQ(q.out.find("fail"), std::string::npos) << q.out;
  auto r = run_split(dmu("io -f vmdk img -c 'read -P 0 0 2M'"), dir.path());
  EXPECT_EQ(r.exit_code, 0) << r.err;
  auto c = run_split(dmu("check img"), dir.path());
  EXPECT_EQ(c.exit_code, 0) << c.out << c.err;
  auto before = read_file(dir.file("img"));
  auto w = run_split(dmu("io -f vmdk img -c 'write -P 1 0 4k'"), dir.path());
  EXPECT_NE(w.exit_code, 0);
  EXPECT_EQ(line_count(w.err), 1u) << w.err;
  EXPECT_NE(w.err.find("read-only"), std::string::npos) << w.err;
  EXPECT_TRUE(read_file(dir.file("img")) == before);
  // QEMU appends compressed grains to it.
  auto qw =
      run_split("qemu-io -f vmdk img -c 'write -P 9 64k 128k' -c 'read -P 9 64k 128k'", dir.path());
  EXPECT_EQ(qw.exit_code, 0) << qw.err;
  EXPECT_EQ(qw.out.find("fail"), std::string::npos) << qw.out;
  auto ours =
      run_split(dmu("io img -c 'read -P 9 64k 128k' -c 'read -P 0 192k 1856k'"), dir.path());
  EXPECT_EQ(ours.exit_code, 0) << ours.err;
}

TEST(Cli, ExportRefusesToOverwriteItsOwnImage) {
  TempDir dir;
  ASSERT_EQ(run_split("qemu-img create -q -f qcow2 img 1M", dir.path()).exit_code, 0);
  auto before = read_file(dir.file("img"));
  auto r = run_split(dmu("export img img"), dir.path());
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(line_count(r.err), 1u) << r.err;
  EXPECT_TRUE(read_file(dir.file("img")) == before);
}

TEST(Cli, ExportShowsProgressOnATerminalOnly) {
  TempDir dir;
  ASSERT_EQ(run_split("qemu-img create -q -f qcow2 img 8M && qemu-io -f qcow2 img -c 'write 0 4M' "
                      ">/dev/null",
                      dir.path())
                .exit_code,
            0);
  auto quiet = run_split(dmu("export img a.raw"), dir.path());
  EXPECT_EQ(quiet.exit_code, 0);
  EXPECT_EQ(quiet.err, "");
  // script(1) gives the command a terminal.
  auto tty =
      run_split("script -qec " + shell_quote(dmu("export img b.raw")) + " /dev/null", dir.path());
  EXPECT_EQ(tty.exit_code, 0) << tty.err;
  EXPECT_NE(tty.out.find("100.00/100%"), std::string::npos) << tty.out;
  EXPECT_NE(tty.out.find("MB/s"), std::string::npos) << tty.out;
}

TEST(Cli, InfoJsonKeysAreQemuImgs) {
  TempDir dir;
  ASSERT_EQ(run_split("qemu-img create -q -f qcow2 base 1M && qemu-img create -q -f qcow2 -b base "
                      "-F qcow2 img",
                      dir.path())
                .exit_code,
            0);
  auto ours = run_split(dmu("info --output=json img"), dir.path());
  auto ref = run_split("qemu-img info --output=json img", dir.path());
  ASSERT_EQ(ours.exit_code, 0) << ours.err;
  auto a = nlohmann::json::parse(ours.out), b = nlohmann::json::parse(ref.out);
  for (const auto& [key, value] : b.items()) {
    EXPECT_TRUE(a.contains(key)) << key;
    if (key != "actual-size") {
      EXPECT_EQ(a[key], value) << key;
    }
  }
  for (const auto& [key, value] : a.items()) EXPECT_TRUE(b.contains(key)) << key;
}

}  // namespace
}  // namespace dmu::test
