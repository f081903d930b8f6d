// The VMDK descriptor tokenizer and writer (see descriptor.h).
#include "formats/vmdk/descriptor.h"

#include <cstdio>

namespace dmu::formats::vmdk {
namespace {

bool is_space(char c) {
  return c == ' ' || c == '\t';
}
bool is_digit(char c) {
  return c >= '0' && c <= '9';
}
bool is_key_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) || c == '.' || c == '_' ||
         c == '-';
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

// Text from a hostile file, fit for one line of an error message.
std::string shown(std::string_view s) {
  std::string out;
  for (char c : s.substr(0, 60)) out += (c >= 0x20 && c < 0x7f) ? c : '?';
  if (s.size() > 60) out += "...";
  return out;
}

std::optional<uint64_t> parse_decimal(std::string_view s) {
  if (s.empty() || s.size() > 20) return std::nullopt;
  uint64_t v = 0;
  for (char c : s) {
    if (!is_digit(c)) return std::nullopt;
    if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, uint64_t(c - '0'), &v))
      return std::nullopt;
  }
  return v;
}

std::optional<uint32_t> parse_hex32(std::string_view s) {
  if (s.empty() || s.size() > 8) return std::nullopt;
  uint32_t v = 0;
  for (char c : s) {
    int d = is_digit(c)              ? c - '0'
            : (c >= 'a' && c <= 'f') ? c - 'a' + 10
            : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                                     : -1;
    if (d < 0) return std::nullopt;
    v = v << 4 | uint32_t(d);
  }
  return v;
}

const char* const kExtentTypes[] = {"FLAT",       "SPARSE",  "ZERO",    "VMFS",
                                    "VMFSSPARSE", "VMFSRDM", "VMFSRAW", "SESPARSE"};

class Parser {
 public:
  Parser(std::string_view text, const std::string& path) : text_(text), path_(path) {}

  Result<Descriptor> run() {
    if (text_.size() > kMaxDescriptorBytes)
      return fail(EFBIG, path_ + ": descriptor larger than " + std::to_string(kMaxDescriptorBytes) +
                             " bytes");
    size_t pos = 0;
    while (pos < text_.size()) {
      size_t eol = text_.find('\n', pos);
      if (eol == std::string_view::npos) eol = text_.size();
      std::string_view line = text_.substr(pos, eol - pos);
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (++line_no_ > kMaxDescriptorLines)
        return fail(EFBIG, path_ + ": descriptor has more than " +
                               std::to_string(kMaxDescriptorLines) + " lines");
      DMU_TRY(parse_line(line, pos));
      pos = eol + 1;
    }
    DMU_TRY(finish());
    return std::move(d_);
  }

 private:
  tl::unexpected<Error> bad(const std::string& what) const {
    return fail(EINVAL, path_ + ": descriptor line " + std::to_string(line_no_) + ": " + what);
  }

  Result<void> parse_line(std::string_view raw, size_t line_start) {
    std::string_view line = trim(raw);
    if (line.empty() || line.front() == '#') return {};
    size_t word_end = 0;
    while (word_end < line.size() && !is_space(line[word_end]) && line[word_end] != '=') ++word_end;
    std::string_view word = line.substr(0, word_end);
    if ((word == "RW" || word == "RDONLY" || word == "NOACCESS") && word_end < line.size() &&
        is_space(line[word_end]))
      return parse_extent(line);
    size_t eq = line.find('=');
    if (eq == std::string_view::npos) return bad("cannot parse '" + shown(line) + "'");
    return parse_key(line, eq, line_start + size_t(line.data() - raw.data()));
  }

  // `offset` is where `line` starts in the whole text (for the CID position).
  Result<void> parse_key(std::string_view line, size_t eq, size_t offset) {
    std::string_view key = trim(line.substr(0, eq));
    if (key.empty() || key.size() > 256) return bad("bad key in '" + shown(line) + "'");
    for (char c : key)
      if (!is_key_char(c)) return bad("bad character in key '" + shown(key) + "'");
    std::string_view after = line.substr(eq + 1);
    std::string_view value = trim(after);
    size_t value_pos = offset + size_t(value.data() - line.data());
    if (!value.empty() && value.front() == '"') {
      if (value.size() < 2 || value.back() != '"')
        return bad("unterminated quoted value for '" + std::string(key) + "'");
      value = value.substr(1, value.size() - 2);
      ++value_pos;
      if (value.find('"') != std::string_view::npos)
        return bad("stray quote in the value of '" + std::string(key) + "'");
    } else {
      for (char c : value)
        if (is_space(c) || c == '"')
          return bad("unquoted value of '" + std::string(key) + "' has spaces or quotes");
    }
    if (value.size() > 4096) return bad("value of '" + std::string(key) + "' is too long");
    if (!d_.keys.emplace(std::string(key), std::string(value)).second)
      return bad("key '" + std::string(key) + "' appears twice");
    if (key == "CID") {
      d_.cid_pos = value_pos;
      d_.cid_len = value.size();
    }
    return {};
  }

