// QEMU reads what the qcow2 engine writes: random workloads of writes,
// write_zeroes, discards and commits done through the Image protocol on
// images made by qemu-img (every option), then `qemu-img convert` must equal
// our model of the disk and `qemu-img check` must find nothing.
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <random>

#include "common/endian.h"
#include "tests/unit/qcow2_test_helpers.h"

namespace dmu::qcow2_test {
namespace {

using formats::Access;
using test::run_ok;
using test::shell_quote;

std::string in(const test::TempDir& dir, const std::string& cmd) {
  return "cd " + shell_quote(dir.path()) + " && " + cmd;
}

void expect_clean(const std::string& image) {
  auto j = qemu_check(image);
  EXPECT_EQ(json_u64(j, "corruptions"), 0u) << j.dump();
  EXPECT_EQ(json_u64(j, "leaks"), 0u) << j.dump();
  EXPECT_EQ(json_u64(j, "check-errors"), 0u) << j.dump();
}

// Applies a random mix of operations to the image and to `model`.
void random_workload(Image& im, std::vector<uint8_t>& model, uint32_t seed, int ops) {
  std::mt19937 rng(seed);
  const uint64_t size = im.info().virtual_size, cs = im.info().cluster_size;
  const uint64_t gran = im.info().granularity;
  for (int i = 0; i < ops; ++i) {
    unsigned kind = rng() % 10;
    if (kind < 6) {
      uint64_t off = rng() % size;
      uint64_t len = 1 + rng() % std::min<uint64_t>(3 * cs, size - off);
      std::vector<uint8_t> data(len, uint8_t(1 + rng() % 255));
      write_guest(im, off, data);
      std::copy(data.begin(), data.end(), model.begin() + long(off));
    } else if (kind < 8) {
      uint64_t off = (rng() % size) / gran * gran;
      uint64_t len = std::min<uint64_t>((1 + rng() % 4) * gran, size - off);
      auto r = im.write_zeroes(off, len, rng() % 2);
      if (!r && r.error().code == ENOTSUP) {
        write_guest(im, off, std::vector<uint8_t>(len, 0));
      } else {
        ASSERT_TRUE(r) << r.error().message;
      }
      std::fill(model.begin() + long(off), model.begin() + long(off + len), 0);
    } else if (kind < 9) {
      uint64_t off = rng() % size;
      uint64_t len = 1 + rng() % std::min<uint64_t>(4 * cs, size - off);
      auto r = im.discard(off, len);
      ASSERT_TRUE(r) << r.error().message;
      // Without a backing file, discarded whole clusters read as zeros.
      uint64_t first = *align_up(off, cs);
      uint64_t last = off + len == size ? size : align_down(off + len, cs);
      if (first < last) std::fill(model.begin() + long(first), model.begin() + long(last), 0);
    } else {
      auto r = im.commit();
      ASSERT_TRUE(r) << r.error().message;
    }
  }
}

struct WriteCase {
  const char* name;
  const char* create_options;
  const char* size;
  const char* convert_options = nullptr;  // compress the prepared image first
};

class Qcow2Write : public ::testing::TestWithParam<WriteCase> {};

TEST_P(Qcow2Write, RandomWorkloadIsReadBackByQemuAndCheckIsClean) {
  const WriteCase& c = GetParam();
  test::TempDir dir;
  const std::string img = dir.file("w.qcow2");
  run_ok(in(dir, std::string("qemu-img create -q -f qcow2 -o ") + c.create_options + " w.qcow2 " +
                     c.size));
  run_ok(in(dir,
            "qemu-io -f qcow2 -c 'write -P 0x5a 0 1M' -c 'write -z 1M 256k' "
            "-c 'write -P 0xa5 3M 512k' w.qcow2"));
  if (c.convert_options)
    run_ok(in(dir, std::string("qemu-img convert -c -O qcow2 -o ") + c.convert_options +
                       " w.qcow2 c.qcow2 && mv c.qcow2 w.qcow2"));
  auto model = qemu_raw(img, dir.file("before.raw"));
  for (uint32_t seed = 1; seed <= 3; ++seed) {
    {
      auto im = open_image(posix_env(), img, Access::ReadWrite);
      ASSERT_TRUE(im) << im.error().message;
      random_workload(**im, model, seed, 150);
      ASSERT_TRUE((*im)->commit());
      // Our own reads agree with the model before QEMU looks.
      EXPECT_EQ(read_all(**im), model);
    }
    EXPECT_EQ(qemu_raw(img, dir.file("after.raw")), model) << "seed " << seed;
    expect_clean(img);
  }
}

INSTANTIATE_TEST_SUITE_P(
    QemuImages, Qcow2Write,
    ::testing::Values(WriteCase{"v3_default", "compat=1.1", "8M"},
                      WriteCase{"v2_compat_0_10", "compat=0.10", "8M"},
                      WriteCase{"cluster_512", "cluster_size=512", "4M"},
                      WriteCase{"cluster_4k", "cluster_size=4k", "8M"},
                      WriteCase{"cluster_2M", "cluster_size=2M", "16M"},
                      WriteCase{"refcount_bits_1", "refcount_bits=1", "8M"},
                      WriteCase{"refcount_bits_2", "refcount_bits=2", "8M"},
                      WriteCase{"refcount_bits_4", "refcount_bits=4", "8M"},
                      WriteCase{"refcount_bits_8", "refcount_bits=8", "8M"},
                      WriteCase{"refcount_bits_32", "refcount_bits=32", "8M"},
                      WriteCase{"refcount_bits_64", "refcount_bits=64", "8M"},
                      WriteCase{"lazy_refcounts", "lazy_refcounts=on", "8M"},
                      WriteCase{"extended_l2", "extended_l2=on", "8M"},
                      WriteCase{"extended_l2_cluster_16k", "extended_l2=on,cluster_size=16k", "4M"},
                      WriteCase{"data_file", "data_file=w.data", "8M"},
                      WriteCase{"data_file_raw", "data_file=w.data,data_file_raw=on", "8M"},
                      WriteCase{"data_file_extended_l2", "data_file=w.data,extended_l2=on", "8M"},
                      WriteCase{"compressed_zlib", "compat=1.1", "8M", "compression_type=zlib"},
                      WriteCase{"compressed_zstd", "compat=1.1", "8M", "compression_type=zstd"},
                      WriteCase{"compressed_v2", "compat=0.10", "8M", "compat=0.10"},
                      WriteCase{"compressed_extended_l2", "compat=1.1", "8M", "extended_l2=on"}),
    [](const auto& p) { return std::string(p.param.name); });

TEST(Qcow2Write, SequentialWriteGetsOneContiguousFreshTarget) {
  test::TempDir dir;
  const std::string img = dir.file("seq.qcow2");
  run_ok(in(dir, "qemu-img create -q -f qcow2 seq.qcow2 64M"));
  auto im = open_image(posix_env(), img, Access::ReadWrite);
  ASSERT_TRUE(im) << im.error().message;
  auto t = (*im)->prepare_write(0, 4 << 20);
  ASSERT_TRUE(t) << t.error().message;
  EXPECT_EQ(t->offset, 0u);
  EXPECT_EQ(t->length, 4u << 20);
  EXPECT_TRUE(t->fresh);
  // The pending allocation is visible to map() at once, as writable data.
  auto m = (*im)->map(0, 4 << 20);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->kind, MapKind::Data);
  EXPECT_EQ(m->length, 4u << 20);
  EXPECT_EQ(m->host_offset, t->host_offset);
  EXPECT_TRUE(m->writable);
  ASSERT_TRUE((*im)->data_files()[0]->write(t->host_offset, pattern(4 << 20, 9)));
  ASSERT_TRUE((*im)->write_done(t->token, true));
  ASSERT_TRUE((*im)->commit());
  // A second prepare over written data is in place, not fresh; it covers
  // whole clusters (the granularity) from the one holding the start.
  auto again = (*im)->prepare_write(70000, 8192);
  ASSERT_TRUE(again);
  EXPECT_FALSE(again->fresh);
  EXPECT_EQ(again->offset, 65536u);
  EXPECT_EQ(again->host_offset, t->host_offset + 65536);
  ASSERT_TRUE((*im)->write_done(again->token, true));
  im->reset();
  run_ok("qemu-io -f qcow2 -c 'read -P 9 0 4M' -c 'read -P 0 4M 60M' " + shell_quote(img));
  expect_clean(img);
}

TEST(Qcow2Write, CommitWritesOnlyAllocationsWhoseWriteDoneArrived) {
  test::TempDir dir;
  const std::string img = dir.file("p.qcow2");
  run_ok(in(dir, "qemu-img create -q -f qcow2 p.qcow2 4M"));
  auto im = open_image(posix_env(), img, Access::ReadWrite);
  ASSERT_TRUE(im) << im.error().message;
  auto done = (*im)->prepare_write(0, 65536);
  auto open = (*im)->prepare_write(1 << 20, 65536);
  ASSERT_TRUE(done && open);
  File* f = (*im)->data_files()[0];
  ASSERT_TRUE(f->write(done->host_offset, pattern(65536, 1)));
  ASSERT_TRUE(f->write(open->host_offset, pattern(65536, 2)));
  ASSERT_TRUE((*im)->write_done(done->token, true));
  ASSERT_TRUE((*im)->commit());
  // Only the completed write is on disk; the other cluster is a leak at
  // most, never a mapping to unfilled data.
  run_ok("qemu-io -f qcow2 -c 'read -P 1 0 64k' -c 'read -P 0 1M 64k' " + shell_quote(img));
  auto j = qemu_check(img);
  EXPECT_EQ(json_u64(j, "corruptions"), 0u);
  ASSERT_TRUE((*im)->write_done(open->token, true));
  im->reset();
  run_ok("qemu-io -f qcow2 -c 'read -P 1 0 64k' -c 'read -P 2 1M 64k' " + shell_quote(img));
  expect_clean(img);
}

TEST(Qcow2Write, WritesInFlightOnOneClusterShareItsAllocation) {
  test::TempDir dir;
  run_ok(in(dir,
            "qemu-img create -q -f qcow2 std.qcow2 4M && "
            "qemu-img create -q -f qcow2 -o extended_l2=on ext.qcow2 4M"));
  {
    // Without subclusters the second write joins the first one's new
    // cluster: same place, not fresh (the first fills the cluster).
    auto im = open_image(posix_env(), dir.file("std.qcow2"), Access::ReadWrite);
    ASSERT_TRUE(im) << im.error().message;
    auto a = (*im)->prepare_write(0, 4096);
    auto b = (*im)->prepare_write(8192, 4096);
    ASSERT_TRUE(a && b);
    EXPECT_TRUE(a->fresh);
    EXPECT_FALSE(b->fresh);
    EXPECT_EQ(b->host_offset, a->host_offset);
    File* f = (*im)->data_files()[0];
    std::vector<uint8_t> cluster(65536, 0);
    std::fill(cluster.begin(), cluster.begin() + 4096, 1);
    ASSERT_TRUE(f->write(a->host_offset, cluster));
    ASSERT_TRUE(f->write(b->host_offset + 8192, pattern(4096, 2)));
    // Zeroing or discarding a cluster with writes in flight is refused.
    EXPECT_EQ((*im)->write_zeroes(0, 65536, true).error().code, EBUSY);
    EXPECT_EQ((*im)->discard(0, 65536).error().code, EBUSY);
    ASSERT_TRUE((*im)->write_done(b->token, true));
    ASSERT_TRUE((*im)->write_done(a->token, true));
  }
  run_ok("qemu-io -f qcow2 -c 'read -P 1 0 4k' -c 'read -P 0 4k 4k' -c 'read -P 2 8k 4k' " +
         shell_quote(dir.file("std.qcow2")));
  expect_clean(dir.file("std.qcow2"));
  {
    // With subclusters both are fresh in the same new cluster, each
    // filling only its own subclusters.
    auto im = open_image(posix_env(), dir.file("ext.qcow2"), Access::ReadWrite);
    ASSERT_TRUE(im) << im.error().message;
    auto a = (*im)->prepare_write(0, 2048);
    auto b = (*im)->prepare_write(8192, 2048);
    ASSERT_TRUE(a && b);
    EXPECT_TRUE(a->fresh && b->fresh);
    EXPECT_EQ(a->length, 2048u);
    EXPECT_EQ(b->host_offset, a->host_offset + 8192);
    File* f = (*im)->data_files()[0];
    ASSERT_TRUE(f->write(a->host_offset, pattern(2048, 3)));
    ASSERT_TRUE(f->write(b->host_offset, pattern(2048, 4)));
    ASSERT_TRUE((*im)->write_done(a->token, true));
    ASSERT_TRUE((*im)->write_done(b->token, false));  // its subcluster stays unallocated
    auto m = (*im)->map(8192, 2048);
    ASSERT_TRUE(m);
    EXPECT_EQ(m->kind, MapKind::Unallocated);
  }
  run_ok("qemu-io -f qcow2 -c 'read -P 3 0 2k' -c 'read -P 0 2k 62k' " +
         shell_quote(dir.file("ext.qcow2")));
  expect_clean(dir.file("ext.qcow2"));
}

TEST(Qcow2Write, FailedWriteDoneFreesTheNewCluster) {
  test::TempDir dir;
  const std::string img = dir.file("f.qcow2");
  run_ok(in(dir, "qemu-img create -q -f qcow2 f.qcow2 4M"));
  auto im = open_image(posix_env(), img, Access::ReadWrite);
  ASSERT_TRUE(im) << im.error().message;
  auto t = (*im)->prepare_write(0, 65536);
  ASSERT_TRUE(t);
  ASSERT_TRUE((*im)->write_done(t->token, false));
  auto m = (*im)->map(0, 65536);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->kind, MapKind::Unallocated);
  EXPECT_FALSE((*im)->write_done(t->token, true));  // the token is spent
  im->reset();
  expect_clean(img);
}

