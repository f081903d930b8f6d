// The qcow engine: opening, lookups, map() and compressed reads (writes are in
// qcow_write.cc, check() in qcow_check.cc).
#include "formats/qcow/qcow_image.h"

#include <cstring>

#include "common/checked.h"
#include "common/endian.h"
#include "formats/inflate.h"

namespace dmu::formats::qcow {
namespace {

// Bounds on work and memory per call, whatever the image says.
constexpr size_t kL2CacheBytes = size_t(32) << 20;
constexpr uint64_t kMaxMapSteps = 1 << 16;

}  // namespace

Result<std::unique_ptr<Image>> QcowImage::open(Env& env, const std::string& path, Access access) {
  DMU_ASSIGN_OR_RETURN(auto file, env.open(path, access == Access::ReadWrite ? OpenMode::ReadWrite
                                                                             : OpenMode::ReadOnly));
  DMU_ASSIGN_OR_RETURN(uint64_t size, file->size());
  std::vector<uint8_t> head(kHeaderSize);
  DMU_ASSIGN_OR_RETURN(size_t got, file->read_some(0, head));
  head.resize(got);
  DMU_ASSIGN_OR_RETURN(Header h, parse_header(head, size, path));

  ImageInfo info;
  info.format = "qcow";
  info.filename = path;
  info.virtual_size = align_down(h.size, 512);  // QEMU counts whole sectors
  info.cluster_size = h.cluster_size();
  info.granularity = h.cluster_size();
  if (h.backing_file_offset != 0 && h.backing_file_size != 0) {
    std::vector<uint8_t> name(h.backing_file_size);
    DMU_TRY(file->read(h.backing_file_offset, name));
    if (std::memchr(name.data(), 0, name.size()))
      return fail(EINVAL, path + ": backing file name at " + hex(h.backing_file_offset) +
                              " contains a NUL byte");
    info.backing_file = std::string(name.begin(), name.end());
  }

  std::unique_ptr<QcowImage> img(new QcowImage(std::move(file), access, h, std::move(info)));
  uint64_t entries = h.l1_entries();
  std::vector<uint8_t> raw(entries * 8);
  DMU_TRY(img->file_->read(h.l1_table_offset, raw));
  img->l1_.resize(entries);
  for (uint64_t i = 0; i < entries; ++i) img->l1_[i] = load_be64(&raw[i * 8]);
  img->known_file_size_ = size;
  img->next_free_ = *align_up(size, h.cluster_size());
  return std::unique_ptr<Image>(std::move(img));
}

uint64_t QcowImage::cluster_count() const {
  return (info_.virtual_size + cluster_size() - 1) / cluster_size();
}

Result<void> QcowImage::check_range(uint64_t offset, uint64_t length, const char* what) const {
  if (length == 0 || !range_within(offset, length, info_.virtual_size))
    return fail(EINVAL, info_.filename + ": " + what + " of " + std::to_string(length) +
                            " bytes at " + hex(offset) + " is outside the virtual disk (" +
                            std::to_string(info_.virtual_size) + " bytes)");
  return {};
}

Result<void> QcowImage::require_writable(const char* what) const {
  if (access_ != Access::ReadWrite)
    return fail(EROFS, info_.filename + ": " + what + " on an image opened read-only");
  return {};
}

Result<uint64_t> QcowImage::file_size(bool refresh) {
  if (refresh || known_file_size_ == 0) {
    DMU_ASSIGN_OR_RETURN(known_file_size_, file_->size());
  }
  return known_file_size_;
}

Result<const std::vector<uint64_t>*> QcowImage::l2_table(uint64_t index) {
  if (index >= l1_.size())
    return fail(EIO, info_.filename + ": L1 index " + std::to_string(index) + " out of range");
  uint64_t off = l1_[index];
  if (off == 0) return nullptr;
  if (auto it = l2_cache_.find(index); it != l2_cache_.end()) return &it->second;
  uint64_t bytes = header_.l2_bytes();
  DMU_ASSIGN_OR_RETURN(uint64_t fsize, file_size(false));
  if (!range_within(off, bytes, fsize)) {
    DMU_ASSIGN_OR_RETURN(fsize, file_size(true));
    if (!range_within(off, bytes, fsize))
      return fail(EIO, info_.filename + ": L2 table at " + hex(off) + " (L1 entry " +
                           std::to_string(index) + ") runs past the end of the file");
  }
  std::vector<uint8_t> raw(bytes);
  DMU_TRY(file_->read(off, raw));
  std::vector<uint64_t> table(header_.l2_entries());
  for (size_t i = 0; i < table.size(); ++i) table[i] = load_be64(&raw[i * 8]);
  if ((l2_cache_.size() + 1) * bytes > kL2CacheBytes) l2_cache_.clear();
  return &l2_cache_.emplace(index, std::move(table)).first->second;
}

Result<uint64_t> QcowImage::entry(uint64_t cluster) {
  if (auto it = pending_.find(cluster); it != pending_.end()) return it->second;
  DMU_ASSIGN_OR_RETURN(const std::vector<uint64_t>* table, l2_table(l1_index(cluster)));
  return table ? (*table)[l2_index(cluster)] : 0;
}

Result<QcowImage::Cluster> QcowImage::decode(uint64_t cluster, uint64_t e) {
  Cluster c;
  if (e == 0) return c;
  uint64_t guest = cluster * cluster_size();
  uint64_t start, len;
  if (e & kCompressedFlag) {
    c.kind = Cluster::Compressed;
    c.offset = e & header_.compressed_offset_mask();
    c.csize = (e >> (63 - header_.cluster_bits)) & (cluster_size() - 1);
    if (c.csize == 0)
      return fail(EIO, info_.filename + ": compressed cluster for guest offset " + hex(guest) +
                           " has size 0");
    start = c.offset;
    len = c.csize;
  } else {
    c.kind = Cluster::Normal;
    c.offset = e;
    if (e % 512)
      return fail(EIO, info_.filename + ": cluster for guest offset " + hex(guest) + " at " +
                           hex(e) + " is not sector-aligned");
    start = e;
    len = std::min(cluster_size(), info_.virtual_size - guest);
  }
  DMU_ASSIGN_OR_RETURN(uint64_t fsize, file_size(false));
  if (!range_within(start, len, fsize)) {
    DMU_ASSIGN_OR_RETURN(fsize, file_size(true));
    if (!range_within(start, len, fsize))
      return fail(EIO, info_.filename + ": cluster for guest offset " + hex(guest) + " at " +
                           hex(start) + " runs past the end of the file");
  }
  return c;
}

Result<QcowImage::Cluster> QcowImage::lookup(uint64_t cluster) {
  DMU_ASSIGN_OR_RETURN(uint64_t e, entry(cluster));
  return decode(cluster, e);
}

bool QcowImage::l1_range_empty(uint64_t cluster) const {
  uint64_t index = l1_index(cluster);
  if (l1_[index] != 0) return false;
  uint64_t end = (index + 1) << header_.l2_bits;
  auto it = pending_.lower_bound(cluster);
  return it == pending_.end() || it->first >= end;
}

Result<Mapping> QcowImage::map(uint64_t offset, uint64_t length) {
  DMU_TRY(check_range(offset, length, "map"));
  const uint64_t cs = cluster_size();
  const uint64_t end = offset + length;
  const uint64_t end_cluster = (end + cs - 1) / cs;
  const uint64_t first_cluster = offset / cs;

  // Classifies `cluster`; returns how many clusters the answer covers.
  auto classify = [&](uint64_t cluster, Cluster& out) -> Result<uint64_t> {
    if (l1_range_empty(cluster)) {
      out = Cluster{};
      return ((l1_index(cluster) + 1) << header_.l2_bits) - cluster;
    }
    DMU_ASSIGN_OR_RETURN(out, lookup(cluster));
    return uint64_t(1);
  };

  Cluster first;
  DMU_ASSIGN_OR_RETURN(uint64_t n, classify(first_cluster, first));
  uint64_t next = first_cluster + n;
  for (uint64_t steps = 0;
       next < end_cluster && first.kind != Cluster::Compressed && steps < kMaxMapSteps; ++steps) {
    Cluster k;
    DMU_ASSIGN_OR_RETURN(n, classify(next, k));
    if (k.kind != first.kind) break;
    if (k.kind == Cluster::Normal && k.offset != first.offset + (next - first_cluster) * cs) break;
    next += n;
  }

  Mapping m;
  m.length = std::min(next * cs, end) - offset;
  switch (first.kind) {
    case Cluster::Unallocated:
      m.kind = MapKind::Unallocated;
      break;
    case Cluster::Compressed:
      m.kind = MapKind::Compressed;
      break;
    case Cluster::Normal:
      m.kind = MapKind::Data;
      m.host_offset = first.offset + (offset - first_cluster * cs);
      m.writable = access_ == Access::ReadWrite;
      break;
  }
  return m;
}

Result<void> QcowImage::decompress(const Cluster& c, uint64_t cluster) {
  uint64_t key = c.offset | (c.csize << (63 - header_.cluster_bits)) | kCompressedFlag;
  if (cached_entry_ == key && !cached_data_.empty()) return {};
  std::vector<uint8_t> in(c.csize);
  DMU_TRY(file_->read(c.offset, in));
  cached_data_.resize(cluster_size());
  const std::string what = info_.filename + ": compressed cluster for guest offset " +
                           hex(cluster * cluster_size()) + " at " + hex(c.offset);
  // As QEMU: a stream that fills the cluster counts, ended or not.
  auto inflated = inflate(Deflate::Raw4k, in, cached_data_);
  if (!inflated || inflated->produced != cluster_size()) {
    cached_data_.clear();
    return fail(EIO, what + " does not decompress to " + std::to_string(cluster_size()) + " bytes" +
                         (inflated ? "" : " (" + inflated.error().message + ")"));
  }
  cached_entry_ = key;
  return {};
}

Result<void> QcowImage::read_compressed(uint64_t offset, std::span<uint8_t> out) {
  DMU_TRY(check_range(offset, out.size(), "compressed read"));
  const uint64_t cs = cluster_size();
  size_t done = 0;
  while (done < out.size()) {
    uint64_t pos = offset + done;
    uint64_t cluster = pos / cs;
    DMU_ASSIGN_OR_RETURN(Cluster c, lookup(cluster));
    if (c.kind != Cluster::Compressed)
      return fail(EINVAL, info_.filename + ": guest offset " + hex(pos) + " is not compressed");
    DMU_TRY(decompress(c, cluster));
    uint64_t in_cluster = pos % cs;
    size_t n = std::min<uint64_t>(cs - in_cluster, out.size() - done);
    std::memcpy(out.data() + done, cached_data_.data() + in_cluster, n);
    done += n;
  }
  return {};
}

}  // namespace dmu::formats::qcow
