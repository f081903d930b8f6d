// The flush auditor's vocabulary: stamps and their pattern, mark texts, the
// writer's journal and the model daemon's map slots.
#include "tests/kmod/flush_audit.h"

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "common/checked.h"
#include "common/endian.h"

namespace dmu::testd::audit {
namespace {

uint64_t mix64(uint64_t z) {  // splitmix64's finalizer
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// The pattern after a stamp: a splitmix64 stream seeded from every field,
// so a block moved, torn or left from another write or run never matches.
void fill_pattern(const model::Stamp& s, uint8_t* p, size_t len) {
  uint64_t x = mix64(s.run ^ 0x6a09e667f3bcc908ULL);
  x = mix64(x ^ s.thread);
  x = mix64(x ^ s.seq);
  x = mix64(x ^ s.offset);
  for (size_t i = 0; i + 8 <= len; i += 8) {
    x += 0x9e3779b97f4a7c15ULL;
    store_le64(p + i, mix64(x));
  }
}

constexpr size_t kStampBytes = sizeof(model::Stamp);
static_assert((kUnit - kStampBytes) % 8 == 0);

void encode_stamp(const model::Stamp& s, uint8_t* p) {
  std::memcpy(p, s.magic, 8);
  store_le32(p + 8, s.thread);
  store_le32(p + 12, s.reserved);
  store_le64(p + 16, s.seq);
  store_le64(p + 24, s.offset);
  store_le64(p + 32, s.run);
}

model::Stamp decode_stamp(const uint8_t* p) {
  model::Stamp s{};
  std::memcpy(s.magic, p, 8);
  s.thread = load_le32(p + 8);
  s.reserved = load_le32(p + 12);
  s.seq = load_le64(p + 16);
  s.offset = load_le64(p + 24);
  s.run = load_le64(p + 32);
  return s;
}

template <class T>
bool parse_number(std::string_view s, T& out) {
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && p == s.data() + s.size();
}

}  // namespace

// ---- stamps ----------------------------------------------------------------

model::Stamp make_stamp(uint32_t thread, uint64_t seq, uint64_t offset, uint64_t run) {
  model::Stamp s{};
  std::memcpy(s.magic, model::kStampMagic, sizeof s.magic);
  s.thread = thread;
  s.seq = seq;
  s.offset = offset;
  s.run = run;
  return s;
}

void fill_unit(const model::Stamp& stamp, std::span<uint8_t, kUnit> unit) {
  encode_stamp(stamp, unit.data());
  fill_pattern(stamp, unit.data() + kStampBytes, kUnit - kStampBytes);
}

Decoded decode_unit(std::span<const uint8_t, kUnit> unit) {
  Decoded d;
  if (std::memcmp(unit.data(), model::kStampMagic, sizeof model::kStampMagic) == 0) {
    d.stamp = decode_stamp(unit.data());
    uint8_t expect[kUnit - kStampBytes];
    fill_pattern(d.stamp, expect, sizeof expect);
    const bool ok =
        d.stamp.reserved == 0 && std::memcmp(unit.data() + kStampBytes, expect, sizeof expect) == 0;
    d.kind = ok ? UnitKind::Stamped : UnitKind::Corrupt;
    return d;
  }
  const bool zero = std::all_of(unit.begin(), unit.end(), [](uint8_t b) { return b == 0; });
  d.kind = zero ? UnitKind::Zero : UnitKind::Other;
  return d;
}

// ---- marks -----------------------------------------------------------------

std::string mark_text(SyncMark m) {
  return "synced-" + std::to_string(m.thread) + "-" + std::to_string(m.seq);
}

std::optional<SyncMark> parse_mark(std::string_view text) {
  constexpr std::string_view kPrefix = "synced-";
  if (text.substr(0, kPrefix.size()) != kPrefix) return std::nullopt;
  text.remove_prefix(kPrefix.size());
  const size_t dash = text.find('-');
  if (dash == std::string_view::npos) return std::nullopt;
  SyncMark m;
  if (!parse_number(text.substr(0, dash), m.thread) || !parse_number(text.substr(dash + 1), m.seq))
    return std::nullopt;
  return m;
}

// ---- journal ---------------------------------------------------------------

Result<void> write_journal(const std::string& path, const Journal& j) {
  std::FILE* f = std::fopen(path.c_str(), "w");
  if (!f) return fail(errno_error(path));
  std::fprintf(
      f, "# dmu-flush-audit journal 1\nrun %016" PRIx64 " block-size %" PRIu64 " threads %u\n",
      j.run, j.block_size, j.threads);
  // Both record kinds in completion order.
  size_t w = 0, s = 0;
  while (w < j.writes.size() || s < j.syncs.size()) {
    if (s == j.syncs.size() || (w < j.writes.size() && j.writes[w].order < j.syncs[s].order)) {
      const auto& r = j.writes[w++];
      std::fprintf(f, "w %u %" PRIu64 " %" PRIu64 " %" PRIu64 "\n", r.thread, r.seq, r.offset,
                   r.order);
    } else {
      const auto& r = j.syncs[s++];
      std::fprintf(f, "s %u %" PRIu64 " %" PRIu64 "\n", r.thread, r.seq, r.order);
    }
  }
  const bool bad = std::ferror(f) != 0;
  if (std::fclose(f) != 0 || bad) return fail(errno_error(path + ": write"));
  return {};
}

Result<Journal> read_journal(const std::string& path) {
  std::ifstream in(path);
  if (!in) return fail(errno_error(path));
  Journal j;
  std::string line;
  uint64_t n = 0;
  bool header = false;
  auto bad = [&](const std::string& what) {
    return fail(EINVAL, path + ": line " + std::to_string(n) + ": " + what);
  };
  while (std::getline(in, line)) {
    ++n;
    if (line.empty() || line[0] == '#') continue;
    std::istringstream ls(line);
    std::string kind;
    ls >> kind;
    if (kind == "run") {
      std::string run, k1, k2;
      ls >> run >> k1 >> j.block_size >> k2 >> j.threads;
      if (!ls || k1 != "block-size" || k2 != "threads" || run.size() > 16 ||
          std::from_chars(run.data(), run.data() + run.size(), j.run, 16).ptr !=
              run.data() + run.size())
        return bad("expected 'run <hex> block-size <bytes> threads <n>'");
      header = true;
    } else if (kind == "w") {
      JournalWrite w;
      ls >> w.thread >> w.seq >> w.offset >> w.order;
      if (!ls) return bad("expected 'w <thread> <seq> <offset> <order>'");
      j.writes.push_back(w);
    } else if (kind == "s") {
      JournalSync s;
      ls >> s.thread >> s.seq >> s.order;
      if (!ls) return bad("expected 's <thread> <seq> <order>'");
      j.syncs.push_back(s);
    } else {
      return bad("unknown record '" + kind + "'");
    }
  }
  if (in.bad()) return fail(errno_error(path + ": read"));
  if (!header) return fail(EINVAL, path + ": not a dmu-flush-audit journal (no run line)");
  if (j.block_size == 0 || j.block_size % kUnit)
    return fail(EINVAL, path + ": block size " + std::to_string(j.block_size) +
                            " is not a multiple of 4096");
  return j;
}

// ---- the model daemon's map --------------------------------------------------

std::optional<uint64_t> ModelMap::cluster_of(uint64_t vblock) const {
  auto it = std::lower_bound(entries.begin(), entries.end(), vblock,
                             [](const model::Entry& e, uint64_t v) { return e.vblock < v; });
  if (it == entries.end() || it->vblock != vblock) return std::nullopt;
  return it->cluster;
}

Result<ModelMap> parse_slot(unsigned slot,
                            const std::function<void(uint64_t, std::span<uint8_t>)>& read) {
  uint8_t sb[sizeof(model::Superblock)];
  read(0, sb);
  ModelMap m;
  m.slot = slot;
  m.generation = load_le64(sb + 8);
  m.block_bytes = load_le64(sb + 16);
  const uint64_t nr = load_le64(sb + 24);
  m.data_start = load_le64(sb + 32);
  const uint32_t crc = load_le32(sb + 40);
  // The same checks as the model daemon's own loader (model_slots.cc), so
  // the map checked here is the one it would recover after a crash.
  if (std::memcmp(sb, model::kMagic, sizeof model::kMagic) != 0) return fail(EINVAL, "no magic");
  if (m.block_bytes < 512 || !is_power_of_two(m.block_bytes))
    return fail(EINVAL, "block_bytes " + std::to_string(m.block_bytes));
  if (nr > model::kMaxEntries) return fail(EINVAL, "nr_entries " + std::to_string(nr));
  if (m.data_start != model::kDataStart)
    return fail(EINVAL, "data_start " + std::to_string(m.data_start));
  std::vector<uint8_t> raw(nr * sizeof(model::Entry));
  if (!raw.empty()) read(model::kSuperBytes, raw);
  store_le32(sb + 40, 0);
  uLong c = ::crc32(0L, Z_NULL, 0);
  c = ::crc32(c, sb, sizeof sb);
  c = ::crc32(c, raw.data(), static_cast<uInt>(raw.size()));
  if (static_cast<uint32_t>(c) != crc)
    return fail(EINVAL, "generation " + std::to_string(m.generation) + ": crc " + hex(crc) +
                            ", computed " + hex(static_cast<uint32_t>(c)));
  m.entries.resize(nr);
  for (uint64_t i = 0; i < nr; ++i) {
    m.entries[i] = {load_le64(&raw[i * 16]), load_le64(&raw[i * 16 + 8])};
    if (i > 0 && m.entries[i].vblock <= m.entries[i - 1].vblock)
      return fail(EINVAL, "generation " + std::to_string(m.generation) +
                              ": entries not sorted at entry " + std::to_string(i));
  }
  return m;
}

// ---- reporting -------------------------------------------------------------------

const char* problem_name(Problem p) {
  switch (p) {
    case Problem::Stale:
      return "stale seq";
    case Problem::NoStamp:
      return "no stamp";
    case Problem::Corrupt:
      return "corrupt";
    case Problem::WrongRun:
      return "wrong run";
    case Problem::Misplaced:
      return "misplaced";
    case Problem::Unmapped:
      return "unmapped";
    case Problem::NoMap:
      return "no map";
    case Problem::LateWrite:
      return "late write";
    case Problem::MissingMark:
      return "missing mark";
  }
  return "?";
}

std::string Failure::line() const {
  std::string s =
      "FAIL mark " + mark + " (" +
      (entry == UINT64_MAX ? std::string("not in the log") : "log entry " + std::to_string(entry)) +
      "): thread " + std::to_string(thread);
  if (problem != Problem::MissingMark) s += " offset " + hex(offset);
  s += std::string(": ") + problem_name(problem);
  if (!detail.empty()) s += ": " + detail;
  return s;
}

std::string Report::summary() const {
  return "dmu-flush-audit: marks=" + std::to_string(marks) + " checked=" + std::to_string(checked) +
         " failures=" + std::to_string(failure_count);
}

}  // namespace dmu::testd::audit