TEST(Qcow2Write, InternalSnapshotClustersAreCopiedOnWrite) {
  test::TempDir dir;
  const std::string img = dir.file("s.qcow2");
  run_ok(in(dir,
            "qemu-img create -q -f qcow2 s.qcow2 4M && "
            "qemu-io -f qcow2 -c 'write -P 1 0 2M' s.qcow2 && "
            "qemu-img snapshot -c first s.qcow2"));
  auto snapshot_before = test::run(in(dir,
                                      "qemu-img convert -O raw -l snapshot.name=first "
                                      "s.qcow2 snap1.raw && md5sum snap1.raw"));
  auto model = qemu_raw(img, dir.file("m.raw"));
  {
    auto im = open_image(posix_env(), img, Access::ReadWrite);
    ASSERT_TRUE(im) << im.error().message;
    auto old = (*im)->map(4096, 4096);
    ASSERT_TRUE(old);
    EXPECT_EQ(old->kind, MapKind::Data);
    EXPECT_FALSE(old->writable);
    auto t = (*im)->prepare_write(4096, 4096);
    ASSERT_TRUE(t);
    EXPECT_TRUE(t->fresh);  // a new cluster, not the snapshot's
    EXPECT_NE(t->host_offset & ~uint64_t(65535), old->host_offset & ~uint64_t(65535));
    ASSERT_TRUE((*im)->write_done(t->token, false));
    random_workload(**im, model, 7, 200);
    ASSERT_TRUE((*im)->commit());
  }
  EXPECT_EQ(qemu_raw(img, dir.file("after.raw")), model);
  auto snapshot_after = test::run(in(dir,
                                     "qemu-img convert -O raw -l snapshot.name=first "
                                     "s.qcow2 snap2.raw && md5sum snap2.raw"));
  EXPECT_EQ(snapshot_before.output.substr(0, 32), snapshot_after.output.substr(0, 32));
  expect_clean(img);
}

