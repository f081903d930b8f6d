// Userspace protocol helpers: builders fill exactly the fields a message kind
// uses (the kernel rejects non-zero unused fields), descriptions name what
// matters, and malformed kernel requests are recognised.
#include "mapper/protocol.h"

#include <gtest/gtest.h>

#include <cstring>

namespace dmu::proto {
namespace {

// Every byte outside the named fields must be zero.
template <class T>
bool zero_except(const T& msg, std::initializer_list<std::pair<size_t, size_t>> fields) {
  const auto* bytes = reinterpret_cast<const uint8_t*>(&msg);
  for (size_t i = 0; i < sizeof msg; ++i) {
    bool inside = false;
    for (auto [off, len] : fields) inside |= i >= off && i < off + len;
    if (!inside && bytes[i]) return false;
  }
  return true;
}

#define FIELD(T, f)              \
  std::pair<size_t, size_t> {    \
    offsetof(T, f), sizeof(T::f) \
  }

TEST(Protocol, RemapExtent_FillsOnlyExtentFields) {
  dmu_response r = remap_extent(7, 16, 4, 1, 128, DMU_EXT_WRITABLE, true);
  EXPECT_EQ(r.type, uint32_t{DMU_RSP_EXTENT});
  EXPECT_EQ(r.flags, uint32_t{DMU_RSP_FINAL});
  EXPECT_EQ(r.id, 7u);
  EXPECT_EQ(r.block, 16u);
  EXPECT_EQ(r.nr_blocks, 4u);
  EXPECT_EQ(r.kind, uint32_t{DMU_EXT_REMAP});
  EXPECT_EQ(r.ext_flags, uint32_t{DMU_EXT_WRITABLE});
  EXPECT_EQ(r.dev, 1u);
  EXPECT_EQ(r.sector, 128u);
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(r.reserved, 0u);
}

TEST(Protocol, ZeroExtent_HasNoDeviceOrSector) {
  dmu_response r = zero_extent(3, 10, 2, false);
  EXPECT_TRUE(zero_except(
      r, {FIELD(dmu_response, type), FIELD(dmu_response, id), FIELD(dmu_response, block),
          FIELD(dmu_response, nr_blocks), FIELD(dmu_response, kind)}));
  EXPECT_EQ(r.kind, uint32_t{DMU_EXT_ZERO});
  EXPECT_EQ(r.flags, 0u);
}

TEST(Protocol, CopySource_UsesSectorUnitsInBlockFields) {
  dmu_response r = copy_source(9, 1024, 8, 0, 2048, true);
  EXPECT_EQ(r.type, uint32_t{DMU_RSP_COPY});
  EXPECT_EQ(r.block, 1024u);
  EXPECT_EQ(r.nr_blocks, 8u);
  EXPECT_EQ(r.dev, 0u);
  EXPECT_EQ(r.sector, 2048u);
  EXPECT_EQ(r.kind, 0u);
  EXPECT_EQ(r.ext_flags, 0u);
}

TEST(Protocol, CompleteAndCommitted_CarryStatusAndEndTheAnswer) {
  dmu_response c = complete(5, -28);
  EXPECT_EQ(c.type, uint32_t{DMU_RSP_COMPLETE});
  EXPECT_EQ(c.status, -28);
  EXPECT_EQ(c.flags, uint32_t{DMU_RSP_FINAL});
  EXPECT_TRUE(zero_except(c, {FIELD(dmu_response, type), FIELD(dmu_response, flags),
                              FIELD(dmu_response, id), FIELD(dmu_response, status)}));
  dmu_response k = committed(6, 0);
  EXPECT_EQ(k.type, uint32_t{DMU_RSP_COMMITTED});
  EXPECT_EQ(k.id, 6u);
}

TEST(Protocol, Invalidate_HasIdZero) {
  dmu_response r = invalidate(100, 50);
  EXPECT_EQ(r.type, uint32_t{DMU_RSP_INVALIDATE});
  EXPECT_EQ(r.id, 0u);
  EXPECT_EQ(r.flags, 0u);
  EXPECT_EQ(r.block, 100u);
  EXPECT_EQ(r.nr_blocks, 50u);
}

TEST(Protocol, Describe_NamesTypeIdRangeAndFlags) {
  EXPECT_EQ(describe(map_request(7, 16, 4, DMU_MAP_WRITE)), "MAP id=7 block=16+4 write");
  EXPECT_EQ(describe(map_request(8, 0, 1, 0)), "MAP id=8 block=0+1 read");
  EXPECT_EQ(describe(done_request(DMU_PUSH_ID | 3, -5)), "DONE id=push:3 status=-5");
  EXPECT_EQ(describe(done_request(7, 0, DMU_MAP_WRITE, 16, 4)),
            "DONE id=7 block=16+4 write status=0");
  EXPECT_EQ(describe(remap_extent(7, 16, 32, 0, 128, DMU_EXT_WRITABLE, true)),
            "EXTENT id=7 block=16+32 REMAP dev=0 sector=128 writable final");
  EXPECT_EQ(describe(copy_source(7, 128, 8, 0, 128, false)),
            "COPY id=7 vsector=128+8 from dev=0 sector=128");
  dmu_response junk{};
  junk.type = 99;
  EXPECT_EQ(describe(junk), "type=99 id=0");
}

// Protocol 2: DONE carries the flags, block and nr_blocks of the MAP it
// reports on (all 0 for a push), and discards get one too.
TEST(Protocol, DoneFor_RepeatsTheMapsFlagsAndRange) {
  const dmu_request map = map_request(9, 3, 2, DMU_MAP_DISCARD);
  const dmu_request done = done_for(map, -5);
  EXPECT_EQ(done.type, uint32_t{DMU_REQ_DONE});
  EXPECT_EQ(done.id, 9u);
  EXPECT_EQ(done.flags, uint32_t{DMU_MAP_DISCARD});
  EXPECT_EQ(done.block, 3u);
  EXPECT_EQ(done.nr_blocks, 2u);
  EXPECT_EQ(done.status, -5);
  EXPECT_TRUE(zero_except(done, {FIELD(dmu_request, type), FIELD(dmu_request, flags),
                                 FIELD(dmu_request, id), FIELD(dmu_request, block),
                                 FIELD(dmu_request, nr_blocks), FIELD(dmu_request, status)}));
  EXPECT_EQ(describe(done), "DONE id=9 block=3+2 discard status=-5");
  EXPECT_EQ(describe(done_for(map_request(8, 0, 1, 0), 0)), "DONE id=8 block=0+1 read status=0");
}

TEST(Protocol, DescribeAllocation_NamesTheRecordKind) {
  dmu_allocation a{7, 16, 4, 4096 + 128, 0, 0};
  EXPECT_EQ(describe(a), "ALLOC id=7 block=16+4 dev=0 sector=4224");
  a.flags = DMU_ALLOC_DONE;
  EXPECT_EQ(describe(a), "ALLOC id=7 block=16+4 dev=0 sector=4224 done");
  dmu_allocation p{DMU_PUSH_ID | 2, 1, 1, 8, 1, DMU_ALLOC_PUSH};
  EXPECT_EQ(describe(p), "ALLOC id=push:2 block=1+1 dev=1 sector=8 push");
  dmu_allocation d{9, 3, 2, 0, 0, DMU_ALLOC_DISCARD | 0x100};
  EXPECT_EQ(describe(d), "DISCARD id=9 block=3+2 flags=256");
}

TEST(Protocol, RequestProblem_AcceptsWellFormedRequests) {
  EXPECT_EQ(request_problem(map_request(1, 0, 1, DMU_MAP_WRITE)), "");
  EXPECT_EQ(request_problem(commit_request(2)), "");
  EXPECT_EQ(request_problem(done_request(DMU_PUSH_ID | 1, 0)), "");
  EXPECT_EQ(request_problem(done_for(map_request(3, 5, 2, DMU_MAP_WRITE), -5)), "");
  EXPECT_EQ(request_problem(done_for(map_request(4, 5, 2, DMU_MAP_DISCARD), 0)), "");
  EXPECT_EQ(request_problem(done_for(map_request(5, 5, 2, 0), 0)), "");  // NEW in a read answer
}

TEST(Protocol, RequestProblem_FlagsMalformedDone) {
  auto problem = [](dmu_request q) { return request_problem(q); };
  EXPECT_NE(problem(done_request(1, 0)).find("zero blocks"), std::string::npos);
  EXPECT_NE(problem(done_request(DMU_PUSH_ID | 1, 0, DMU_MAP_WRITE, 0, 1)).find("push"),
            std::string::npos);
  EXPECT_NE(problem(done_request(1, 0, 0x10, 0, 1)).find("flags"), std::string::npos);
  EXPECT_NE(problem(done_request(1, 0, DMU_MAP_WRITE | DMU_MAP_DISCARD, 0, 1)).find("both"),
            std::string::npos);
  EXPECT_NE(problem(done_request(1, 0, DMU_MAP_WRITE, UINT64_MAX, 2)).find("overflows"),
            std::string::npos);
  EXPECT_NE(problem(done_request(1, 5, DMU_MAP_WRITE, 0, 1)).find("positive"), std::string::npos);
}

TEST(Protocol, RequestProblem_FlagsMalformedRequests) {
  dmu_request q = map_request(1, 0, 1, 0);
  q.reserved[2] = 1;
  EXPECT_NE(request_problem(q).find("reserved"), std::string::npos);
  EXPECT_NE(request_problem(map_request(1, 0, 0, 0)).find("zero blocks"), std::string::npos);
  EXPECT_NE(request_problem(map_request(1, 0, 1, 0x80)).find("flags"), std::string::npos);
  EXPECT_NE(request_problem(map_request(DMU_PUSH_ID | 1, 0, 1, 0)).find("push id"),
            std::string::npos);
  dmu_request bad{};
  bad.type = 42;
  EXPECT_NE(request_problem(bad).find("unknown request type 42"), std::string::npos);
  EXPECT_NE(request_problem(done_request(1, 5, DMU_MAP_WRITE, 0, 1)).find("positive"),
            std::string::npos);
}

}  // namespace
}  // namespace dmu::proto
