// Names of the test daemon's modes and hostile kinds, as the command line and
// the event log spell them.
#include "tests/kmod/daemon_config.h"

#include <charconv>

namespace dmu::testd {
namespace {

struct ModeName {
  Mode mode;
  std::string_view name;
};
constexpr ModeName kModes[] = {{Mode::Identity, "identity"}, {Mode::Zero, "zero"},
                               {Mode::Copy, "copy"},         {Mode::Error, "error"},
                               {Mode::Hostile, "hostile"},   {Mode::Model, "model"}};

struct HostileName {
  HostileKind kind;
  std::string_view name;
};
constexpr HostileName kHostile[] = {
    {HostileKind::BadDevice, "bad-dev"},
    {HostileKind::PastEnd, "past-end"},
    {HostileKind::ZeroLength, "zero-length"},
    {HostileKind::Overlong, "overlong"},
    {HostileKind::UnknownId, "unknown-id"},
    {HostileKind::DuplicateFinal, "duplicate-final"},
    {HostileKind::Truncated, "truncated"},
    {HostileKind::Garbage, "garbage"},
    {HostileKind::Reserved, "reserved"},
    {HostileKind::CopyOutsideNew, "copy-outside-new"},
    {HostileKind::ExtentBlockWrap, "extent-block-wrap"},
    {HostileKind::ExtentSectorWrap, "extent-sector-wrap"},
    {HostileKind::CopyWrap, "copy-wrap"},
    {HostileKind::InvalidateWrap, "invalidate-wrap"},
    {HostileKind::WritableReadOnly, "writable-readonly"},
    {HostileKind::AnswerTooLong, "answer-too-long"},
    {HostileKind::PushOpenLimit, "push-open-limit"},
    {HostileKind::PushTooLong, "push-too-long"},
    {HostileKind::PushFillLimit, "push-fill-limit"},
    {HostileKind::NewOverBusy, "new-over-busy"},
    {HostileKind::PushNewOverBusy, "push-new-over-busy"},
    {HostileKind::OpenMsgsLimit, "open-msgs-limit"},
    {HostileKind::PushAcrossReload, "push-across-reload"},
    {HostileKind::PushFlood, "push-flood"},
};

bool parse_u64(std::string_view s, uint64_t& out) {
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && p == s.data() + s.size();
}

}  // namespace

std::string_view mode_name(Mode m) {
  for (const auto& e : kModes)
    if (e.mode == m) return e.name;
  return "?";
}

std::optional<Mode> parse_mode(std::string_view name) {
  for (const auto& e : kModes)
    if (e.name == name) return e.mode;
  return std::nullopt;
}

std::string_view hostile_name(HostileKind k) {
  for (const auto& e : kHostile)
    if (e.kind == k) return e.name;
  return "?";
}

std::optional<HostileKind> parse_hostile(std::string_view name) {
  for (const auto& e : kHostile)
    if (e.name == name) return e.kind;
  return std::nullopt;
}

std::optional<BlockRange> parse_block_range(std::string_view text) {
  auto colon = text.find(':');
  if (colon == std::string_view::npos) return std::nullopt;
  BlockRange r;
  if (!parse_u64(text.substr(0, colon), r.start) || !parse_u64(text.substr(colon + 1), r.count))
    return std::nullopt;
  if (r.count == 0 || r.start + r.count < r.start) return std::nullopt;
  return r;
}

}  // namespace dmu::testd