TEST(Qcow2Write, RefcountTableGrowsWhenTheImageOutgrowsIt) {
  test::TempDir dir;
  const std::string img = dir.file("g.qcow2");
  // 512-byte clusters with 64-bit refcounts: one block covers 32 KiB and a
  // one-cluster table 2 MiB of file.
  run_ok(in(dir, "qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=64 g.qcow2 8M"));
  auto header_reftable = [&] { return load_be64(test::read_file(img).data() + 48); };
  uint64_t before = header_reftable();
  std::vector<uint8_t> model(8 << 20, 0);
  {
    auto im = open_image(posix_env(), img, Access::ReadWrite);
    ASSERT_TRUE(im) << im.error().message;
    auto data = test::random_bytes(6 << 20, 3);
    write_guest(**im, 0, data);
    std::copy(data.begin(), data.end(), model.begin());
    random_workload(**im, model, 11, 100);
    ASSERT_TRUE((*im)->commit());
  }
  EXPECT_NE(header_reftable(), before);
  EXPECT_EQ(qemu_raw(img, dir.file("g.raw")), model);
  expect_clean(img);
}

TEST(Qcow2Write, SmallMetadataCachesStayCorrectUnderEviction) {
  test::TempDir dir;
  const std::string img = dir.file("e.qcow2");
  run_ok(in(dir, "qemu-img create -q -f qcow2 -o cluster_size=4k e.qcow2 64M"));
  std::vector<uint8_t> model(64 << 20, 0);
  {
    formats::qcow2::OpenOptions tiny;
    tiny.l2_cache_bytes = 4 * 4096;
    tiny.refcount_cache_bytes = 4 * 4096;
    auto im = formats::qcow2::open(posix_env(), img, Access::ReadWrite, tiny);
    ASSERT_TRUE(im) << im.error().message;
    random_workload(**im, model, 5, 400);
    ASSERT_TRUE((*im)->commit());
    EXPECT_EQ(read_all(**im), model);
  }
  EXPECT_EQ(qemu_raw(img, dir.file("e.raw")), model);
  expect_clean(img);
}

