// The in-process transport (see inprocess_transport.h): the kernel target's
// behaviour, single-threaded, with pread/pwrite on the service's devices.
#include "mapper/inprocess_transport.h"

#include <algorithm>
#include <cstring>
#include <optional>

#include "common/checked.h"

namespace dmu::mapper {

InprocessTransport::InprocessTransport(MapService& service)
    : service_(service), block_size_(service.block_size()), virtual_size_(service.virtual_size()) {}

Error InprocessTransport::protocol_error(const std::string& what) const {
  return Error{EIO, service_.devices().front()->path() + ": protocol violation: " + what};
}

// --- extent cache -----------------------------------------------------------

const std::pair<const uint64_t, InprocessTransport::Extent>* InprocessTransport::lookup(
    uint64_t block) const {
  auto it = cache_.upper_bound(block);
  if (it == cache_.begin()) return nullptr;
  --it;
  if (block >= it->first + it->second.nr_blocks) return nullptr;
  return &*it;
}

void InprocessTransport::erase(uint64_t block, uint64_t nr_blocks) {
  const uint64_t end = block + nr_blocks;
  auto it = cache_.upper_bound(block);
  if (it != cache_.begin()) --it;
  while (it != cache_.end() && it->first < end) {
    const uint64_t first = it->first;
    Extent e = it->second;
    const uint64_t last = first + e.nr_blocks;
    if (last <= block) {
      ++it;
      continue;
    }
    it = cache_.erase(it);
    const uint64_t per_block = block_size_ / 512;
    if (first < block) {  // keep the head
      Extent head = e;
      head.nr_blocks = block - first;
      cache_.emplace(first, head);
    }
    if (last > end) {  // keep the tail
      Extent tail = e;
      tail.nr_blocks = last - end;
      if (tail.kind == DMU_EXT_REMAP) tail.sector += (end - first) * per_block;
      it = cache_.emplace(end, tail).first;
      ++it;
    }
  }
}

void InprocessTransport::insert(uint64_t block, const Extent& e) {
  erase(block, e.nr_blocks);
  cache_.emplace(block, e);
}

// --- messages ----------------------------------------------------------------

Result<void> InprocessTransport::check_device_range(uint32_t dev, uint64_t byte, uint64_t bytes,
                                                    const char* what) const {
  const auto& devices = service_.devices();
  if (dev >= devices.size())
    return fail(protocol_error(std::string(what) + " names device " + std::to_string(dev) + " of " +
                               std::to_string(devices.size())));
  DMU_ASSIGN_OR_RETURN(uint64_t size, devices[dev]->size());
  auto end = checked_add(byte, bytes);
  if (!end || *end > align_up(size, 512).value_or(size))
    return fail(protocol_error(std::string(what) + " runs past the end of device " +
                               std::to_string(dev) + " (" + hex(byte) + " + " + hex(bytes) + " > " +
                               hex(size) + ")"));
  return {};
}

Result<void> InprocessTransport::check_extent(const dmu_response& m) const {
  const uint64_t blocks = service_.target_blocks();
  if (m.nr_blocks == 0 || m.block >= blocks || m.nr_blocks > blocks - m.block || m.reserved)
    return fail(protocol_error("extent [" + std::to_string(m.block) + ", +" +
                               std::to_string(m.nr_blocks) + ") outside the target"));
  if (m.ext_flags & ~uint32_t(DMU_EXT_WRITABLE | DMU_EXT_NEW))
    return fail(protocol_error("unknown extent flags"));
  if (m.kind == DMU_EXT_ZERO) {
    if (m.ext_flags || m.dev || m.sector) return fail(protocol_error("ZERO extent with fields"));
    return {};
  }
  if (m.kind != DMU_EXT_REMAP) return fail(protocol_error("unknown extent kind"));
  if ((m.ext_flags & DMU_EXT_NEW) && !(m.ext_flags & DMU_EXT_WRITABLE))
    return fail(protocol_error("NEW extent that is not writable"));
  const uint64_t bytes =
      std::min<uint64_t>(m.nr_blocks * block_size_, virtual_size_ - m.block * block_size_);
  return check_device_range(m.dev, m.sector * 512, bytes, "extent");
}

Result<void> InprocessTransport::check_copy(const dmu_response& m,
                                            const std::vector<dmu_response>& extents) const {
  const uint64_t sectors = ceil_div(virtual_size_, 512);
  if (m.nr_blocks == 0 || m.block >= sectors || m.nr_blocks > sectors - m.block || m.kind ||
      m.ext_flags || m.status || m.reserved)
    return fail(protocol_error("malformed COPY of sectors [" + std::to_string(m.block) + ", +" +
                               std::to_string(m.nr_blocks) + ")"));
  // The whole COPY must lie in one NEW extent of the same answer, as the
  // kernel checks (dmu_check_answer): a COPY spanning two adjacent extents
  // is refused there.
  const uint64_t per_block = block_size_ / 512;
  auto in = std::find_if(extents.begin(), extents.end(), [&](const dmu_response& e) {
    return (e.ext_flags & DMU_EXT_NEW) && m.block >= e.block * per_block &&
           m.block + m.nr_blocks <= (e.block + e.nr_blocks) * per_block;
  });
  if (in == extents.end())
    return fail(protocol_error("COPY of sectors [" + std::to_string(m.block) + ", +" +
                               std::to_string(m.nr_blocks) + ") outside every NEW extent"));
  return check_device_range(m.dev, m.sector * 512, m.nr_blocks * 512, "COPY source");
}

Result<InprocessTransport::Answer> InprocessTransport::exchange(const dmu_request& request) {
  std::vector<dmu_response> out;
  service_.handle(request, out);
  Answer a;
  bool final = false;
  for (const dmu_response& m : out) {
    if (m.type == DMU_RSP_INVALIDATE) {
      if (m.id || m.flags || m.nr_blocks == 0) return fail(protocol_error("malformed INVALIDATE"));
      erase(m.block, m.nr_blocks);
      ++stats_.invalidations;
      continue;
    }
    if (final) return fail(protocol_error("message after the FINAL one"));
    if (m.id != request.id) return fail(protocol_error("answer for an id that is not pending"));
    if (m.flags & ~uint32_t(DMU_RSP_FINAL)) return fail(protocol_error("unknown response flags"));
    final = m.flags & DMU_RSP_FINAL;
    switch (m.type) {
      case DMU_RSP_EXTENT:
        if (request.type != DMU_REQ_MAP || (request.flags & DMU_MAP_DISCARD))
          return fail(protocol_error("EXTENT answering a request that is not a MAP"));
        DMU_TRY(check_extent(m));
        a.extents.push_back(m);
        break;
      case DMU_RSP_COPY:
        a.copies.push_back(m);
        break;
      case DMU_RSP_COMPLETE:
      case DMU_RSP_COMMITTED:
        if ((m.type == DMU_RSP_COMMITTED) != (request.type == DMU_REQ_COMMIT))
          return fail(protocol_error("COMPLETE/COMMITTED answering the wrong request"));
        if (m.status > 0 || !final || !a.extents.empty() || !a.copies.empty())
          return fail(protocol_error("malformed COMPLETE/COMMITTED"));
        a.status = m.status;
        break;
      default:
        return fail(protocol_error("unknown response type " + std::to_string(m.type)));
    }
  }
  if (request.type == DMU_REQ_DONE) {
    if (final) return fail(protocol_error("an answer to DONE"));
    return a;
  }
  if (!final) return fail(protocol_error("answer without a FINAL message"));
  if (a.extents.size() + a.copies.size() > kMaxAnswerMessages)
    return fail(protocol_error("answer of " + std::to_string(a.extents.size() + a.copies.size()) +
                               " messages, more than " + std::to_string(kMaxAnswerMessages)));
  for (const dmu_response& c : a.copies) DMU_TRY(check_copy(c, a.extents));
  return a;
}

Result<InprocessTransport::Answer> InprocessTransport::map(uint64_t block, uint64_t nr_blocks,
                                                           uint32_t flags) {
  dmu_request r{};
  r.type = DMU_REQ_MAP;
  r.flags = flags;
  r.id = next_id_++;
  r.block = block;
  r.nr_blocks = nr_blocks;
  ++stats_.requests;
  auto answer = exchange(r);
  // The kernel sends DONE for every answered write or discard MAP, whatever
  // the answer (a discard's once no I/O through the old mappings is left,
  // which here is at once).
  const bool reports_done = flags & (DMU_MAP_WRITE | DMU_MAP_DISCARD);
  if (!answer && reports_done) (void)done(r, -EIO);
  if (!answer) return fail(answer.error());
  Answer a = std::move(*answer);
  a.id = r.id;
  a.request = r;
  if (a.status < 0 && reports_done) DMU_TRY(done(r, a.status));
  if (a.status < 0) return a;
  if (flags & DMU_MAP_DISCARD) {
    DMU_TRY(done(r, 0));
    return a;
  }
  for (const dmu_response& e : a.extents)
    insert(e.block,
           Extent{e.nr_blocks, e.kind, e.ext_flags & ~uint32_t(DMU_EXT_NEW), e.dev, e.sector});
  const auto* first = lookup(block);
  std::optional<Error> bad;
  if (!first)
    bad = protocol_error("answer does not cover block " + std::to_string(block));
  else if ((flags & DMU_MAP_WRITE) && !(first->second.flags & DMU_EXT_WRITABLE))
    bad = protocol_error("write answer maps block " + std::to_string(block) + " read-only");
  if (bad) {
    if (flags & DMU_MAP_WRITE) (void)done(r, -EIO);
    return fail(*bad);
  }
  const bool has_new = std::any_of(a.extents.begin(), a.extents.end(),
                                   [](const dmu_response& e) { return e.ext_flags & DMU_EXT_NEW; });
  if (has_new && !(flags & DMU_MAP_WRITE)) {  // nothing waits on it: fill all, then DONE
    auto filled = fill_new(a, 0, 0);
    DMU_TRY(done(r, filled ? 0 : -filled.error().code));
    DMU_TRY(filled);
  }
  return a;
}

Result<void> InprocessTransport::fill_new(const Answer& a, uint64_t skip_from, uint64_t skip_to) {
  const auto& devices = service_.devices();
  for (const dmu_response& e : a.extents) {
    if (!(e.ext_flags & DMU_EXT_NEW)) continue;
    const uint64_t e0 = e.block * block_size_;
    const uint64_t e1 = std::min<uint64_t>(virtual_size_, (e.block + e.nr_blocks) * block_size_);
    // The parts of [e0, e1) outside [skip_from, skip_to).
    const std::pair<uint64_t, uint64_t> parts[2] = {{e0, std::min(e1, std::max(e0, skip_from))},
                                                    {std::max(e0, std::min(e1, skip_to)), e1}};
    for (auto [x, y] : parts) {
      if (x >= y) continue;
      std::vector<uint8_t> buf(y - x, 0);
      for (const dmu_response& c : a.copies) {
        const uint64_t c0 = c.block * 512, c1 = (c.block + c.nr_blocks) * 512;
        const uint64_t from = std::max(x, c0), to = std::min(y, c1);
        if (from >= to) continue;
        DMU_ASSIGN_OR_RETURN(
            size_t got, devices[c.dev]->read_some(c.sector * 512 + (from - c0),
                                                  std::span(buf).subspan(from - x, to - from)));
        std::memset(buf.data() + (from - x) + got, 0, (to - from) - got);
        ++stats_.copies;
      }
      DMU_TRY(devices[e.dev]->write(e.sector * 512 + (x - e0), buf));
      written_.insert(e.dev);
    }
  }
  return {};
}

Result<void> InprocessTransport::done(const dmu_request& map, int status) {
  dmu_request r{};
  r.type = DMU_REQ_DONE;
  r.flags = map.flags;
  r.id = map.id;
  r.block = map.block;
  r.nr_blocks = map.nr_blocks;
  r.status = status;
  DMU_TRY(exchange(r));
  return {};
}

}  // namespace dmu::mapper

