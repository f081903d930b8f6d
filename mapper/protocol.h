// The userspace side of the dm-userspace protocol
// (kmod/include/uapi/linux/dm-userspace.h is the spec).  This header pins the
// layout of every UAPI struct with static_asserts, so a change on either side
// breaks the build instead of the conversation, and offers small builders
// that fill exactly the fields a message kind uses (everything else zero, as
// the kernel's validation requires) plus one-line descriptions for logs.
#pragma once

#include <linux/dm-userspace.h>

#include <cstddef>
#include <cstdint>
#include <string>

// --- Layout: sizes and every field offset --------------------------------
static_assert(DMU_MSG_SIZE == 64);
static_assert(sizeof(dmu_request) == DMU_MSG_SIZE);
static_assert(offsetof(dmu_request, type) == 0);
static_assert(offsetof(dmu_request, flags) == 4);
static_assert(offsetof(dmu_request, id) == 8);
static_assert(offsetof(dmu_request, block) == 16);
static_assert(offsetof(dmu_request, nr_blocks) == 24);
static_assert(offsetof(dmu_request, status) == 32);
static_assert(offsetof(dmu_request, reserved0) == 36);
static_assert(offsetof(dmu_request, reserved) == 40);

static_assert(sizeof(dmu_response) == DMU_MSG_SIZE);
static_assert(offsetof(dmu_response, type) == 0);
static_assert(offsetof(dmu_response, flags) == 4);
static_assert(offsetof(dmu_response, id) == 8);
static_assert(offsetof(dmu_response, block) == 16);
static_assert(offsetof(dmu_response, nr_blocks) == 24);
static_assert(offsetof(dmu_response, kind) == 32);
static_assert(offsetof(dmu_response, ext_flags) == 36);
static_assert(offsetof(dmu_response, dev) == 40);
static_assert(offsetof(dmu_response, status) == 44);
static_assert(offsetof(dmu_response, sector) == 48);
static_assert(offsetof(dmu_response, reserved) == 56);

static_assert(sizeof(dmu_bind) == 136);
static_assert(offsetof(dmu_bind, version_major) == 0);
static_assert(offsetof(dmu_bind, version_minor) == 4);
static_assert(offsetof(dmu_bind, version_patch) == 8);
static_assert(offsetof(dmu_bind, reserved0) == 12);
static_assert(offsetof(dmu_bind, features) == 16);
static_assert(offsetof(dmu_bind, key) == 24);
static_assert(offsetof(dmu_bind, target_sectors) == 24 + DMU_KEY_LEN);
static_assert(offsetof(dmu_bind, block_sectors) == 96);
static_assert(offsetof(dmu_bind, nr_devs) == 100);
static_assert(offsetof(dmu_bind, resent) == 104);
static_assert(offsetof(dmu_bind, allocations) == 112);
static_assert(offsetof(dmu_bind, writable_devs) == 120);
static_assert(offsetof(dmu_bind, reserved1) == 124);
static_assert(offsetof(dmu_bind, redelivered) == 128);

static_assert(sizeof(dmu_extent_info) == 40);
static_assert(offsetof(dmu_extent_info, block) == 0);
static_assert(offsetof(dmu_extent_info, nr_blocks) == 8);
static_assert(offsetof(dmu_extent_info, sector) == 16);
static_assert(offsetof(dmu_extent_info, dev) == 24);
static_assert(offsetof(dmu_extent_info, kind) == 28);
static_assert(offsetof(dmu_extent_info, ext_flags) == 32);
static_assert(offsetof(dmu_extent_info, state) == 36);

static_assert(sizeof(dmu_list_extents) == 48);
static_assert(offsetof(dmu_list_extents, start_block) == 0);
static_assert(offsetof(dmu_list_extents, buf) == 8);
static_assert(offsetof(dmu_list_extents, max) == 16);
static_assert(offsetof(dmu_list_extents, count) == 20);
static_assert(offsetof(dmu_list_extents, next_block) == 24);
static_assert(offsetof(dmu_list_extents, reserved) == 32);

static_assert(sizeof(dmu_allocation) == 40);
static_assert(offsetof(dmu_allocation, id) == 0);
static_assert(offsetof(dmu_allocation, block) == 8);
static_assert(offsetof(dmu_allocation, nr_blocks) == 16);
static_assert(offsetof(dmu_allocation, sector) == 24);
static_assert(offsetof(dmu_allocation, dev) == 32);
static_assert(offsetof(dmu_allocation, flags) == 36);

static_assert(sizeof(dmu_list_allocations) == 48);
static_assert(offsetof(dmu_list_allocations, start) == 0);
static_assert(offsetof(dmu_list_allocations, buf) == 8);
static_assert(offsetof(dmu_list_allocations, max) == 16);
static_assert(offsetof(dmu_list_allocations, count) == 20);
static_assert(offsetof(dmu_list_allocations, next) == 24);
static_assert(offsetof(dmu_list_allocations, reserved) == 32);

// The ioctl numbers as numbers (direction, size, magic 0xDC, number): what a
// binary built against another copy of the header would send.
static_assert(DMU_IOC_MAGIC == 0xDC);
static_assert(DMU_IOC_BIND == 0xc088dc00u);
static_assert(DMU_IOC_LIST_EXTENTS == 0xc030dc01u);
static_assert(DMU_IOC_LIST_ALLOCATIONS == 0xc030dc02u);