TEST(Qcow2Write, WriteZeroesOnV3SetsZeroFlagsAndUnmapsOnRequest) {
  test::TempDir dir;
  const std::string img = dir.file("z.qcow2");
  run_ok(in(dir,
            "qemu-img create -q -f qcow2 z.qcow2 4M && "
            "qemu-io -f qcow2 -c 'write -P 3 0 4M' z.qcow2"));
  auto size_before = test::read_file(img).size();
  {
    auto im = open_image(posix_env(), img, Access::ReadWrite);
    ASSERT_TRUE(im) << im.error().message;
    ASSERT_TRUE((*im)->write_zeroes(0, 1 << 20, false));
    ASSERT_TRUE((*im)->write_zeroes(1 << 20, 1 << 20, true));
    auto m = (*im)->map(0, 4 << 20);
    ASSERT_TRUE(m);
    EXPECT_EQ(m->kind, MapKind::Zero);
    EXPECT_EQ(m->length, 2u << 20);
    // Unaligned zeroing cannot be expressed with flags.
    auto r = (*im)->write_zeroes(100, 1000, false);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, ENOTSUP);
    ASSERT_TRUE((*im)->commit());
  }
  run_ok("qemu-io -f qcow2 -c 'read -P 0 0 2M' -c 'read -P 3 2M 2M' " + shell_quote(img));
  auto j = qemu_json("qemu-img check --output=json " + shell_quote(img));
  EXPECT_EQ(json_u64(j, "corruptions") + json_u64(j, "leaks"), 0u) << j.dump();
  // The unmapped megabyte is free again: 16 clusters fewer allocated.
  EXPECT_EQ(json_u64(j, "allocated-clusters"), 48u);
  EXPECT_EQ(test::read_file(img).size(), size_before);
}

