// create() makes images that qemu-img check finds clean and qemu-img info
// describes exactly as it describes the image qemu-img create makes with the
// same options; bad options are refused before anything is written.
#include <gtest/gtest.h>

#include "tests/unit/qcow2_test_helpers.h"

namespace dmu::qcow2_test {
namespace {

using formats::Access;
using formats::CreateOptions;
using test::run_ok;
using test::shell_quote;

std::map<std::string, std::string> parse_options(const std::string& csv) {
  std::map<std::string, std::string> m;
  size_t pos = 0;
  while (pos < csv.size()) {
    size_t comma = csv.find(',', pos);
    std::string kv = csv.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    size_t eq = kv.find('=');
    m[kv.substr(0, eq)] = kv.substr(eq + 1);
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return m;
}

struct CreateCase {
  const char* name;
  const char* options;  // -o, as qemu-img takes them
  uint64_t size;
};

class Qcow2Create : public ::testing::TestWithParam<CreateCase> {};

TEST_P(Qcow2Create, QemuImgInfoMatchesQemuImgCreateAndCheckIsClean) {
  const CreateCase& c = GetParam();
  test::TempDir dir;
  CreateOptions o;
  o.virtual_size = c.size;
  std::string opts = c.options;
  // The data file name differs between the two images.
  o.options = parse_options(opts);
  if (o.options.count("data_file")) o.options["data_file"] = "ours.data";
  auto r = formats::qcow2::create(posix_env(), dir.file("ours.qcow2"), o);
  ASSERT_TRUE(r) << r.error().message;
  std::string qopts = opts;
  run_ok("cd " + shell_quote(dir.path()) + " && qemu-img create -q -f qcow2" +
         (qopts.empty() ? "" : " -o " + qopts) + " theirs.qcow2 " + std::to_string(c.size));

  auto ours =
      qemu_json("cd " + shell_quote(dir.path()) + " && qemu-img info --output=json ours.qcow2");
  auto theirs =
      qemu_json("cd " + shell_quote(dir.path()) + " && qemu-img info --output=json theirs.qcow2");
  EXPECT_EQ(ours["virtual-size"], theirs["virtual-size"]);
  EXPECT_EQ(ours["cluster-size"], theirs["cluster-size"]);
  EXPECT_EQ(ours["dirty-flag"], theirs["dirty-flag"]);
  auto ofs = ours["format-specific"], tfs = theirs["format-specific"];
  if (ofs["data"].contains("data-file")) {
    EXPECT_EQ(ofs["data"]["data-file"], "ours.data");
    ofs["data"].erase("data-file");
    tfs["data"].erase("data-file");
  }
  EXPECT_EQ(ofs, tfs);
  EXPECT_EQ(test::read_file(dir.file("ours.qcow2")).size(),
            test::read_file(dir.file("theirs.qcow2")).size())
      << "same layout as QEMU";

  auto check = qemu_check(dir.file("ours.qcow2"));
  EXPECT_EQ(
      json_u64(check, "corruptions") + json_u64(check, "leaks") + json_u64(check, "check-errors"),
      0u)
      << check.dump();

  // Both QEMU and the engine can use it.
  const bool tiny = c.size < (1 << 20);
  const std::string q = tiny ? "0 512" : "0 96k";
  const uint64_t at = tiny ? 512 : 200000, len = tiny ? 100 : 5000;
  run_ok("cd " + shell_quote(dir.path()) + " && qemu-io -f qcow2 -c 'write -P 0x3c " + q +
         "' ours.qcow2");
  auto im = open_image(posix_env(), dir.file("ours.qcow2"), Access::ReadWrite);
  ASSERT_TRUE(im) << im.error().message;
  write_guest(**im, at, pattern(len, 0x4d));
  im->reset();
  run_ok("cd " + shell_quote(dir.path()) + " && qemu-io -f qcow2 -c 'read -P 0x3c " + q +
         "' -c 'read -P 0x4d " + std::to_string(at) + " " + std::to_string(len) + "' ours.qcow2");
  check = qemu_check(dir.file("ours.qcow2"));
  EXPECT_EQ(json_u64(check, "corruptions") + json_u64(check, "leaks"), 0u) << check.dump();
}

INSTANTIATE_TEST_SUITE_P(
    Options, Qcow2Create,
    ::testing::Values(
        CreateCase{"defaults", "", 1 << 30}, CreateCase{"compat_0_10", "compat=0.10", 1 << 30},
        CreateCase{"compat_1_1", "compat=1.1", 1 << 30},
        CreateCase{"cluster_512", "cluster_size=512", 64 << 20},
        CreateCase{"cluster_2M", "cluster_size=2M", 4ull << 30},
        CreateCase{"lazy_refcounts", "lazy_refcounts=on", 1 << 30},
        CreateCase{"refcount_bits_1", "refcount_bits=1", 1 << 30},
        CreateCase{"refcount_bits_64", "refcount_bits=64", 1 << 30},
        CreateCase{"refcount_64_cluster_512", "refcount_bits=64,cluster_size=512", 256 << 20},
        CreateCase{"extended_l2", "extended_l2=on", 1 << 30},
        CreateCase{"zstd", "compression_type=zstd", 1 << 30},
        CreateCase{"data_file", "data_file=x.data", 64 << 20},
        CreateCase{"data_file_raw", "data_file=x.data,data_file_raw=on", 64 << 20},
        CreateCase{"data_file_raw_extended_l2", "data_file=x.data,data_file_raw=on,extended_l2=on",
                   64 << 20},
        CreateCase{"unaligned_size", "", 1000}, CreateCase{"large_2T", "", 2ull << 40}),
    [](const auto& p) { return std::string(p.param.name); });

TEST(Qcow2Create, BackingFileAndFormatAreRecorded) {
  test::TempDir dir;
  run_ok("cd " + shell_quote(dir.path()) +
         " && qemu-img create -q -f qcow2 base.qcow2 8M && "
         "qemu-io -f qcow2 -c 'write -P 0x61 0 8M' base.qcow2");
  for (const char* compat : {"1.1", "0.10"}) {
    CreateOptions o;
    o.virtual_size = 8 << 20;
    o.backing_file = "base.qcow2";
    o.backing_format = "qcow2";
    o.options["compat"] = compat;
    const std::string top = dir.file(std::string("top-") + compat + ".qcow2");
    ASSERT_TRUE(formats::qcow2::create(posix_env(), top, o));
    auto info = qemu_json("qemu-img info --output=json " + shell_quote(top));
    EXPECT_EQ(info["backing-filename"], "base.qcow2");
    EXPECT_EQ(info["backing-filename-format"], "qcow2");
    run_ok("qemu-io -f qcow2 -c 'read -P 0x61 0 8M' " + shell_quote(top));
    auto im = open_image(posix_env(), top, Access::ReadOnly);
    ASSERT_TRUE(im);
    EXPECT_EQ((*im)->info().backing_file, "base.qcow2");
    EXPECT_EQ((*im)->info().backing_file_format, "qcow2");
  }
}

TEST(Qcow2Create, BadOptionsAreRefusedAndNothingIsWritten) {
  test::TempDir dir;
  const std::string img = dir.file("bad.qcow2");
  struct Bad {
    std::map<std::string, std::string> options;
    int code;
    const char* mentions;
  };
  const Bad cases[] = {
      {{{"compat", "0.10"}, {"lazy_refcounts", "on"}}, EINVAL, "lazy_refcounts"},
      {{{"compat", "0.10"}, {"refcount_bits", "8"}}, EINVAL, "refcount"},
      {{{"compat", "0.10"}, {"extended_l2", "on"}}, EINVAL, "extended_l2"},
      {{{"compat", "0.9"}}, EINVAL, "compat"},
      {{{"cluster_size", "1000"}}, EINVAL, "cluster_size"},
      {{{"cluster_size", "4M"}}, EINVAL, "cluster_size"},
      {{{"cluster_size", "4k"}, {"extended_l2", "on"}}, EINVAL, "extended_l2"},
      {{{"refcount_bits", "3"}}, EINVAL, "refcount_bits"},
      {{{"refcount_bits", "128"}}, EINVAL, "refcount_bits"},
      {{{"compression_type", "lz4"}}, EINVAL, "compression_type"},
      {{{"data_file_raw", "on"}}, EINVAL, "data_file"},
      {{{"preallocation", "full"}}, ENOTSUP, "preallocation"},
      {{{"encrypt.format", "luks"}}, ENOTSUP, "encrypt"},
      {{{"lazy_refcounts", "maybe"}}, EINVAL, "lazy_refcounts"},
      {{{"no_such_option", "1"}}, EINVAL, "no_such_option"},
      {{{"backing_fmt", "qcow2"}}, EINVAL, "backing"},
  };
  for (const Bad& b : cases) {
    CreateOptions o;
    o.virtual_size = 1 << 20;
    o.options = b.options;
    auto r = formats::qcow2::create(posix_env(), img, o);
    ASSERT_FALSE(r) << ::testing::PrintToString(b.options);
    EXPECT_EQ(r.error().code, b.code) << r.error().message;
    EXPECT_NE(r.error().message.find(b.mentions), std::string::npos) << r.error().message;
    EXPECT_NE(r.error().message.find(img), std::string::npos) << r.error().message;
    EXPECT_FALSE(posix_env().exists(img));
  }
  CreateOptions huge;
  huge.virtual_size = uint64_t(1) << 50;
  huge.options["cluster_size"] = "512";
  auto r = formats::qcow2::create(posix_env(), img, huge);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EFBIG);
  EXPECT_FALSE(posix_env().exists(img));
}

}  // namespace
}  // namespace dmu::qcow2_test
