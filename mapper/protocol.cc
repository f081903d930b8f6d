// One-line descriptions of protocol messages for daemon logs and test
// failures, and the userspace sanity check of requests read from the kernel.
#include "mapper/protocol.h"

#include <string>

namespace dmu::proto {
namespace {

std::string id_text(uint64_t id) {
  if (is_push_id(id)) return "push:" + std::to_string(id & ~DMU_PUSH_ID);
  return std::to_string(id);
}

const char* request_type_name(uint32_t type) {
  switch (type) {
    case DMU_REQ_MAP:
      return "MAP";
    case DMU_REQ_COMMIT:
      return "COMMIT";
    case DMU_REQ_DONE:
      return "DONE";
    default:
      return nullptr;
  }
}

const char* response_type_name(uint32_t type) {
  switch (type) {
    case DMU_RSP_EXTENT:
      return "EXTENT";
    case DMU_RSP_COPY:
      return "COPY";
    case DMU_RSP_COMPLETE:
      return "COMPLETE";
    case DMU_RSP_COMMITTED:
      return "COMMITTED";
    case DMU_RSP_INVALIDATE:
      return "INVALIDATE";
    default:
      return nullptr;
  }
}

bool reserved_zero(const dmu_request& q) {
  if (q.reserved0) return false;
  for (auto v : q.reserved)
    if (v) return false;
  return true;
}

std::string map_range_text(const dmu_request& q) {
  std::string s = " block=" + std::to_string(q.block) + "+" + std::to_string(q.nr_blocks);
  if (q.flags & DMU_MAP_WRITE) s += " write";
  if (q.flags & DMU_MAP_DISCARD) s += " discard";
  if (!(q.flags & (DMU_MAP_WRITE | DMU_MAP_DISCARD))) s += " read";
  return s;
}

}  // namespace

std::string describe(const dmu_request& q) {
  const char* name = request_type_name(q.type);
  std::string s = name ? name : "type=" + std::to_string(q.type);
  s += " id=" + id_text(q.id);
  switch (q.type) {
    case DMU_REQ_MAP:
      s += map_range_text(q);
      break;
    case DMU_REQ_DONE:
      // The MAP it reports on; a push's DONE names no range.
      if (q.flags || q.block || q.nr_blocks) s += map_range_text(q);
      s += " status=" + std::to_string(q.status);
      break;
    default:
      break;
  }
  return s;
}

std::string describe(const dmu_response& r) {
  const char* name = response_type_name(r.type);
  std::string s = name ? name : "type=" + std::to_string(r.type);
  s += " id=" + id_text(r.id);
  switch (r.type) {
    case DMU_RSP_EXTENT:
      s += " block=" + std::to_string(r.block) + "+" + std::to_string(r.nr_blocks);
      if (r.kind == DMU_EXT_ZERO) {
        s += " ZERO";
      } else if (r.kind == DMU_EXT_REMAP) {
        s += " REMAP dev=" + std::to_string(r.dev) + " sector=" + std::to_string(r.sector);
      } else {
        s += " kind=" + std::to_string(r.kind);
      }
      if (r.ext_flags & DMU_EXT_WRITABLE) s += " writable";
      if (r.ext_flags & DMU_EXT_NEW) s += " new";
      break;
    case DMU_RSP_COPY:
      s += " vsector=" + std::to_string(r.block) + "+" + std::to_string(r.nr_blocks) +
           " from dev=" + std::to_string(r.dev) + " sector=" + std::to_string(r.sector);
      break;
    case DMU_RSP_COMPLETE:
    case DMU_RSP_COMMITTED:
      s += " status=" + std::to_string(r.status);
      break;
    case DMU_RSP_INVALIDATE:
      s += " block=" + std::to_string(r.block) + "+" + std::to_string(r.nr_blocks);
      break;
    default:
      break;
  }
  if (r.flags & DMU_RSP_FINAL) s += " final";
  return s;
}

std::string describe(const dmu_allocation& a) {
  std::string s = (a.flags & DMU_ALLOC_DISCARD) ? "DISCARD" : "ALLOC";
  s += " id=" + id_text(a.id) + " block=" + std::to_string(a.block) + "+" +
       std::to_string(a.nr_blocks);
  if (!(a.flags & DMU_ALLOC_DISCARD))
    s += " dev=" + std::to_string(a.dev) + " sector=" + std::to_string(a.sector);
  if (a.flags & DMU_ALLOC_PUSH) s += " push";
  if (a.flags & DMU_ALLOC_DONE) s += " done";
  if (const uint32_t unknown =
          a.flags & ~uint32_t{DMU_ALLOC_DISCARD | DMU_ALLOC_PUSH | DMU_ALLOC_DONE})
    s += " flags=" + std::to_string(unknown);
  return s;
}

std::string request_problem(const dmu_request& q) {
  if (!request_type_name(q.type)) return "unknown request type " + std::to_string(q.type);
  if (!reserved_zero(q)) return "non-zero reserved field in " + describe(q);
  if (is_push_id(q.id) && q.type != DMU_REQ_DONE)
    return "kernel request carries a push id: " + describe(q);
  switch (q.type) {
    case DMU_REQ_MAP:
      if (q.flags & ~(DMU_MAP_WRITE | DMU_MAP_DISCARD))
        return "unknown MAP flags " + std::to_string(q.flags);
      if (q.nr_blocks == 0) return "MAP of zero blocks: " + describe(q);
      if (q.block + q.nr_blocks < q.block) return "MAP range overflows: " + describe(q);
      if (q.status) return "MAP with non-zero status: " + describe(q);
      break;
    case DMU_REQ_COMMIT:
      if (q.flags || q.block || q.nr_blocks || q.status)
        return "COMMIT with unused fields set: " + describe(q);
      break;
    case DMU_REQ_DONE:
      // It carries the MAP's flags, block and nr_blocks; a push's DONE none.
      if (q.flags & ~(DMU_MAP_WRITE | DMU_MAP_DISCARD))
        return "unknown DONE flags " + std::to_string(q.flags);
      if ((q.flags & DMU_MAP_WRITE) && (q.flags & DMU_MAP_DISCARD))
        return "DONE of a MAP both write and discard: " + describe(q);
      if (is_push_id(q.id) && (q.flags || q.block || q.nr_blocks))
        return "DONE of a push with a range: " + describe(q);
      if (!is_push_id(q.id) && q.nr_blocks == 0) return "DONE of zero blocks: " + describe(q);
      if (q.block + q.nr_blocks < q.block) return "DONE range overflows: " + describe(q);
      if (q.status > 0) return "DONE with positive status: " + describe(q);
      break;
    default:
      break;
  }
  return "";
}

}  // namespace dmu::proto