TEST(Qcow2Write, WriteZeroesOnV2DeallocatesOrRefusesWithABackingFile) {
  test::TempDir dir;
  run_ok(in(dir,
            "qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 4M && "
            "qemu-io -f qcow2 -c 'write -P 3 0 4M' v2.qcow2 && "
            "qemu-img create -q -f qcow2 -o compat=0.10 -b v2.qcow2 -F qcow2 top.qcow2"));
  {
    auto im = open_image(posix_env(), dir.file("v2.qcow2"), Access::ReadWrite);
    ASSERT_TRUE(im) << im.error().message;
    ASSERT_TRUE((*im)->write_zeroes(0, 1 << 20, false));
    auto m = (*im)->map(0, 4 << 20);
    ASSERT_TRUE(m);
    EXPECT_EQ(m->kind, MapKind::Unallocated);
    EXPECT_EQ(m->length, 1u << 20);
  }
  run_ok("qemu-io -f qcow2 -c 'read -P 0 0 1M' -c 'read -P 3 1M 3M' " +
         shell_quote(dir.file("v2.qcow2")));
  expect_clean(dir.file("v2.qcow2"));
  auto top = open_image(posix_env(), dir.file("top.qcow2"), Access::ReadWrite);
  ASSERT_TRUE(top) << top.error().message;
  auto r = (*top)->write_zeroes(0, 65536, true);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ENOTSUP);
}

