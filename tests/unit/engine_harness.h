// Test-side helpers for the format engines: reading guest bytes through an
// image (or a hand-built chain of images), writing through the write protocol
// of formats/image.h exactly as the daemon does, asking qemu-img for the
// oracle's view, and a crash model for fault_env workloads.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "formats/image.h"
#include "tests/support/test_support.h"

namespace dmu::test {

// Guest bytes [offset, offset + out.size()) of chain[depth], falling through
// to chain[depth + 1] for unallocated ranges (zeros past the last image or
// past a shorter backing image's end).
inline Result<void> read_chain(const std::vector<formats::Image*>& chain, size_t depth,
                               uint64_t offset, std::span<uint8_t> out) {
  if (depth >= chain.size()) {
    std::memset(out.data(), 0, out.size());
    return {};
  }
  formats::Image& img = *chain[depth];
  uint64_t size = img.info().virtual_size;
  size_t done = 0;
  while (done < out.size()) {
    uint64_t pos = offset + done;
    if (pos >= size) {
      std::memset(out.data() + done, 0, out.size() - done);
      break;
    }
    uint64_t want = std::min<uint64_t>(out.size() - done, size - pos);
    DMU_ASSIGN_OR_RETURN(formats::Mapping m, img.map(pos, want));
    if (m.length == 0 || m.length > want) return fail(EIO, "map returned a bad length");
    auto part = out.subspan(done, m.length);
    switch (m.kind) {
      case formats::MapKind::Data:
        DMU_TRY(img.data_files().at(m.file)->read(m.host_offset, part));
        break;
      case formats::MapKind::Zero:
        std::memset(part.data(), 0, part.size());
        break;
      case formats::MapKind::Unallocated:
        DMU_TRY(read_chain(chain, depth + 1, pos, part));
        break;
      case formats::MapKind::Compressed:
        DMU_TRY(img.read_compressed(pos, part));
        break;
    }
    done += m.length;
  }
  return {};
}

inline Result<std::vector<uint8_t>> read_all(const std::vector<formats::Image*>& chain) {
  std::vector<uint8_t> out(chain.front()->info().virtual_size);
  DMU_TRY(read_chain(chain, 0, 0, out));
  return out;
}

// Fills buf with the guest's bytes at offset, as they were before a write.
using OldContents = std::function<Result<void>(uint64_t offset, std::span<uint8_t> buf)>;

// One guest write through the protocol: prepare, fill fresh targets with the
// old contents (read through the chain, or from `old`: a fresh qcow2
// cluster is mapped at once, so reading it through the image on a real file
// reads past the file's end), write, write_done.  Does not commit.
inline Result<void> write_chain(const std::vector<formats::Image*>& chain, uint64_t offset,
                                std::span<const uint8_t> data, const OldContents& old = {}) {
  formats::Image& top = *chain.front();
  size_t done = 0;
  while (done < data.size()) {
    uint64_t pos = offset + done;
    DMU_ASSIGN_OR_RETURN(formats::WriteTarget t, top.prepare_write(pos, data.size() - done));
    if (t.offset > pos || t.offset + t.length <= pos) return fail(EIO, "target misses the write");
    File* f = top.data_files().at(t.file);
    uint64_t n = std::min<uint64_t>(t.offset + t.length - pos, data.size() - done);
    Result<void> w;
    if (t.fresh) {
      std::vector<uint8_t> buf(t.length);
      if (old)
        DMU_TRY(old(t.offset, buf));
      else
        DMU_TRY(read_chain(chain, 0, t.offset, buf));
      std::memcpy(buf.data() + (pos - t.offset), data.data() + done, n);
      w = f->write(t.host_offset, buf);
    } else {
      w = f->write(t.host_offset + (pos - t.offset), data.subspan(done, n));
    }
    DMU_TRY(top.write_done(t.token, bool(w)));
    DMU_TRY(w);
    done += n;
  }
  return {};
}

// Zeros [offset, offset + length) as QEMU's block layer does: unaligned head
// and tail as zero data, the aligned middle with write_zeroes, falling back
// to zero data where the engine answers ENOTSUP.
inline Result<void> zero_chain(const std::vector<formats::Image*>& chain, uint64_t offset,
                               uint64_t length, bool may_unmap) {
  formats::Image& top = *chain.front();
  uint64_t g = top.info().granularity;
  uint64_t end = offset + length;
  uint64_t mid_start = std::min(end, (offset + g - 1) / g * g);
  uint64_t mid_end = std::max(mid_start, end == top.info().virtual_size ? end : end / g * g);
  auto zeros = [&](uint64_t off, uint64_t len) -> Result<void> {
    if (len == 0) return {};
    std::vector<uint8_t> z(len, 0);
    return write_chain(chain, off, z);
  };
  DMU_TRY(zeros(offset, mid_start - offset));
  if (mid_end > mid_start) {
    auto r = top.write_zeroes(mid_start, mid_end - mid_start, may_unmap);
    if (!r && r.error().code != ENOTSUP) return r;
    if (!r) DMU_TRY(zeros(mid_start, mid_end - mid_start));
  }
  return zeros(mid_end, end - mid_end);
}

// qemu-img's view of an image.
inline std::vector<uint8_t> qemu_export(const std::string& image, const std::string& fmt,
                                        const TempDir& dir) {
  std::string out = dir.file("qemu-export.raw");
  run_ok("qemu-img convert -f " + fmt + " -O raw " + shell_quote(image) + " " + shell_quote(out));
  auto bytes = read_file(out);
  std::remove(out.c_str());
  return bytes;
}

struct QemuMapEntry {
  uint64_t start, length;
  bool data, zero;
  int depth;
};

inline std::vector<QemuMapEntry> qemu_map(const std::string& image, const std::string& fmt) {
  auto json = nlohmann::json::parse(
      run_ok("qemu-img map --output=json -f " + fmt + " " + shell_quote(image)));
  std::vector<QemuMapEntry> v;
  for (const auto& e : json)
    v.push_back({e["start"].get<uint64_t>(), e["length"].get<uint64_t>(), e["data"].get<bool>(),
                 e["zero"].get<bool>(), e["depth"].get<int>()});
  return v;
}

// For every byte of a single image: does the engine report data
// (Data/Compressed) exactly where qemu-img map reports data?
inline void expect_map_agrees(formats::Image& img, const std::string& fmt) {
  uint64_t size = img.info().virtual_size;
  for (const QemuMapEntry& q : qemu_map(img.info().filename, fmt)) {
    for (uint64_t pos = q.start; pos < q.start + q.length;) {
      auto m = img.map(pos, q.start + q.length - pos);
      ASSERT_TRUE(m) << m.error().message;
      ASSERT_GT(m->length, 0u);
      bool data = m->kind == formats::MapKind::Data || m->kind == formats::MapKind::Compressed;
      EXPECT_EQ(data, q.data) << img.info().filename << " at " << pos << " (qemu range " << q.start
                              << "+" << q.length << ")";
      pos += m->length;
    }
  }
  (void)size;
}

// A guest disk in which every write fills whole sectors with one byte value,
// so after a crash each sector must be uniform and hold either its value at
// the last completed commit or one written since.
class CrashModel {
 public:
  explicit CrashModel(uint64_t size)
      : durable_(size / 512, 0), current_(size / 512, 0), since_(size / 512) {}
  void set_initial(const std::vector<uint8_t>& bytes) {
    for (size_t s = 0; s < durable_.size(); ++s) durable_[s] = current_[s] = bytes[s * 512];
  }
  void wrote(uint64_t offset, uint64_t length, uint8_t value) {
    for (uint64_t s = offset / 512; s < (offset + length) / 512; ++s) {
      current_[s] = value;
      since_[s].insert(value);
    }
  }
  void committed() {
    durable_ = current_;
    for (auto& s : since_) s.clear();
  }
  // The guest bytes as the last writes left them.
  std::vector<uint8_t> current() const {
    std::vector<uint8_t> b(current_.size() * 512);
    for (size_t s = 0; s < current_.size(); ++s) std::fill_n(b.begin() + s * 512, 512, current_[s]);
    return b;
  }
  // "" when `bytes` is a state the disk may be in after a crash.
  std::string verify(const std::vector<uint8_t>& bytes) const {
    for (size_t s = 0; s < durable_.size(); ++s) {
      uint8_t v = bytes[s * 512];
      for (size_t i = 1; i < 512; ++i)
        if (bytes[s * 512 + i] != v) return "sector " + std::to_string(s) + " is torn";
      if (v != durable_[s] && !since_[s].count(v))
        return "sector " + std::to_string(s) + " holds " + std::to_string(v) + ", expected " +
               std::to_string(durable_[s]) + " or a later write";
    }
    return "";
  }

 private:
  std::vector<uint8_t> durable_, current_;
  std::vector<std::set<uint8_t>> since_;
};

}  // namespace dmu::test