  Result<void> parse_extent(std::string_view line) {
    if (d_.extents.size() >= kMaxExtents)
      return bad("more than " + std::to_string(kMaxExtents) + " extents");
    std::vector<std::string_view> tokens;
    size_t i = 0;
    while (i < line.size()) {
      while (i < line.size() && is_space(line[i])) ++i;
      if (i >= line.size()) break;
      size_t start = i;
      if (line[i] == '"') {
        size_t close = line.find('"', i + 1);
        if (close == std::string_view::npos) return bad("unterminated file name in extent line");
        tokens.push_back(line.substr(start, close + 1 - start));
        i = close + 1;
        if (i < line.size() && !is_space(line[i])) return bad("junk after the file name");
        continue;
      }
      while (i < line.size() && !is_space(line[i])) ++i;
      tokens.push_back(line.substr(start, i - start));
    }
    DescriptorExtent e;
    e.line = line_no_;
    e.access = std::string(tokens[0]);
    if (tokens.size() < 3) return bad("extent line needs access, size and type");
    auto sectors = parse_decimal(tokens[1]);
    if (!sectors || *sectors == 0)
      return bad("bad extent size '" + shown(tokens[1]) + "' (sectors, decimal, > 0)");
    e.sectors = *sectors;
    e.type = std::string(tokens[2]);
    bool known = false;
    for (const char* t : kExtentTypes) known |= e.type == t;
    if (!known) return bad("unknown extent type '" + shown(e.type) + "'");
    if (tokens.size() > 3) {
      std::string_view name = tokens[3];
      if (name.size() < 2 || name.front() != '"')
        return bad("extent file name must be quoted, got '" + shown(name) + "'");
      name = name.substr(1, name.size() - 2);
      if (name.empty()) return bad("empty extent file name");
      if (name.size() > 1024) return bad("extent file name is too long");
      e.filename = std::string(name);
    }
    if (tokens.size() > 4) {
      auto offset = parse_decimal(tokens[4]);
      if (!offset) return bad("bad extent offset '" + shown(tokens[4]) + "'");
      e.offset = *offset;
    }
    if (tokens.size() > 5) return bad("junk after the extent offset: '" + shown(tokens[5]) + "'");
    if (e.type != "ZERO" && e.filename.empty()) return bad(e.type + " extent without a file name");
    if (e.type == "FLAT" && !e.offset) return bad("FLAT extent without an offset");
    if ((e.type == "SPARSE" || e.type == "VMFSSPARSE" || e.type == "SESPARSE") && e.offset)
      return bad(e.type + " extent with an offset");
    d_.extents.push_back(std::move(e));
    return {};
  }

  Result<void> finish() {
    auto cid = d_.keys.find("CID");
    auto pcid = d_.keys.find("parentCID");
    if (cid == d_.keys.end()) return fail(EINVAL, path_ + ": descriptor has no CID");
    if (pcid == d_.keys.end()) return fail(EINVAL, path_ + ": descriptor has no parentCID");
    auto c = parse_hex32(cid->second), p = parse_hex32(pcid->second);
    if (!c) return fail(EINVAL, path_ + ": descriptor CID '" + shown(cid->second) + "' is not hex");
    if (!p)
      return fail(EINVAL,
                  path_ + ": descriptor parentCID '" + shown(pcid->second) + "' is not hex");
    d_.cid = *c;
    d_.parent_cid = *p;
    if (auto t = d_.keys.find("createType"); t != d_.keys.end()) d_.create_type = t->second;
    if (auto h = d_.keys.find("parentFileNameHint"); h != d_.keys.end() && !h->second.empty())
      d_.parent_hint = h->second;
    return {};
  }

  std::string_view text_;
  const std::string& path_;
  size_t line_no_ = 0;
  Descriptor d_;
};

}  // namespace

Result<Descriptor> parse_descriptor(std::string_view text, const std::string& path) {
  if (size_t nul = text.find('\0'); nul != std::string_view::npos) text = text.substr(0, nul);
  return Parser(text, path).run();
}

std::string build_descriptor(const DescriptorSpec& s) {
  char cid[16], pcid[16];
  std::snprintf(cid, sizeof cid, "%x", s.cid);
  std::snprintf(pcid, sizeof pcid, "%x", s.parent_cid);
  // VMware's geometry: 63 sectors a track, 16 heads for IDE, 255 otherwise.
  uint64_t heads = s.adapter_type == "ide" ? 16 : 255;
  std::string out;
  out += "# Disk DescriptorFile\n";
  out += "version=1\n";
  out += std::string("CID=") + cid + "\n";
  out += std::string("parentCID=") + pcid + "\n";
  out += "createType=\"" + s.create_type + "\"\n";
  if (s.parent_hint) out += "parentFileNameHint=\"" + *s.parent_hint + "\"";
  out += "\n";
  out += "# Extent description\n";
  for (const auto& line : s.extent_lines) out += line + "\n";
  out += "\n";
  out += "# The Disk Data Base\n";
  out += "#DDB\n";
  out += "\n";
  out += "ddb.virtualHWVersion = \"" + s.hw_version + "\"\n";
  out += "ddb.geometry.cylinders = \"" + std::to_string(s.size / (63 * heads * 512)) + "\"\n";
  out += "ddb.geometry.heads = \"" + std::to_string(heads) + "\"\n";
  out += "ddb.geometry.sectors = \"63\"\n";
  out += "ddb.adapterType = \"" + s.adapter_type + "\"\n";
  out += "ddb.toolsVersion = \"" + s.tools_version + "\"\n";
  return out;
}

}  // namespace dmu::formats::vmdk
