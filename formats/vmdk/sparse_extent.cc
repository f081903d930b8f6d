// Sparse extent: opening, lookups, map() and compressed reads (writes are in
// sparse_extent_write.cc, check() in sparse_extent_check.cc).
#include "formats/vmdk/sparse_extent.h"

#include <cstring>

#include "common/checked.h"
#include "common/endian.h"
#include "formats/inflate.h"

namespace dmu::formats::vmdk {
namespace {

constexpr size_t kGtCacheBytes = size_t(16) << 20;
constexpr uint64_t kMaxMapSteps = 1 << 16;
constexpr uint32_t kMarkerFooter = 3, kMarkerEndOfStream = 0;

Result<std::vector<uint32_t>> read_directory(File& f, uint64_t sector, uint64_t entries) {
  std::vector<uint8_t> raw(entries * 4);
  DMU_TRY(f.read(sector * 512, raw));
  std::vector<uint32_t> d(entries);
  for (uint64_t i = 0; i < entries; ++i) d[i] = load_le32(&raw[i * 4]);
  return d;
}

}  // namespace

Result<std::unique_ptr<SparseExtent>> SparseExtent::open(File& file, const std::string& name) {
  DMU_ASSIGN_OR_RETURN(uint64_t size, file.size());
  std::vector<uint8_t> head(512);
  DMU_ASSIGN_OR_RETURN(size_t got, file.read_some(0, head));
  if (got < 512) return fail(EINVAL, name + ": too short for a VMDK sparse header");
  uint32_t magic = load_le32(head.data());
  if (magic == kCowdMagic)
    return fail(ENOTSUP, name + ": VMFS sparse (COWD) extents are not supported");
  if (magic != kSparseMagic) return fail(EINVAL, name + ": not a VMDK sparse extent (bad magic)");
  SparseHeader h = decode_header(head);
  if (h.gd_offset == kGdAtEnd) {
    // Stream-optimized: the footer holds the header that counts.
    uint64_t end = *align_up(size, 512);
    if (end < 512 + 1536) return fail(EINVAL, name + ": stream-optimized image without a footer");
    std::vector<uint8_t> footer(1536, 0);
    DMU_TRY(file.read_some(end - 1536, footer));
    if (load_le32(&footer[8]) != 0 || load_le32(&footer[12]) != kMarkerFooter ||
        load_le32(&footer[512]) != kSparseMagic || load_le64(&footer[1024]) != 0 ||
        load_le32(&footer[1032]) != 0 || load_le32(&footer[1036]) != kMarkerEndOfStream)
      return fail(EINVAL, name + ": invalid stream-optimized footer at " + hex(end - 1536));
    h = decode_header(std::span(footer).subspan(512));
    if (h.gd_offset == kGdAtEnd)
      return fail(EINVAL, name + ": stream-optimized footer does not locate the grain directory");
  }
  DMU_TRY(validate_header(h, size, name));
  std::unique_ptr<SparseExtent> e(new SparseExtent(file, name, h));
  DMU_ASSIGN_OR_RETURN(e->gd_, read_directory(file, h.gd_offset, h.gd_entries()));
  if (h.has_rgd()) {
    DMU_ASSIGN_OR_RETURN(e->rgd_, read_directory(file, h.rgd_offset, h.gd_entries()));
  }
  e->known_file_size_ = size;
  e->next_free_ = *align_up(size, e->grain_bytes());
  return e;
}

Result<uint64_t> SparseExtent::file_size(bool refresh) {
  if (refresh || known_file_size_ == 0) {
    DMU_ASSIGN_OR_RETURN(known_file_size_, file_.size());
  }
  return known_file_size_;
}

Result<const std::vector<uint32_t>*> SparseExtent::grain_table(uint64_t index) {
  if (index >= gd_.size())
    return fail(EIO, name_ + ": grain directory index " + std::to_string(index) + " out of range");
  uint64_t sector = gd_[index];
  if (sector == 0) return nullptr;
  if (auto it = gt_cache_.find(index); it != gt_cache_.end()) return &it->second;
  uint64_t bytes = uint64_t(header_.gtes_per_gt) * 4;
  DMU_ASSIGN_OR_RETURN(uint64_t fsize, file_size(false));
  if (!range_within(sector * 512, bytes, fsize)) {
    DMU_ASSIGN_OR_RETURN(fsize, file_size(true));
    if (!range_within(sector * 512, bytes, fsize))
      return fail(EIO, name_ + ": grain table at sector " + std::to_string(sector) +
                           " (directory entry " + std::to_string(index) +
                           ") runs past the end of the file");
  }
  DMU_ASSIGN_OR_RETURN(auto table, read_directory(file_, sector, header_.gtes_per_gt));
  if ((gt_cache_.size() + 1) * bytes > kGtCacheBytes) gt_cache_.clear();
  return &gt_cache_.emplace(index, std::move(table)).first->second;
}

Result<uint32_t> SparseExtent::entry(uint64_t grain) {
  if (auto it = pending_.find(grain); it != pending_.end()) return it->second;
  DMU_ASSIGN_OR_RETURN(const std::vector<uint32_t>* t, grain_table(grain / header_.gtes_per_gt));
  return t ? (*t)[grain % header_.gtes_per_gt] : 0;
}

Result<SparseExtent::Grain> SparseExtent::decode(uint64_t grain, uint32_t e) {
  Grain g;
  if (e == 0) return g;
  if (e == kGteZeroed && header_.zero_grain()) {
    g.kind = Grain::Zero;
    return g;
  }
  g.offset = uint64_t(e) * 512;
  uint64_t start = grain * grain_bytes();
  uint64_t need;
  if (header_.compressed()) {
    g.kind = Grain::Compressed;
    need = header_.markers() ? 12 : 1;
  } else {
    g.kind = Grain::Data;
    need = std::min(grain_bytes(), size() - start);
  }
  DMU_ASSIGN_OR_RETURN(uint64_t fsize, file_size(false));
  if (!range_within(g.offset, need, fsize)) {
    DMU_ASSIGN_OR_RETURN(fsize, file_size(true));
    if (!range_within(g.offset, need, fsize))
      return fail(EIO, name_ + ": grain for offset " + hex(start) + " at sector " +
                           std::to_string(e) + " points past the end of the file");
  }
  return g;
}

bool SparseExtent::table_range_empty(uint64_t grain) const {
  uint64_t index = grain / header_.gtes_per_gt;
  if (gd_[index] != 0) return false;
  uint64_t end = (index + 1) * header_.gtes_per_gt;
  auto it = pending_.lower_bound(grain);
  return it == pending_.end() || it->first >= end;
}

Result<Mapping> SparseExtent::map(uint64_t offset, uint64_t length, bool writable) {
  const uint64_t gb = grain_bytes();
  const uint64_t end = offset + length;
  const uint64_t end_grain = (end + gb - 1) / gb;
  const uint64_t first = offset / gb;
  auto classify = [&](uint64_t grain, Grain& out) -> Result<uint64_t> {
    if (table_range_empty(grain)) {
      out = Grain{};
      return (grain / header_.gtes_per_gt + 1) * header_.gtes_per_gt - grain;
    }
    DMU_ASSIGN_OR_RETURN(out, lookup(grain));
    return uint64_t(1);
  };
  Grain g;
  DMU_ASSIGN_OR_RETURN(uint64_t n, classify(first, g));
  uint64_t next = first + n;
  for (uint64_t steps = 0; next < end_grain && g.kind != Grain::Compressed && steps < kMaxMapSteps;
       ++steps) {
    Grain k;
    DMU_ASSIGN_OR_RETURN(n, classify(next, k));
    if (k.kind != g.kind) break;
    if (k.kind == Grain::Data && k.offset != g.offset + (next - first) * gb) break;
    next += n;
  }
  Mapping m;
  m.length = std::min(next * gb, end) - offset;
  switch (g.kind) {
    case Grain::Unallocated:
      m.kind = MapKind::Unallocated;
      break;
    case Grain::Zero:
      m.kind = MapKind::Zero;
      break;
    case Grain::Compressed:
      m.kind = MapKind::Compressed;
      break;
    case Grain::Data:
      m.kind = MapKind::Data;
      m.host_offset = g.offset + (offset - first * gb);
      m.writable = writable;
      break;
  }
  return m;
}

Result<void> SparseExtent::inflate_grain(uint64_t grain, const Grain& g) {
  if (cached_grain_ == grain && !cached_data_.empty()) return {};
  const uint64_t gb = grain_bytes();
  DMU_ASSIGN_OR_RETURN(uint64_t fsize, file_size(false));
  // As QEMU: at most two grains' worth of marker and deflated bytes.
  uint64_t n = std::min(2 * gb + 12, fsize - g.offset);
  std::vector<uint8_t> buf(n);
  DMU_TRY(file_.read(g.offset, buf));
  const uint8_t* data = buf.data();
  uint64_t len = std::min(n, gb);
  if (header_.markers()) {
    len = load_le32(&buf[8]);
    data += 12;
    if (len == 0 || len > n - 12)
      return fail(EIO, name_ + ": grain marker at " + hex(g.offset) + " claims " +
                           std::to_string(len) + " compressed bytes");
  }
  cached_data_.assign(gb, 0);
  const std::string what =
      name_ + ": compressed grain for offset " + hex(grain * gb) + " at " + hex(g.offset);
  // A whole zlib stream (as zlib's uncompress() demands) covering at least
  // the part of the grain inside the disk.
  auto inflated = inflate(Deflate::Zlib, std::span<const uint8_t>(data, len), cached_data_);
  const uint64_t visible = std::min(gb, size() - grain * gb);
  if (!inflated || !inflated->ended || inflated->produced < visible) {
    cached_data_.clear();
    return fail(EIO, what + " does not decompress to a grain" +
                         (inflated ? "" : " (" + inflated.error().message + ")"));
  }
  cached_grain_ = grain;
  return {};
}

Result<void> SparseExtent::read_compressed(uint64_t offset, std::span<uint8_t> out) {
  const uint64_t gb = grain_bytes();
  size_t done = 0;
  while (done < out.size()) {
    uint64_t pos = offset + done;
    uint64_t grain = pos / gb;
    DMU_ASSIGN_OR_RETURN(Grain g, lookup(grain));
    if (g.kind != Grain::Compressed)
      return fail(EINVAL, name_ + ": offset " + hex(pos) + " is not a compressed grain");
    DMU_TRY(inflate_grain(grain, g));
    uint64_t in = pos % gb;
    size_t n = std::min<uint64_t>(gb - in, out.size() - done);
    std::memcpy(out.data() + done, cached_data_.data() + in, n);
    done += n;
  }
  return {};
}

}  // namespace dmu::formats::vmdk
