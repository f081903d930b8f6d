// The VMDK descriptor tokenizer: what it accepts, the line-numbered errors it
// gives for what it refuses, and the writer matching QEMU's text.
#include <gtest/gtest.h>

#include "formats/vmdk/descriptor.h"
#include "tests/support/test_support.h"

namespace dmu::formats::vmdk {
namespace {

const char* const kQemuStyle =
    "# Disk DescriptorFile\n"
    "version=1\n"
    "CID=47a1f674\n"
    "parentCID=ffffffff\n"
    "createType=\"twoGbMaxExtentSparse\"\n"
    "\n"
    "# Extent description\n"
    "RW 4194304 SPARSE \"b-s001.vmdk\"\n"
    "RW 2097152 FLAT \"b-f002.vmdk\" 128\n"
    "\n"
    "# The Disk Data Base\n"
    "#DDB\n"
    "\n"
    "ddb.virtualHWVersion = \"4\"\n"
    "ddb.adapterType = \"ide\"\n";

TEST(VmdkDescriptor, ParsesKeysExtentsAndCids) {
  auto d = parse_descriptor(kQemuStyle, "b.vmdk");
  ASSERT_TRUE(d) << d.error().message;
  EXPECT_EQ(d->cid, 0x47a1f674u);
  EXPECT_EQ(d->parent_cid, kNoParentCid);
  EXPECT_EQ(d->create_type, "twoGbMaxExtentSparse");
  EXPECT_FALSE(d->parent_hint);
  ASSERT_EQ(d->extents.size(), 2u);
  EXPECT_EQ(d->extents[0].access, "RW");
  EXPECT_EQ(d->extents[0].sectors, 4194304u);
  EXPECT_EQ(d->extents[0].type, "SPARSE");
  EXPECT_EQ(d->extents[0].filename, "b-s001.vmdk");
  EXPECT_FALSE(d->extents[0].offset);
  EXPECT_EQ(d->extents[1].offset, 128u);
  EXPECT_EQ(d->extents[1].line, 9u);
  EXPECT_EQ(d->keys.at("ddb.adapterType"), "ide");
  EXPECT_EQ(std::string(kQemuStyle).substr(d->cid_pos, d->cid_len), "47a1f674");
}

TEST(VmdkDescriptor, AcceptsCrlfTrailingNulsAndParentHint) {
  std::string text =
      "version=1\r\nCID=1\r\nparentCID=abcdef12\r\ncreateType=\"monolithicSparse\"\r\n"
      "parentFileNameHint=\"dir/base image.vmdk\"\r\nRW 100 SPARSE \"x.vmdk\"\r\n";
  text += std::string(300, '\0');
  text += "garbage after the NUL is not descriptor text";
  auto d = parse_descriptor(text, "x.vmdk");
  ASSERT_TRUE(d) << d.error().message;
  EXPECT_EQ(d->cid, 1u);
  EXPECT_EQ(d->parent_cid, 0xabcdef12u);
  EXPECT_EQ(d->parent_hint, "dir/base image.vmdk");
  EXPECT_EQ(text.substr(d->cid_pos, d->cid_len), "1");
}

void expect_error(const std::string& text, const std::string& what) {
  auto d = parse_descriptor(text, "disk.vmdk");
  ASSERT_FALSE(d) << "accepted: " << text;
  EXPECT_NE(d.error().message.find("disk.vmdk"), std::string::npos) << d.error().message;
  EXPECT_NE(d.error().message.find(what), std::string::npos) << d.error().message;
}

TEST(VmdkDescriptor, RefusesMalformedLinesNamingTheLine) {
  const std::string head = "version=1\nCID=1\nparentCID=ffffffff\n";
  expect_error(head + "createType=\"x\"\n\n\nRW 100 FOO \"a\"\n",
               "descriptor line 7: unknown extent type 'FOO'");
  expect_error(head + "RW 0 SPARSE \"a\"\n", "line 4: bad extent size '0'");
  expect_error(head + "RW -5 SPARSE \"a\"\n", "bad extent size");
  expect_error(head + "RW 99999999999999999999999 SPARSE \"a\"\n", "bad extent size");
  expect_error(head + "RW 100 SPARSE a.vmdk\n", "must be quoted");
  expect_error(head + "RW 100 SPARSE \"a.vmdk\n", "unterminated file name");
  expect_error(head + "RW 100 SPARSE \"a.vmdk\" 7\n", "SPARSE extent with an offset");
  expect_error(head + "RW 100 FLAT \"a.vmdk\"\n", "FLAT extent without an offset");
  expect_error(head + "RW 100 FLAT \"a.vmdk\" 0 junk\n", "junk after the extent offset");
  expect_error(head + "RW 100 FLAT \"a\"x 0\n", "junk after the file name");
  expect_error(head + "RW 100\n", "needs access, size and type");
  expect_error(head + "RW 100 SPARSE \"\"\n", "empty extent file name");
  expect_error(head + "this is not a descriptor\n", "line 4: cannot parse");
  expect_error(head + "key with space = 1\n", "bad character in key");
  expect_error(head + "a = \"unterminated\n", "unterminated quoted value");
  expect_error(head + "a = two words\n", "has spaces or quotes");
  expect_error(head + "CID=2\n", "key 'CID' appears twice");
  expect_error("version=1\nparentCID=ffffffff\n", "has no CID");
  expect_error("version=1\nCID=1\n", "has no parentCID");
  expect_error("CID=xyz\nparentCID=ffffffff\n", "CID 'xyz' is not hex");
  expect_error("CID=123456789\nparentCID=ffffffff\n", "is not hex");
}

TEST(VmdkDescriptor, BoundsSizeLinesAndExtents) {
  std::string many(kMaxDescriptorLines + 1, '\n');
  expect_error(many, "more than");
  std::string big = "CID=1\nparentCID=1\n" + std::string(kMaxDescriptorBytes, '#');
  expect_error(big, "larger than");
  std::string extents = "CID=1\nparentCID=1\n";
  for (size_t i = 0; i <= kMaxExtents; ++i) extents += "RW 1 FLAT \"f\" 0\n";
  expect_error(extents, "more than 4096 extents");
}

TEST(VmdkDescriptor, ErrorTextOfHostileBytesIsPrintable) {
  std::string text = "CID=1\nparentCID=1\nRW 1 \x01\x02\xff\xfe \"a\"\n";
  auto d = parse_descriptor(text, "d.vmdk");
  ASSERT_FALSE(d);
  for (char c : d.error().message) EXPECT_TRUE(c >= 0x20 && c < 0x7f) << int(c);
}

TEST(VmdkDescriptor, WriterMatchesQemuTemplate) {
  DescriptorSpec s;
  s.cid = 0x47a1f674;
  s.create_type = "twoGbMaxExtentSparse";
  s.extent_lines = {"RW 4194304 SPARSE \"b-s001.vmdk\"", "RW 4194304 SPARSE \"b-s002.vmdk\"",
                    "RW 2097152 SPARSE \"b-s003.vmdk\""};
  s.size = uint64_t(5) << 30;
  EXPECT_EQ(build_descriptor(s),
            "# Disk DescriptorFile\nversion=1\nCID=47a1f674\nparentCID=ffffffff\n"
            "createType=\"twoGbMaxExtentSparse\"\n\n# Extent description\n"
            "RW 4194304 SPARSE \"b-s001.vmdk\"\nRW 4194304 SPARSE \"b-s002.vmdk\"\n"
            "RW 2097152 SPARSE \"b-s003.vmdk\"\n\n# The Disk Data Base\n#DDB\n\n"
            "ddb.virtualHWVersion = \"4\"\nddb.geometry.cylinders = \"10402\"\n"
            "ddb.geometry.heads = \"16\"\nddb.geometry.sectors = \"63\"\n"
            "ddb.adapterType = \"ide\"\nddb.toolsVersion = \"2147483647\"\n");
  auto back = parse_descriptor(build_descriptor(s), "b.vmdk");
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(back->extents.size(), 3u);
}

}  // namespace
}  // namespace dmu::formats::vmdk
