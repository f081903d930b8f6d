// dmu map: where the guest data of an image lives, printed exactly as
// qemu-img map prints it (json: one object per line with start, length,
// depth, present, zero, data and, where the data has a plain place, offset;
// adjacent entries merged by qemu-img's rule).
#include <sys/stat.h>
#include <unistd.h>

#include <cinttypes>
#include <cstdio>
#include <iostream>

#include "cli/cli_common.h"

namespace dmu::cli {

extern const Command kMap;

namespace {

struct Entry {
  uint64_t start = 0, length = 0;
  unsigned depth = 0;
  bool present = false, zero = false, data = false;
  bool has_offset = false;
  uint64_t offset = 0;
  std::string file;  // for human output
};

bool continues(const Entry& a, const Entry& b) {
  return a.depth == b.depth && a.present == b.present && a.zero == b.zero && a.data == b.data &&
         a.has_offset == b.has_offset && a.file == b.file &&
         (!a.has_offset || a.offset + a.length == b.offset);
}

void add(std::vector<Entry>& entries, const Entry& e) {
  if (!entries.empty() && continues(entries.back(), e)) {
    entries.back().length += e.length;
    return;
  }
  entries.push_back(e);
}

// Splits a data range of a linearly mapped file at its holes, as QEMU's file
// driver reports them (SEEK_DATA / SEEK_HOLE).  Returns (length, is_hole)
// pieces; the whole range as data when the file cannot tell.
std::vector<std::pair<uint64_t, bool>> holes(int fd, uint64_t offset, uint64_t length) {
  std::vector<std::pair<uint64_t, bool>> pieces;
  const uint64_t end = offset + length;
  for (uint64_t pos = offset; pos < end;) {
    off_t data = fd >= 0 ? ::lseek(fd, off_t(pos), SEEK_DATA) : off_t(pos);
    if (data < 0 && errno == ENXIO) {  // only a hole up to the end of the file
      pieces.emplace_back(end - pos, true);
      break;
    }
    if (data < 0) {
      pieces.emplace_back(end - pos, false);
      break;
    }
    if (uint64_t(data) > pos) {
      const uint64_t n = std::min(end, uint64_t(data)) - pos;
      pieces.emplace_back(n, true);
      pos += n;
      continue;
    }
    off_t hole = ::lseek(fd, off_t(pos), SEEK_HOLE);
    uint64_t n = hole < 0 ? end - pos : std::min(end, uint64_t(hole)) - pos;
    if (n == 0) n = end - pos;
    pieces.emplace_back(n, false);
    pos += n;
  }
  return pieces;
}

// QEMU's qcow2 looks through data clusters at the file's holes when the
// image seems to have been created with preallocation=metadata
// (qcow2_detect_metadata_preallocation: far more clusters in the image file
// than blocks allocated to it; the image file, not an external data file).
bool metadata_preallocated(const formats::ImageInfo& info) {
  if (info.format != "qcow2" || !info.cluster_size) return false;
  struct stat st {};
  if (::stat(info.filename.c_str(), &st) != 0) return false;
  const uint64_t real = uint64_t(st.st_blocks) * 512 / info.cluster_size;
  const uint64_t threshold = std::max(real * 10 / 9, real + 2);
  return (uint64_t(st.st_size) + info.cluster_size - 1) / info.cluster_size > threshold;
}

Result<std::vector<Entry>> collect(formats::Chain& chain) {
  std::vector<Entry> entries;
  const uint64_t size = chain.virtual_size();
  for (uint64_t pos = 0; pos < size;) {
    DMU_ASSIGN_OR_RETURN(formats::ChainMapping m, chain.map(pos, size - pos));
    Entry e;
    e.start = pos;
    e.length = m.length;
    e.depth = m.depth;
    e.present = m.present;
    switch (m.kind) {
      case formats::ChainMapping::Kind::Zero:
        e.zero = true;
        if (m.present && chain.images()[m.depth]->info().format == "raw") {
          // A hole of a raw file: qemu-img shows where it is (the same offset).
          e.has_offset = true;
          e.offset = pos;
          e.file = chain.images()[m.depth]->info().filename;
        }
        add(entries, e);
        break;
      case formats::ChainMapping::Kind::Compressed:
        e.data = true;
        add(entries, e);
        break;
      case formats::ChainMapping::Kind::Data: {
        File* file = chain.devices()[m.device];
        e.data = true;
        e.has_offset = true;
        e.file = file->path();
        const auto& info = chain.images()[m.depth]->info();
        if (!formats::maps_linearly(info) && !metadata_preallocated(info)) {
          e.offset = m.host_offset;
          add(entries, e);
          break;
        }
        // QEMU looks through raw files, flat extents and preallocated qcow2
        // clusters at their holes: raw reports holes as zeros without data,
        // the others as zero data.
        uint64_t done = 0;
        for (auto [n, hole] : holes(file->fd(), m.host_offset, m.length)) {
          Entry piece = e;
          piece.start = pos + done;
          piece.length = n;
          piece.offset = m.host_offset + done;
          piece.zero = hole;
          piece.data = !hole || info.format != "raw";
          add(entries, piece);
          done += n;
        }
        break;
      }
    }
    pos += m.length;
  }
  return entries;
}

}  // namespace

int map_main(const std::vector<std::string>& args) {
  po::options_description options("options");
  options.add_options()("output", po::value<std::string>()->default_value("human"),
                        "human or json")("format,f", po::value<std::string>(),
                                         "image format (probed if absent)")(
      "image", po::value<std::string>()->required(), "the image");
  po::positional_options_description positional;
  positional.add("image", 1);
  int code = kExitOk;
  auto vm = parse_args(args, kMap, options, positional, &code);
  if (!vm) return code;
  const std::string image = (*vm)["image"].as<std::string>();
  const std::string output = (*vm)["output"].as<std::string>();
  if (output != "human" && output != "json")
    return report(Error{EINVAL, "map: --output must be human or json, not '" + output + "'"});
  std::optional<std::string> format;
  if (vm->count("format")) format = (*vm)["format"].as<std::string>();

  auto chain = open_chain(image, format, formats::Access::ReadOnly, true);
  if (!chain) return report(chain.error());
  auto entries = collect(**chain);
  if (!entries) return report(entries.error());

  if (output == "json") {
    std::printf("[");
    for (size_t i = 0; i < entries->size(); ++i) {
      const Entry& e = (*entries)[i];
      std::printf("{ \"start\": %" PRIu64 ", \"length\": %" PRIu64
                  ", \"depth\": %u, "
                  "\"present\": %s, \"zero\": %s, \"data\": %s",
                  e.start, e.length, e.depth, e.present ? "true" : "false",
                  e.zero ? "true" : "false", e.data ? "true" : "false");
      if (e.has_offset) std::printf(", \"offset\": %" PRIu64, e.offset);
      std::printf("}%s", i + 1 < entries->size() ? ",\n" : "");
    }
    std::printf("]\n");
    return kExitOk;
  }
  for (const Entry& e : *entries)
    if (e.data && !e.has_offset)
      return report(Error{ENOTSUP, image + ": contains compressed clusters, which have no place to "
                                           "show; use --output=json"});
  std::printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
  for (const Entry& e : *entries)
    if (e.data && !e.zero)
      std::printf("%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n", e.start, e.length, e.offset,
                  e.file.c_str());
  return kExitOk;
}

}  // namespace dmu::cli
