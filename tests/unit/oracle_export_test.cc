// dmu against the qemu-img oracle, read side: for every format, subformat and
// option combination the engines support, images made and filled by
// qemu-img/qemu-io must
//   - export (dmu export) byte-identical to qemu-img convert -O raw,
//   - map (dmu map --output=json) to the same data/zero/present ranges as
//     qemu-img map --output=json,
//   - describe themselves (dmu info --output=json --backing-chain) with the
//     same format, virtual size, cluster size and backing chain as qemu-img.
#include <gtest/gtest.h>

#include <array>
#include <map>
#include <memory>
#include <sstream>

#include <nlohmann/json.hpp>

#include "tests/unit/cli_test_support.h"

namespace dmu::test {
namespace {

struct Case {
  const char* name;
  const char* build;  // shell, run in a fresh directory; makes the image
  const char* image;  // path of the image to test, relative to that directory
};

// fill FMT IMG SEED: a fixed mix of pattern writes (aligned and not), zero
// writes and discards that covers first, middle and last clusters.
const char* const kPrelude = R"SH(
set -e
fill() {
  f=$1; i=$2; s=$3
  qemu-io -f "$f" "$i" \
    -c "write -P $((s + 1)) 0 64k" \
    -c "write -P $((s + 2)) $((100 + s * 4096)) 30000" \
    -c "write -z 1M 128k" \
    -c "write -P $((s + 3)) $((3 * 1048576 + s * 65536)) 1M" \
    -c "write -P $((s + 4)) 5120000 512" \
    -c "discard $((3 * 1048576 + 262144)) 131072" \
    -c "write -P $((s + 5)) $((8 * 1048576 - 4096)) 4096" >/dev/null
}
)SH";

const Case kCases[] = {
    {"Raw", "truncate -s 8M d.raw; fill raw d.raw 0", "d.raw"},
    {"Qcow", "qemu-img create -q -f qcow d.qcow 8M; fill qcow d.qcow 0", "d.qcow"},
    {"QcowOverQcow",
     "qemu-img create -q -f qcow b.qcow 8M; fill qcow b.qcow 0;"
     // (QEMU's qcow copies on write slowly: a few writes on the top.)
     "qemu-img create -q -f qcow -b b.qcow -F qcow t.qcow;"
     "qemu-io -f qcow t.qcow -c 'write -P 11 2000 5000' -c 'write -P 12 3M 64k' "
     "-c 'write -z 5100000 40000' >/dev/null",
     "t.qcow"},
    // (qemu-img convert -c -O qcow fails in 7.2; qemu-io writes compressed clusters.)
    {"QcowCompressed",
     "qemu-img create -q -f qcow c.qcow 8M; qemu-io -f qcow c.qcow -c 'write -c -P 1 0 4k' "
     "-c 'write -c -P 6 4k 4k' -c 'write -c -P 7 12k 4k' "
     "-c 'write -c -P 2 1M 4k' -c 'write -c -P 3 8188k 4k' >/dev/null;"
     "qemu-io -f qcow c.qcow -c 'write -P 4 1026k 1k' -c 'write -P 5 2M 8k' >/dev/null",
     "c.qcow"},
    {"Qcow2Compat010",
     "qemu-img create -q -f qcow2 -o compat=0.10 d.qcow2 8M; fill qcow2 d.qcow2 0", "d.qcow2"},
    {"Qcow2Compat11", "qemu-img create -q -f qcow2 -o compat=1.1 d.qcow2 8M; fill qcow2 d.qcow2 0",
     "d.qcow2"},
    {"Qcow2Cluster4K",
     "qemu-img create -q -f qcow2 -o cluster_size=4k d.qcow2 8M; fill qcow2 d.qcow2 0", "d.qcow2"},
    {"Qcow2Cluster2M",
     "qemu-img create -q -f qcow2 -o cluster_size=2M d.qcow2 8M; fill qcow2 d.qcow2 0", "d.qcow2"},
    {"Qcow2CompressedBase",
     "truncate -s 8M s.raw; fill raw s.raw 0; qemu-img convert -c -O qcow2 s.raw b.qcow2;"
     "qemu-img create -q -f qcow2 -b b.qcow2 -F qcow2 t.qcow2; fill qcow2 t.qcow2 20",
     "t.qcow2"},
    {"Qcow2ZstdCompressed",
     "truncate -s 8M s.raw; fill raw s.raw 0;"
     "qemu-img convert -c -O qcow2 -o compression_type=zstd s.raw z.qcow2",
     "z.qcow2"},
    {"Qcow2ChainRelativePaths",
     "mkdir -p a b; truncate -s 8M b/base.raw; fill raw b/base.raw 0;"
     "qemu-img create -q -f qcow2 -b base.raw -F raw b/mid.qcow2; fill qcow2 b/mid.qcow2 30;"
     "qemu-img create -q -f qcow2 -b ../b/mid.qcow2 -F qcow2 a/top.qcow2; fill qcow2 a/top.qcow2 "
     "60",
     "a/top.qcow2"},
    {"Qcow2ExtendedL2OverBacking",
     "qemu-img create -q -f qcow2 b.qcow2 8M; fill qcow2 b.qcow2 0;"
     "qemu-img create -q -f qcow2 -o extended_l2=on -b b.qcow2 -F qcow2 t.qcow2;"
     "fill qcow2 t.qcow2 40; qemu-io -f qcow2 t.qcow2 -c 'write -P 99 6000 3000' -c 'write -z "
     "70000 2048' >/dev/null",
     "t.qcow2"},
    {"Qcow2LazyRefcounts",
     "qemu-img create -q -f qcow2 -o lazy_refcounts=on d.qcow2 8M; fill qcow2 d.qcow2 0",
     "d.qcow2"},
    {"Qcow2RefcountBits1",
     "qemu-img create -q -f qcow2 -o refcount_bits=1 d.qcow2 8M; fill qcow2 d.qcow2 0", "d.qcow2"},
    {"Qcow2RefcountBits64",
     "qemu-img create -q -f qcow2 -o refcount_bits=64 d.qcow2 8M; fill qcow2 d.qcow2 0", "d.qcow2"},
    {"Qcow2ExternalDataFile",
     "qemu-img create -q -f qcow2 -o data_file=d.data d.qcow2 8M; fill qcow2 d.qcow2 0", "d.qcow2"},
    {"Qcow2ExternalDataFileRaw",
     "qemu-img create -q -f qcow2 -o data_file=d.data,data_file_raw=on d.qcow2 8M;"
     "fill qcow2 d.qcow2 0",
     "d.qcow2"},
    {"Qcow2OverShorterBacking",
     "qemu-img create -q -f qcow2 b.qcow2 4M; qemu-io -f qcow2 b.qcow2 -c 'write -P 7 0 4M' "
     ">/dev/null; qemu-img create -q -f qcow2 -b b.qcow2 -F qcow2 t.qcow2 8M;"
     "qemu-io -f qcow2 t.qcow2 -c 'write -P 8 3M 64k' >/dev/null",
     "t.qcow2"},
    {"VmdkMonolithicSparse",
     "qemu-img create -q -f vmdk -o subformat=monolithicSparse d.vmdk 8M; fill vmdk d.vmdk 0",
     "d.vmdk"},
    {"VmdkMonolithicFlat",
     "qemu-img create -q -f vmdk -o subformat=monolithicFlat d.vmdk 8M; fill vmdk d.vmdk 0",
     "d.vmdk"},
    {"VmdkTwoGbMaxExtentSparse",
     "qemu-img create -q -f vmdk -o subformat=twoGbMaxExtentSparse d.vmdk 2100M; fill vmdk d.vmdk "
     "0;"
     "qemu-io -f vmdk d.vmdk -c 'write -P 9 2047M 2M' >/dev/null",
     "d.vmdk"},
    {"VmdkTwoGbMaxExtentFlat",
     "qemu-img create -q -f vmdk -o subformat=twoGbMaxExtentFlat d.vmdk 2100M; fill vmdk d.vmdk 0;"
     "qemu-io -f vmdk d.vmdk -c 'write -P 9 2047M 2M' >/dev/null",
     "d.vmdk"},
    {"VmdkStreamOptimizedAsBacking",
     "truncate -s 8M s.raw; fill raw s.raw 0;"
     "qemu-img convert -O vmdk -o subformat=streamOptimized s.raw so.vmdk;"
     "qemu-img create -q -f qcow2 -b so.vmdk -F vmdk t.qcow2; fill qcow2 t.qcow2 50",
     "t.qcow2"},
    // (QEMU 7.2 fails large writes into a vmdk child: small ones only.)
    {"VmdkWithParent",
     "qemu-img create -q -f vmdk p.vmdk 8M; fill vmdk p.vmdk 0;"
     "qemu-img create -q -f vmdk -b p.vmdk -F vmdk c.vmdk;"
     "qemu-io -f vmdk c.vmdk -c 'write -P 71 0 64k' -c 'write -P 72 200000 30000' "
     "-c 'write -P 73 4M 64k' >/dev/null",
     "c.vmdk"},
};

// (start, length, present, zero, data) runs merged on the flags only, so two
// maps that split ranges differently still compare equal.
std::vector<std::array<uint64_t, 5>> flag_runs(const std::string& json_text) {
  std::vector<std::array<uint64_t, 5>> runs;
  for (const auto& e : nlohmann::json::parse(json_text)) {
    std::array<uint64_t, 5> r = {e["start"].get<uint64_t>(), e["length"].get<uint64_t>(),
                                 e["present"].get<bool>(), e["zero"].get<bool>(),
                                 e["data"].get<bool>()};
    if (!runs.empty() && runs.back()[2] == r[2] && runs.back()[3] == r[3] &&
        runs.back()[4] == r[4] && runs.back()[0] + runs.back()[1] == r[0]) {
      runs.back()[1] += r[1];
      continue;
    }
    runs.push_back(r);
  }
  return runs;
}

class OracleExport : public ::testing::TestWithParam<Case> {
 protected:
  // Each case's images are built once and shared by its three tests.
  void SetUp() override {
    struct Built {
      std::unique_ptr<TempDir> dir;
      Outcome outcome;
    };
    static std::map<std::string, Built> built_dirs;
    Built& b = built_dirs[GetParam().name];
    if (!b.dir) {
      b.dir = std::make_unique<TempDir>();
      b.outcome = run_split(std::string(kPrelude) + GetParam().build, b.dir->path(), 120);
    }
    ASSERT_EQ(b.outcome.exit_code, 0) << "building the images failed: " << b.outcome.err;
    dir_ = b.dir.get();
    image_ = dir_->file(GetParam().image);
    // Outputs of earlier tests of the case must not satisfy this one.
    run_split("rm -f ref.raw out.raw", dir_->path());
  }
  TempDir* dir_ = nullptr;
  std::string image_;
};

TEST_P(OracleExport, ExportIsByteIdenticalToQemuImgConvert) {
  auto ref = run_split("qemu-img convert -O raw " + shell_quote(image_) + " ref.raw", dir_->path());
  ASSERT_EQ(ref.exit_code, 0) << ref.err;
  auto ours = run_split(dmu("export " + shell_quote(image_) + " out.raw"), dir_->path());
  ASSERT_EQ(ours.exit_code, 0) << ours.err;
  EXPECT_EQ(ours.err, "");
  // qemu-img compare reads both files through their holes (cmp would read
  // 2 GiB of zeros for the twoGbMaxExtent cases); sizes compared apart.
  auto cmp = run_split(
      "qemu-img compare -q -f raw -F raw ref.raw out.raw && "
      "test $(stat -c %s ref.raw) = $(stat -c %s out.raw)",
      dir_->path());
  EXPECT_EQ(cmp.exit_code, 0) << cmp.out << cmp.err;
  // Sparse like qemu-img's output: never more blocks allocated than it.
  auto du = run_split("echo $(stat -c %b out.raw) $(stat -c %b ref.raw)", dir_->path());
  std::istringstream in(du.out);
  uint64_t ours_blocks = 0, ref_blocks = 0;
  in >> ours_blocks >> ref_blocks;
  EXPECT_LE(ours_blocks, ref_blocks + 8);
}

TEST_P(OracleExport, MapAgreesWithQemuImgMapOnDataAndZero) {
  auto ref = run_split("qemu-img map --output=json " + shell_quote(image_), dir_->path());
  ASSERT_EQ(ref.exit_code, 0) << ref.err;
  auto ours = run_split(dmu("map --output=json " + shell_quote(image_)), dir_->path());
  ASSERT_EQ(ours.exit_code, 0) << ours.err;
  EXPECT_EQ(flag_runs(ours.out), flag_runs(ref.out)) << "dmu:\n"
                                                     << ours.out << "qemu-img:\n"
                                                     << ref.out;
}

TEST_P(OracleExport, InfoAgreesWithQemuImgInfoAlongTheBackingChain) {
  auto ref =
      run_split("qemu-img info --output=json --backing-chain " + shell_quote(image_), dir_->path());
  ASSERT_EQ(ref.exit_code, 0) << ref.err;
  auto ours =
      run_split(dmu("info --output=json --backing-chain " + shell_quote(image_)), dir_->path());
  ASSERT_EQ(ours.exit_code, 0) << ours.err;
  auto a = nlohmann::json::parse(ours.out), b = nlohmann::json::parse(ref.out);
  ASSERT_EQ(a.size(), b.size()) << ours.out << ref.out;
  for (size_t i = 0; i < a.size(); ++i) {
    for (const char* key : {"format", "virtual-size", "cluster-size", "filename",
                            "backing-filename", "full-backing-filename", "backing-filename-format"})
      EXPECT_EQ(a[i].value(key, nlohmann::json()), b[i].value(key, nlohmann::json()))
          << "image " << i << " key " << key;
  }
}

INSTANTIATE_TEST_SUITE_P(Formats, OracleExport, ::testing::ValuesIn(kCases),
                         [](const auto& p) { return std::string(p.param.name); });

}  // namespace
}  // namespace dmu::test
