// Pure rules of attach (daemon/table_line.h, daemon/paths.h,
// daemon/attach.h): the table line, the status line, keys and names.
#include <gtest/gtest.h>
#include <linux/dm-userspace.h>

#include "daemon/attach.h"
#include "daemon/paths.h"
#include "daemon/table_line.h"

namespace dmu::daemon {
namespace {

TableSpec spec() {
  TableSpec s;
  s.key = "dmu:vm1";
  s.target_sectors = 2097152;
  s.block_sectors = 128;
  s.devs = {"7:0", "7:1", "7:2"};
  s.writable_devs = 1;
  return s;
}

TEST(DaemonTable, LineSpellsOutWritableDevs) {
  auto line = table_line(spec());
  ASSERT_TRUE(line) << line.error().message;
  EXPECT_EQ(line->start, 0u);
  EXPECT_EQ(line->length, 2097152u);
  EXPECT_EQ(line->type, "userspace");
  EXPECT_EQ(line->params, "dmu:vm1 128 3 7:0 7:1 7:2 2 writable_devs 1");
  TableSpec t = spec();
  t.daemon_timeout = 60;
  t.writable_devs = 0;
  EXPECT_EQ(table_params(t), "dmu:vm1 128 3 7:0 7:1 7:2 4 writable_devs 0 daemon_timeout 60");
}

TEST(DaemonTable, RefusesWhatTheTargetWould) {
  auto refused = [](TableSpec s, const char* word) {
    auto r = check_table(s);
    ASSERT_FALSE(r) << word;
    EXPECT_NE(r.error().message.find(word), std::string::npos) << r.error().message;
  };
  TableSpec s = spec();
  s.key = "";
  refused(s, "key");
  s = spec();
  s.key = std::string(DMU_KEY_LEN, 'k');
  refused(s, "key");
  s = spec();
  s.key = "has space";
  refused(s, "key");
  for (uint32_t bs : {0u, 4u, 12u, (1u << 21)}) {
    s = spec();
    s.block_sectors = bs;
    refused(s, "block_sectors");
  }
  s = spec();
  s.devs.clear();
  refused(s, "data devices");
  s = spec();
  s.devs.assign(65, "7:0");
  refused(s, "data devices");
  s = spec();
  s.writable_devs = 4;
  refused(s, "writable_devs");
  s = spec();
  s.target_sectors = 0;
  refused(s, "empty");
  s = spec();
  s.daemon_timeout = 86401;
  refused(s, "daemon_timeout");
}

TEST(DaemonTable, StatusLineFieldsInOrder) {
  auto f = parse_status("requests=5 hits=10 daemon=bound unpublished=0");
  ASSERT_TRUE(f);
  ASSERT_EQ(f->size(), 4u);
  EXPECT_EQ((*f)[0].name, "requests");
  EXPECT_EQ((*f)[0].value, "5");
  EXPECT_EQ((*f)[2].value, "bound");
  auto bad = parse_status("requests=5 oops");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("oops"), std::string::npos);
  EXPECT_TRUE(parse_status("")->empty());
}

TEST(DaemonNames, KeysFitTheProtocol) {
  EXPECT_EQ(key_for("vm1-xvda"), "dmu:vm1-xvda");
  const std::string long_name(120, 'n');
  const std::string k = key_for(long_name);
  EXPECT_LT(k.size(), size_t(DMU_KEY_LEN));
  EXPECT_NE(k, key_for(long_name + "x"));
  EXPECT_EQ(k, key_for(long_name));
  // Fixed for every build (FNV-1a of the name): a rebinding dmu of another
  // build must find the same key.
  EXPECT_EQ(k, "dmu:" + std::string(40, 'n') + "-da892b80fd7b7e85");
}

TEST(DaemonNames, NameRules) {
  EXPECT_TRUE(check_name("vm1-xvda"));
  for (const char* bad : {"", ".", "..", "a/b", "a b", "tab\there", "x.stats"})
    EXPECT_FALSE(check_name(bad)) << bad;
  EXPECT_FALSE(check_name(std::string(128, 'x')));
  EXPECT_TRUE(check_name(std::string(127, 'x')));
}

TEST(DaemonNames, DefaultNameIsTheFileStem) {
  EXPECT_EQ(default_name("/vm/disk.qcow2"), "disk");
  EXPECT_EQ(default_name("disk"), "disk");
  EXPECT_EQ(default_name("/vm/.hidden"), ".hidden");
  EXPECT_EQ(default_name("/vm/a.b.vmdk"), "a.b");
}

TEST(DaemonScratch, SizeIsWholeSlots) {
  EXPECT_EQ(scratch_file_size(64 << 10), 64u << 20);
  EXPECT_EQ(scratch_file_size(2 << 20), 64u << 20);
  EXPECT_EQ(scratch_file_size(8 << 20), 16u * (8 << 20));  // at least 16 slots
}

}  // namespace
}  // namespace dmu::daemon