namespace dmu::proto {

// A MAP that only reads (neither write nor discard).
inline constexpr bool is_read_map(const dmu_request& q) {
  return q.type == DMU_REQ_MAP && !(q.flags & (DMU_MAP_WRITE | DMU_MAP_DISCARD));
}

inline constexpr bool is_push_id(uint64_t id) {
  return (id & DMU_PUSH_ID) != 0;
}
inline constexpr uint32_t final_flag(bool final) {
  return final ? DMU_RSP_FINAL : 0;
}

// --- Responses (daemon -> kernel) ----------------------------------------

// REMAP: virtual blocks [block, block + nr_blocks) live on dev from sector.
// ext_flags: DMU_EXT_WRITABLE, DMU_EXT_NEW.
inline dmu_response remap_extent(uint64_t id, uint64_t block, uint64_t nr_blocks, uint32_t dev,
                                 uint64_t sector, uint32_t ext_flags, bool final) {
  dmu_response r{};
  r.type = DMU_RSP_EXTENT;
  r.flags = final_flag(final);
  r.id = id;
  r.block = block;
  r.nr_blocks = nr_blocks;
  r.kind = DMU_EXT_REMAP;
  r.ext_flags = ext_flags;
  r.dev = dev;
  r.sector = sector;
  return r;
}

// ZERO: reads of these blocks return zeros without device I/O.
inline dmu_response zero_extent(uint64_t id, uint64_t block, uint64_t nr_blocks, bool final) {
  dmu_response r{};
  r.type = DMU_RSP_EXTENT;
  r.flags = final_flag(final);
  r.id = id;
  r.block = block;
  r.nr_blocks = nr_blocks;
  r.kind = DMU_EXT_ZERO;
  return r;
}

// COPY: the old contents of virtual sectors [virtual_sector, + nr_sectors)
// are on src_dev at src_sector; only valid inside a DMU_EXT_NEW extent.
inline dmu_response copy_source(uint64_t id, uint64_t virtual_sector, uint64_t nr_sectors,
                                uint32_t src_dev, uint64_t src_sector, bool final) {
  dmu_response r{};
  r.type = DMU_RSP_COPY;
  r.flags = final_flag(final);
  r.id = id;
  r.block = virtual_sector;
  r.nr_blocks = nr_sectors;
  r.dev = src_dev;
  r.sector = src_sector;
  return r;
}

// COMPLETE: ends a MAP request without (more) extents; status 0 or -errno.
// It ends the answer, so it carries DMU_RSP_FINAL like the last extent would.
inline dmu_response complete(uint64_t id, int32_t status) {
  dmu_response r{};
  r.type = DMU_RSP_COMPLETE;
  r.flags = DMU_RSP_FINAL;
  r.id = id;
  r.status = status;
  return r;
}

// COMMITTED: answers a COMMIT; status 0 when the metadata is durable.
inline dmu_response committed(uint64_t id, int32_t status) {
  dmu_response r{};
  r.type = DMU_RSP_COMMITTED;
  r.flags = DMU_RSP_FINAL;
  r.id = id;
  r.status = status;
  return r;
}

// INVALIDATE: drop cached extents in [block, block + nr_blocks).
inline dmu_response invalidate(uint64_t block, uint64_t nr_blocks) {
  dmu_response r{};
  r.type = DMU_RSP_INVALIDATE;
  r.block = block;
  r.nr_blocks = nr_blocks;
  return r;
}

// --- Requests (kernel -> daemon); fakes and tests build them --------------
inline dmu_request map_request(uint64_t id, uint64_t block, uint64_t nr_blocks, uint32_t flags) {
  dmu_request q{};
  q.type = DMU_REQ_MAP;
  q.flags = flags;
  q.id = id;
  q.block = block;
  q.nr_blocks = nr_blocks;
  return q;
}
inline dmu_request commit_request(uint64_t id) {
  dmu_request q{};
  q.type = DMU_REQ_COMMIT;
  q.id = id;
  return q;
}
// DONE reports on the MAP `id` with that MAP's flags, block and nr_blocks
// (all 0 for a push).
inline dmu_request done_request(uint64_t id, int32_t status, uint32_t flags = 0, uint64_t block = 0,
                                uint64_t nr_blocks = 0) {
  dmu_request q{};
  q.type = DMU_REQ_DONE;
  q.flags = flags;
  q.id = id;
  q.block = block;
  q.nr_blocks = nr_blocks;
  q.status = status;
  return q;
}
// The DONE the kernel sends for an answered MAP request.
inline dmu_request done_for(const dmu_request& map, int32_t status) {
  return done_request(map.id, status, map.flags, map.block, map.nr_blocks);
}

// --- Descriptions for logs ------------------------------------------------
// "MAP id=7 block=16+4 write", "EXTENT id=7 block=16+32 REMAP dev=0
// sector=128 writable final", ...: one line, key=value where it matters.
std::string describe(const dmu_request& q);
std::string describe(const dmu_response& r);
// "ALLOC id=7 block=16+4 dev=0 sector=128", "DISCARD id=9 block=3+2 done".
std::string describe(const dmu_allocation& a);
// Why a request from the kernel is malformed (unknown type, flags, non-zero
// reserved fields, zero length), or "" when it is well formed.
std::string request_problem(const dmu_request& q);

}  // namespace dmu::proto
