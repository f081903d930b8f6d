// Helpers for the qcow2 engine tests: the caller's side of the Image
// protocol (reads through map/data files/read_compressed, writes through
// prepare_write/fill/write/write_done) done directly on one image, and the
// qemu-img/qemu-io oracle.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/checked.h"
#include "fileio/file.h"
#include "formats/image.h"
#include "formats/qcow2/qcow2_image.h"
#include "tests/support/test_support.h"

namespace dmu::qcow2_test {

using formats::Image;
using formats::MapKind;

// Reads guest bytes that are Unallocated in the image (the backing file).
using BackingReader = std::function<void(uint64_t offset, std::span<uint8_t> out)>;

inline void zeros(uint64_t, std::span<uint8_t> out) {
  std::fill(out.begin(), out.end(), 0);
}

inline std::string describe(const Error& e) {
  return e.message;
}

// Guest bytes [offset, offset + out.size()) as the caller of the interface
// would read them.
inline Result<void> try_read_guest(Image& im, uint64_t offset, std::span<uint8_t> out,
                                   const BackingReader& backing = zeros) {
  uint64_t done = 0;
  while (done < out.size()) {
    DMU_ASSIGN_OR_RETURN(formats::Mapping m, im.map(offset + done, out.size() - done));
    if (m.length == 0) return fail(EIO, "map answered an empty mapping");
    auto part = out.subspan(done, std::min<uint64_t>(m.length, out.size() - done));
    switch (m.kind) {
      case MapKind::Data: {
        File* f = im.data_files().at(m.file);
        DMU_ASSIGN_OR_RETURN(size_t n, f->read_some(m.host_offset, part));
        std::fill(part.begin() + long(n), part.end(), 0);
        break;
      }
      case MapKind::Zero:
        std::fill(part.begin(), part.end(), 0);
        break;
      case MapKind::Unallocated:
        backing(offset + done, part);
        break;
      case MapKind::Compressed:
        DMU_TRY(im.read_compressed(offset + done, part));
        break;
    }
    done += part.size();
  }
  return {};
}

inline void read_guest(Image& im, uint64_t offset, std::span<uint8_t> out,
                       const BackingReader& backing = zeros) {
  auto r = try_read_guest(im, offset, out, backing);
  ASSERT_TRUE(r) << r.error().message;
}

inline std::vector<uint8_t> read_all(Image& im, const BackingReader& backing = zeros) {
  std::vector<uint8_t> out(im.info().virtual_size);
  read_guest(im, 0, out, backing);
  return out;
}

// One guest write through the protocol of formats/image.h.
inline Result<void> try_write_guest(Image& im, uint64_t offset, std::span<const uint8_t> data,
                                    const BackingReader& backing = zeros) {
  const uint64_t end = offset + data.size();
  const uint64_t cs = im.info().cluster_size;
  uint64_t pos = offset;
  while (pos < end) {
    // Step 1: the old contents of every cluster the target may cover.
    uint64_t hull_start = pos - pos % cs;
    uint64_t hull_end = std::min(*align_up(end, cs), im.info().virtual_size);
    std::vector<uint8_t> old(hull_end - hull_start);
    DMU_TRY(try_read_guest(im, hull_start, old, backing));
    DMU_ASSIGN_OR_RETURN(formats::WriteTarget t, im.prepare_write(pos, end - pos));
    if (t.offset > pos || t.offset + t.length <= pos || t.offset < hull_start ||
        t.offset + t.length > hull_end)
      return fail(EINVAL, "prepare_write answered a target outside the asked clusters");
    File* f = im.data_files().at(t.file);
    const uint64_t a = std::max(pos, t.offset), b = std::min(end, t.offset + t.length);
    if (t.fresh) {
      std::vector<uint8_t> buf(old.begin() + long(t.offset - hull_start),
                               old.begin() + long(t.offset - hull_start + t.length));
      std::memcpy(buf.data() + (a - t.offset), data.data() + (a - offset), b - a);
      auto w = f->write(t.host_offset, buf);
      if (!w) {
        (void)im.write_done(t.token, false);
        return w;
      }
    } else {
      auto w = f->write(t.host_offset + (a - t.offset), data.subspan(a - offset, b - a));
      if (!w) {
        (void)im.write_done(t.token, false);
        return w;
      }
    }
    DMU_TRY(im.write_done(t.token, true));
    pos = b;
  }
  return {};
}

inline void write_guest(Image& im, uint64_t offset, std::span<const uint8_t> data,
                        const BackingReader& backing = zeros) {
  auto r = try_write_guest(im, offset, data, backing);
  ASSERT_TRUE(r) << r.error().message;
}

inline std::vector<uint8_t> pattern(size_t n, uint8_t p) {
  return std::vector<uint8_t>(n, p);
}

// The raw guest bytes according to qemu-img (convert -O raw).
// qemu-img runs in the image's directory: QEMU 7 resolves external data
// file names relative to its working directory.
inline std::string in_dir_of(const std::string& image, const std::string& command) {
  auto slash = image.rfind('/');
  std::string dir = slash == std::string::npos ? "." : image.substr(0, slash);
  return "cd " + test::shell_quote(dir) + " && " + command;
}

inline std::vector<uint8_t> qemu_raw(const std::string& image, const std::string& scratch) {
  test::run_ok(in_dir_of(image, "qemu-img convert -O raw " + test::shell_quote(image) + " " +
                                    test::shell_quote(scratch)));
  auto bytes = test::read_file(scratch);
  std::remove(scratch.c_str());
  return bytes;
}

inline nlohmann::json qemu_json(const std::string& command) {
  auto r = test::run(command);
  // qemu-img check exits non-zero for damaged images but still prints JSON.
  auto start = r.output.find_first_of("[{");
  if (start == std::string::npos) {
    ADD_FAILURE() << command << ": no JSON in output:\n" << r.output;
    return nullptr;
  }
  // Messages may follow the JSON on stderr; parse the JSON value only.
  size_t depth = 0, i = start;
  for (; i < r.output.size(); ++i) {
    char c = r.output[i];
    if (c == '[' || c == '{') ++depth;
    if (c == ']' || c == '}')
      if (--depth == 0) break;
  }
  return nlohmann::json::parse(r.output.substr(start, i - start + 1));
}

inline nlohmann::json qemu_check(const std::string& image) {
  return qemu_json(in_dir_of(image, "qemu-img check --output=json " + test::shell_quote(image)));
}

inline uint64_t json_u64(const nlohmann::json& j, const char* key) {
  return j.contains(key) ? j[key].get<uint64_t>() : 0;
}

// Every guest byte qemu-img map calls data (at depth 0) must be Data or
// Compressed in our map, and every other byte must not be.
inline void expect_map_agrees(Image& im, const std::string& image) {
  auto qmap = qemu_json(in_dir_of(image, "qemu-img map --output=json " + test::shell_quote(image)));
  ASSERT_TRUE(qmap.is_array());
  for (const auto& run : qmap) {
    uint64_t start = run["start"], length = run["length"];
    bool data = run["data"].get<bool>() && run["depth"].get<int>() == 0;
    uint64_t pos = start;
    while (pos < start + length) {
      auto m = im.map(pos, start + length - pos);
      ASSERT_TRUE(m) << describe(m.error());
      bool ours = m->kind == MapKind::Data || m->kind == MapKind::Compressed;
      EXPECT_EQ(ours, data) << image << " at guest offset " << pos << " (qemu run " << run.dump()
                            << ")";
      if (ours != data) return;
      pos += std::min(m->length, start + length - pos);
    }
  }
}

// Opens with the registry's driver (what the chain and CLI use).
inline Result<std::unique_ptr<Image>> open_image(Env& env, const std::string& path,
                                                 formats::Access access) {
  return formats::qcow2::open(env, path, access);
}

}  // namespace dmu::qcow2_test