// QEMU (qcow2_co_pdiscard) ignores discards on a v2 image with a backing
// file: without a zero flag, deallocating would expose the backing data.
TEST(Qcow2Write, DiscardWithBackingFileKeepsTheDataOnV2AndReadsZeroOnV3) {
  test::TempDir dir;
  run_ok(in(dir,
            "qemu-img create -q -f qcow2 base.qcow2 4M && "
            "qemu-io -f qcow2 -c 'write -P 1 0 4M' base.qcow2 && "
            "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 v3.qcow2 && "
            "qemu-img create -q -f qcow2 -o compat=0.10 -b base.qcow2 -F qcow2 v2.qcow2"));
  for (const char* name : {"v3.qcow2", "v2.qcow2"}) {
    run_ok(in(dir, std::string("qemu-io -f qcow2 -c 'write -P 2 0 1M' ") + name));
    {
      auto im = open_image(posix_env(), dir.file(name), Access::ReadWrite);
      ASSERT_TRUE(im) << im.error().message;
      ASSERT_TRUE((*im)->discard(0, 1 << 20));
    }
    const char* expect = std::string(name) == "v3.qcow2" ? "0" : "2";
    run_ok(in(dir, std::string("qemu-io -f qcow2 -c 'read -P ") + expect + " 0 1M' " + name));
    expect_clean(dir.file(name));
  }
}

uint64_t allocated_bytes(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0);
  return uint64_t(st.st_blocks) * 512;
}

TEST(Qcow2Write, DiscardGivesTheSpaceBackAfterTheCommit) {
  test::TempDir dir;
  const std::string img = dir.file("d.qcow2");
  run_ok(in(dir,
            "qemu-img create -q -f qcow2 d.qcow2 16M && "
            "qemu-io -f qcow2 -c 'write -P 3 0 16M' d.qcow2"));
  const uint64_t before = allocated_bytes(img);
  {
    auto im = open_image(posix_env(), img, Access::ReadWrite);
    ASSERT_TRUE(im) << im.error().message;
    ASSERT_TRUE((*im)->discard(0, 8 << 20));
    ASSERT_TRUE((*im)->write_zeroes(8 << 20, 4 << 20, true));
    // Nothing is released before the commit that unreferences it.
    EXPECT_GE(allocated_bytes(img), before);
    ASSERT_TRUE((*im)->commit());
    EXPECT_LE(allocated_bytes(img) + (12 << 20), before + (64 << 10));
  }
  run_ok("qemu-io -f qcow2 -c 'read -P 0 0 12M' -c 'read -P 3 12M 4M' " + shell_quote(img));
  expect_clean(img);
}

TEST(Qcow2Write, UnknownAutoclearBitsAreClearedOnTheFirstWrite) {
  test::TempDir dir;
  const std::string img = dir.file("a.qcow2");
  run_ok(in(dir, "qemu-img create -q -f qcow2 a.qcow2 4M"));
  auto bytes = test::read_file(img);
  store_be64(bytes.data() + 88, (uint64_t(1) << 40) | (uint64_t(1) << 5));
  test::write_file(img, bytes);
  auto autoclear = [&] { return load_be64(test::read_file(img).data() + 88); };
  auto im = open_image(posix_env(), img, Access::ReadWrite);
  ASSERT_TRUE(im) << im.error().message;
  EXPECT_NE(autoclear(), 0u);  // opening is not writing
  write_guest(**im, 0, pattern(512, 1));
  EXPECT_EQ(autoclear(), 0u);
  im->reset();
  expect_clean(img);
}

TEST(Qcow2Write, PersistentBitmapsRefuseReadWriteNamingFileAndFeature) {
  test::TempDir dir;
  const std::string img = dir.file("bm.qcow2");
  run_ok(in(dir, "qemu-img create -q -f qcow2 bm.qcow2 4M && qemu-img bitmap --add bm.qcow2 b0"));
  auto im = open_image(posix_env(), img, Access::ReadWrite);
  ASSERT_FALSE(im);
  EXPECT_NE(im.error().message.find(img), std::string::npos);
  EXPECT_NE(im.error().message.find("bitmaps"), std::string::npos);
  EXPECT_TRUE(open_image(posix_env(), img, Access::ReadOnly));
}

TEST(Qcow2Write, ReadOnlyImagesRefuseEveryChange) {
  test::TempDir dir;
  const std::string img = dir.file("ro.qcow2");
  run_ok(in(dir, "qemu-img create -q -f qcow2 ro.qcow2 4M"));
  auto im = open_image(posix_env(), img, Access::ReadOnly);
  ASSERT_TRUE(im);
  EXPECT_EQ((*im)->prepare_write(0, 512).error().code, EROFS);
  EXPECT_EQ((*im)->write_zeroes(0, 65536, true).error().code, EROFS);
  EXPECT_EQ((*im)->discard(0, 65536).error().code, EROFS);
  EXPECT_EQ((*im)->check(formats::Repair::All).error().code, EROFS);
}

}  // namespace
}  // namespace dmu::qcow2_test