// --- guest I/O ---------------------------------------------------------------

namespace dmu::mapper {

namespace {
Error out_of_range(const std::string& name, const char* op, uint64_t offset, uint64_t length,
                   uint64_t size) {
  return Error{EINVAL, name + ": " + op + " of " + std::to_string(length) + " bytes at " +
                           std::to_string(offset) + " is outside the " + std::to_string(size) +
                           "-byte disk"};
}
}  // namespace

Result<void> InprocessTransport::read(uint64_t offset, std::span<uint8_t> out) {
  auto end = checked_add(offset, out.size());
  if (!end || *end > virtual_size_)
    return fail(out_of_range(service_.devices().front()->path(), "read", offset, out.size(),
                             virtual_size_));
  const auto& devices = service_.devices();
  for (uint64_t pos = offset; pos < *end;) {
    const uint64_t block = pos / block_size_;
    const auto* hit = lookup(block);
    if (hit) {
      ++stats_.hits;
    } else {
      DMU_ASSIGN_OR_RETURN(Answer a, map(block, ceil_div(*end, block_size_) - block, 0));
      if (a.status < 0)
        return fail(-a.status, devices.front()->path() + ": read at " + std::to_string(pos) +
                                   " failed: " + service_.last_error());
      hit = lookup(block);
    }
    const auto& [first, e] = *hit;
    const uint64_t extent_end = std::min(virtual_size_, (first + e.nr_blocks) * block_size_);
    const uint64_t n = std::min(*end, extent_end) - pos;
    std::span<uint8_t> part = out.subspan(pos - offset, n);
    if (e.kind == DMU_EXT_ZERO) {
      std::memset(part.data(), 0, n);
    } else {
      const uint64_t at = e.sector * 512 + (pos - first * block_size_);
      DMU_ASSIGN_OR_RETURN(size_t got, devices[e.dev]->read_some(at, part));
      if (got != n)  // check_extent keeps extents inside their devices
        return fail(EIO, devices[e.dev]->path() + ": short read at " + hex(at));
    }
    pos += n;
  }
  return {};
}

Result<void> InprocessTransport::write(uint64_t offset, std::span<const uint8_t> data) {
  auto end = checked_add(offset, data.size());
  if (!end || *end > virtual_size_)
    return fail(out_of_range(service_.devices().front()->path(), "write", offset, data.size(),
                             virtual_size_));
  const auto& devices = service_.devices();
  // Writes [pos, to) through cached writable extents (the caller checked them).
  auto write_cached = [&](uint64_t pos, uint64_t to) -> Result<void> {
    while (pos < to) {
      const auto& [first, e] = *lookup(pos / block_size_);
      const uint64_t n =
          std::min(to, std::min(virtual_size_, (first + e.nr_blocks) * block_size_)) - pos;
      DMU_TRY(devices[e.dev]->write(e.sector * 512 + (pos - first * block_size_),
                                    data.subspan(pos - offset, n)));
      written_.insert(e.dev);
      pos += n;
    }
    return {};
  };
  // How far from pos the cache maps writably without a gap.
  auto writable_until = [&](uint64_t pos) {
    while (pos < *end) {
      const auto* hit = lookup(pos / block_size_);
      if (!hit || hit->second.kind != DMU_EXT_REMAP || !(hit->second.flags & DMU_EXT_WRITABLE))
        break;
      pos = std::min(*end, (hit->first + hit->second.nr_blocks) * block_size_);
    }
    return pos;
  };

  for (uint64_t pos = offset; pos < *end;) {
    uint64_t to = writable_until(pos);
    if (to > pos) {
      ++stats_.hits;
      DMU_TRY(write_cached(pos, to));
      pos = to;
      continue;
    }
    const uint64_t block = pos / block_size_;
    DMU_ASSIGN_OR_RETURN(Answer a, map(block, ceil_div(*end, block_size_) - block, DMU_MAP_WRITE));
    if (a.status < 0)
      return fail(-a.status, devices.front()->path() + ": write at " + std::to_string(pos) +
                                 " failed: " + service_.last_error());
    // The kernel fills the NEW ranges around the waiting write, performs the
    // write, and only then reports DONE.
    to = writable_until(pos);
    auto written = fill_new(a, pos, to);
    if (written) written = write_cached(pos, to);
    DMU_TRY(done(a.request, written ? 0 : -written.error().code));
    DMU_TRY(written);
    pos = to;
  }
  return {};
}

Result<void> InprocessTransport::discard(uint64_t offset, uint64_t length) {
  auto end = checked_add(offset, length);
  if (!end || *end > virtual_size_)
    return fail(
        out_of_range(service_.devices().front()->path(), "discard", offset, length, virtual_size_));
  uint64_t first = ceil_div(offset, block_size_);
  uint64_t last = *end == virtual_size_ ? ceil_div(*end, block_size_) : *end / block_size_;
  if (first >= last) return {};
  erase(first, last - first);  // as the kernel does before asking
  DMU_ASSIGN_OR_RETURN(Answer a, map(first, last - first, DMU_MAP_DISCARD));
  if (a.status < 0)
    return fail(-a.status, service_.devices().front()->path() + ": discard at " +
                               std::to_string(offset) + " failed: " + service_.last_error());
  if (!a.extents.empty()) return fail(protocol_error("extents answering a discard"));
  return {};
}

Result<void> InprocessTransport::flush() {
  const auto& devices = service_.devices();
  for (unsigned dev : written_) DMU_TRY(devices[dev]->sync());
  written_.clear();
  dmu_request r{};
  r.type = DMU_REQ_COMMIT;
  r.id = next_id_++;
  DMU_ASSIGN_OR_RETURN(Answer a, exchange(r));
  if (a.status < 0)
    return fail(-a.status, devices.front()->path() + ": commit failed: " + service_.last_error());
  return {};
}

}  // namespace dmu::mapper
