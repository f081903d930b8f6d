// The vmdk engine: opening descriptors and extents, info, map() and
// compressed reads (writes, commit and check are in vmdk_write.cc).
#include "formats/vmdk/vmdk_image.h"

#include <algorithm>

#include "common/checked.h"
#include "common/endian.h"
#include "fileio/path.h"

namespace dmu::formats::vmdk {
namespace {

// Extent names from a hostile descriptor may not leave the descriptor's
// directory: no absolute paths, no "..".
bool safe_extent_name(const std::string& name) {
  if (name.empty() || name.front() == '/') return false;
  size_t start = 0;
  while (start <= name.size()) {
    size_t end = name.find('/', start);
    if (end == std::string::npos) end = name.size();
    if (name.compare(start, end - start, "..") == 0 && end - start == 2) return false;
    start = end + 1;
  }
  return true;
}

}  // namespace

Result<std::unique_ptr<VmdkImage>> VmdkImage::open(Env& env, const std::string& path,
                                                   Access access) {
  DMU_ASSIGN_OR_RETURN(auto file, env.open(path, access == Access::ReadWrite ? OpenMode::ReadWrite
                                                                             : OpenMode::ReadOnly));
  DMU_ASSIGN_OR_RETURN(uint64_t size, file->size());
  uint8_t magic[4] = {};
  DMU_ASSIGN_OR_RETURN(size_t got, file->read_some(0, magic));
  std::unique_ptr<VmdkImage> img(new VmdkImage(access));
  if (got == 4 && (load_le32(magic) == kSparseMagic || load_le32(magic) == kCowdMagic)) {
    DMU_TRY(img->open_sparse_file(std::move(file), path));
  } else {
    if (size > kMaxDescriptorBytes)
      return fail(EINVAL, path + ": not a VMDK sparse file, and too large for a descriptor (" +
                              std::to_string(size) + " bytes)");
    DMU_TRY(img->open_descriptor_file(env, std::move(file), path));
  }
  return img;
}

Result<void> VmdkImage::open_sparse_file(std::unique_ptr<File> file, const std::string& path) {
  DMU_ASSIGN_OR_RETURN(auto sparse, SparseExtent::open(*file, path));
  const SparseHeader& h = sparse->header();
  if (h.compressed() && access_ == Access::ReadWrite)
    return fail(EROFS, path + ": streamOptimized images are read-only in dmu");
  if (h.version == 3 && !h.compressed() && access_ == Access::ReadWrite)
    return fail(EROFS, path + ": VMDK version 3 must be opened read-only");
  if (h.desc_offset == 0 || h.desc_size == 0)
    return fail(EINVAL, path + ": sparse extent has no embedded descriptor");
  DMU_ASSIGN_OR_RETURN(uint64_t fsize, file->size());
  uint64_t at = h.desc_offset * 512;
  uint64_t len = std::min({h.desc_size * 512, uint64_t(kMaxDescriptorBytes), fsize - at});
  std::string text(len, '\0');
  DMU_TRY(file->read(at, std::span(reinterpret_cast<uint8_t*>(text.data()), text.size())));
  DMU_ASSIGN_OR_RETURN(Descriptor d, parse_descriptor(text, path));

  Extent e;
  e.size = sparse->size();
  e.sparse = std::move(sparse);
  e.filename = path;
  extents_.push_back(std::move(e));
  files_.push_back(std::move(file));
  cid_file_ = files_.front().get();
  cid_at_ = at + d.cid_pos;
  cid_len_ = d.cid_len;
  finish_info(path, d, h.compressed() ? "streamOptimized" : "monolithicSparse");
  return {};
}

Result<void> VmdkImage::open_descriptor_file(Env& env, std::unique_ptr<File> file,
                                             const std::string& path) {
  DMU_ASSIGN_OR_RETURN(uint64_t size, file->size());
  std::string text(size, '\0');
  DMU_TRY(file->read(0, std::span(reinterpret_cast<uint8_t*>(text.data()), text.size())));
  DMU_ASSIGN_OR_RETURN(Descriptor d, parse_descriptor(text, path));
  static const char* const kSupported[] = {"monolithicFlat", "twoGbMaxExtentSparse",
                                           "twoGbMaxExtentFlat", "vmfs"};
  if (d.create_type.empty()) return fail(EINVAL, path + ": descriptor has no createType");
  if (std::none_of(std::begin(kSupported), std::end(kSupported),
                   [&](const char* t) { return d.create_type == t; }))
    return fail(ENOTSUP, path + ": createType '" + d.create_type +
                             "' is not supported in a descriptor file");
  if (d.extents.empty()) return fail(EINVAL, path + ": descriptor names no extents");
  for (const DescriptorExtent& de : d.extents) DMU_TRY(add_extent(env, path, de));
  // Two sparse extents in one file would allocate over each other.
  std::vector<std::string> ids;
  for (const Extent& e : extents_) {
    DMU_ASSIGN_OR_RETURN(std::string id, env.identity(e.filename));
    if (!e.flat && std::count(ids.begin(), ids.end(), id))
      return fail(EINVAL, path + ": sparse extent '" + e.filename + "' is named twice");
    ids.push_back(id);
  }
  desc_file_ = std::move(file);
  cid_file_ = desc_file_.get();
  cid_at_ = d.cid_pos;
  cid_len_ = d.cid_len;
  finish_info(path, d, d.create_type);
  return {};
}

Result<void> VmdkImage::add_extent(Env& env, const std::string& desc_path,
                                   const DescriptorExtent& d) {
  std::string where = desc_path + ": descriptor line " + std::to_string(d.line);
  if (d.access != "RW")
    return fail(ENOTSUP, where + ": access '" + d.access + "' is not supported");
  bool flat = d.type == "FLAT" || d.type == "VMFS";
  if (!flat && d.type != "SPARSE")
    return fail(ENOTSUP, where + ": extent type '" + d.type + "' is not supported");
  if (!safe_extent_name(d.filename))
    return fail(EINVAL, where + ": extent file '" + d.filename +
                            "' must be a relative path inside the descriptor's directory");
  auto bytes = checked_mul(d.sectors, 512);
  uint64_t start = extents_.empty() ? 0 : extents_.back().start + extents_.back().size;
  if (!bytes || !checked_add(start, *bytes) || start + *bytes > (uint64_t(1) << 56))
    return fail(EFBIG, where + ": extents add up to more than 64 PiB");
  std::string path = directory_prefix(desc_path) + d.filename;
  auto mode = access_ == Access::ReadWrite ? OpenMode::ReadWrite : OpenMode::ReadOnly;
  auto opened = env.open(path, mode);
  if (!opened) return fail(opened.error().context(where + ": extent"));
  auto file = std::move(*opened);
  // An extent in the descriptor file itself would be overwritten by guest data.
  auto self = env.identity(desc_path), id = env.identity(path);
  if (self && id && *self == *id)
    return fail(EINVAL, where + ": extent '" + path + "' is the descriptor");
  Extent e;
  e.start = start;
  e.size = *bytes;
  e.file = unsigned(files_.size());
  e.flat = flat;
  e.type = d.type;
  e.filename = path;
  if (flat) {
    auto off = checked_mul(d.offset.value_or(0), 512);
    DMU_ASSIGN_OR_RETURN(uint64_t fsize, file->size());
    if (!off || !range_within(*off, *bytes, fsize))
      return fail(EINVAL, where + ": flat extent '" + path + "' (" + std::to_string(fsize) +
                              " bytes) is shorter than its " + std::to_string(*bytes) +
                              " bytes at offset " + std::to_string(d.offset.value_or(0)) +
                              " sectors");
    e.flat_offset = *off;
  } else {
    auto sparse = SparseExtent::open(*file, path);
    if (!sparse) return fail(sparse.error().context(where));
    e.sparse = std::move(*sparse);
    const SparseHeader& h = e.sparse->header();
    if (h.capacity != d.sectors)
      return fail(EINVAL, where + ": extent '" + path + "' has a capacity of " +
                              std::to_string(h.capacity) + " sectors, the descriptor says " +
                              std::to_string(d.sectors));
    if ((h.compressed() || h.version == 3) && access_ == Access::ReadWrite)
      return fail(EROFS, where + ": extent '" + path + "' is read-only (compressed or version 3)");
  }
  files_.push_back(std::move(file));
  extents_.push_back(std::move(e));
  return {};
}

void VmdkImage::finish_info(const std::string& path, const Descriptor& d,
                            const std::string& create_type) {
  cid_ = d.cid;
  info_.format = "vmdk";
  info_.filename = path;
  info_.virtual_size = extents_.back().start + extents_.back().size;
  if (d.parent_hint) {
    info_.backing_file = *d.parent_hint;
    info_.backing_file_format = "vmdk";  // as QEMU: a vmdk's parent is a vmdk
  }
  // qemu-img info's cluster-size: the grain size when all extents agree on
  // being sparse, compressed or not, with one grain size.
  const Extent& first = extents_.front();
  bool uniform = std::all_of(extents_.begin(), extents_.end(), [&](const Extent& e) {
    if (e.flat != first.flat) return false;
    if (e.flat) return true;
    return e.sparse->header().compressed() == first.sparse->header().compressed() &&
           e.sparse->grain_bytes() == first.sparse->grain_bytes();
  });
  info_.cluster_size = uniform && !first.flat ? first.sparse->grain_bytes() : 0;
  // Granularity: the smallest grain, halved until every extent starts on it.
  uint64_t g = 0;
  for (const Extent& e : extents_)
    if (!e.flat) g = g ? std::min(g, e.sparse->grain_bytes()) : e.sparse->grain_bytes();
  if (!g) g = 512;
  for (const Extent& e : extents_)
    while (e.start % g) g /= 2;
  info_.granularity = g;

  VmdkSpecific s{d.cid, d.parent_cid, create_type, {}};
  for (const Extent& e : extents_) {
    VmdkExtentSpecific x{e.size, e.filename, e.type, 0, false};
    if (!e.flat) {
      x.cluster_size = e.sparse->grain_bytes();
      x.compressed = e.sparse->header().compressed();
    }
    s.extents.push_back(std::move(x));
  }
  info_.format_specific = std::move(s);
}

std::vector<File*> VmdkImage::data_files() {
  std::vector<File*> v;
  for (auto& f : files_) v.push_back(f.get());
  return v;
}

size_t VmdkImage::extent_at(uint64_t offset) const {
  auto it = std::upper_bound(extents_.begin(), extents_.end(), offset,
                             [](uint64_t o, const Extent& e) { return o < e.start; });
  return size_t(it - extents_.begin()) - 1;
}

Result<void> VmdkImage::check_range(uint64_t offset, uint64_t length, const char* what) const {
  if (length == 0 || !range_within(offset, length, info_.virtual_size))
    return fail(EINVAL, info_.filename + ": " + what + " of " + std::to_string(length) +
                            " bytes at " + hex(offset) + " is outside the virtual disk (" +
                            std::to_string(info_.virtual_size) + " bytes)");
  return {};
}

Result<void> VmdkImage::require_writable(const char* what) const {
  if (access_ != Access::ReadWrite)
    return fail(EROFS, info_.filename + ": " + what + " on an image opened read-only");
  return {};
}

Result<Mapping> VmdkImage::map(uint64_t offset, uint64_t length) {
  DMU_TRY(check_range(offset, length, "map"));
  Extent& e = extents_[extent_at(offset)];
  uint64_t rel = offset - e.start;
  uint64_t len = std::min(length, e.size - rel);
  bool writable = access_ == Access::ReadWrite;
  if (e.flat) {
    Mapping m;
    m.length = len;
    m.kind = MapKind::Data;
    m.file = e.file;
    m.host_offset = e.flat_offset + rel;
    m.writable = writable;
    return m;
  }
  DMU_ASSIGN_OR_RETURN(Mapping m, e.sparse->map(rel, len, writable));
  m.file = e.file;
  return m;
}

Result<void> VmdkImage::read_compressed(uint64_t offset, std::span<uint8_t> out) {
  DMU_TRY(check_range(offset, out.size(), "compressed read"));
  size_t done = 0;
  while (done < out.size()) {
    uint64_t pos = offset + done;
    Extent& e = extents_[extent_at(pos)];
    size_t n = std::min<uint64_t>(out.size() - done, e.start + e.size - pos);
    if (e.flat) return fail(EINVAL, info_.filename + ": offset " + hex(pos) + " is not compressed");
    DMU_TRY(e.sparse->read_compressed(pos - e.start, out.subspan(done, n)));
    done += n;
  }
  return {};
}

Result<void> check_parent_cid(const Image& child, const Image& parent) {
  const ImageInfo& c = child.info();
  if (c.format != "vmdk" || !c.backing_file) return {};
  const ImageInfo& p = parent.info();
  if (p.format != "vmdk")
    return fail(EINVAL, c.filename + ": parent " + p.filename + " is a " + p.format +
                            " image; a vmdk parent's CID must match parentCID");
  const auto* cs = std::get_if<VmdkSpecific>(&c.format_specific);
  const auto* ps = std::get_if<VmdkSpecific>(&p.format_specific);
  if (!cs || !ps) return fail(EINVAL, c.filename + ": vmdk image without its CIDs");
  uint64_t want = cs->parent_cid;
  uint64_t have = ps->cid;
  if (want != have)
    return fail(EINVAL, c.filename + ": parentCID " + hex(want) + " does not match the CID " +
                            hex(have) + " of its parent " + p.filename +
                            " (the parent changed after the child was made)");
  return {};
}

}  // namespace dmu::formats::vmdk
