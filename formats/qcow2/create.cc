// create(): new qcow2 images with qemu-img's -o option names and defaults
// (compat, cluster_size, lazy_refcounts, refcount_bits, extended_l2,
// compression_type, data_file, data_file_raw, backing_file, backing_fmt,
// preallocation=off).  Every option is validated before anything is
// written.  Layout as QEMU makes it: header, refcount table, refcount
// block(s), L1 table (and, for a raw external data file, L2 tables mapping
// every cluster to the same offset of the data file).
#include <algorithm>
#include <cstring>

#include "common/checked.h"
#include "common/endian.h"
#include "fileio/path.h"
#include "formats/qcow2/qcow2_image.h"

namespace dmu::formats::qcow2 {
namespace {

struct Plan {
  Header header;
  std::optional<std::string> data_file_path;  // where to create it
};

Result<bool> parse_bool(const std::string& path, const std::string& key, const std::string& v) {
  if (v == "on" || v == "true" || v == "yes") return true;
  if (v == "off" || v == "false" || v == "no") return false;
  return fail(EINVAL, path + ": option " + key + "=" + v + " must be on or off");
}

// "65536", "64k", "2M" (binary multiples, as qemu-img reads sizes).
Result<uint64_t> parse_size(const std::string& path, const std::string& key, const std::string& v) {
  size_t i = 0;
  uint64_t n = 0;
  while (i < v.size() && v[i] >= '0' && v[i] <= '9') {
    auto m = checked_mul(n, 10);
    auto a = m ? checked_add(*m, uint64_t(v[i] - '0')) : std::nullopt;
    if (!a) return fail(EINVAL, path + ": option " + key + "=" + v + " is too large");
    n = *a;
    ++i;
  }
  unsigned shift = 0;
  if (i + 1 == v.size()) {
    switch (v[i]) {
      case 'b':
      case 'B':
        shift = 0;
        break;
      case 'k':
      case 'K':
        shift = 10;
        break;
      case 'm':
      case 'M':
        shift = 20;
        break;
      case 'g':
      case 'G':
        shift = 30;
        break;
      case 't':
      case 'T':
        shift = 40;
        break;
      default:
        i = 0;
        break;
    }
    if (i) ++i;
  }
  if (i == 0 || i != v.size() || (shift && n > (UINT64_MAX >> shift)))
    return fail(EINVAL, path + ": option " + key + "=" + v + " is not a size");
  return n << shift;
}

Result<Plan> plan(const std::string& path, const CreateOptions& o) {
  Plan p;
  Header& h = p.header;
  auto bad = [&](const std::string& what) { return fail(EINVAL, path + ": " + what); };
  uint64_t size = o.virtual_size;
  uint64_t cluster_size = 65536;
  bool lazy = false, extended = false, raw = false;
  unsigned refcount_bits = 16;
  std::optional<std::string> data_file, backing = o.backing_file, backing_fmt = o.backing_format;
  std::string compat = "1.1", compression = "zlib";
  bool have_refcount_bits = false;
  for (const auto& [k, v] : o.options) {
    if (k == "compat") {
      compat = v;
    } else if (k == "cluster_size") {
      DMU_ASSIGN_OR_RETURN(cluster_size, parse_size(path, k, v));
    } else if (k == "lazy_refcounts") {
      DMU_ASSIGN_OR_RETURN(lazy, parse_bool(path, k, v));
    } else if (k == "refcount_bits") {
      DMU_ASSIGN_OR_RETURN(uint64_t bits, parse_size(path, k, v));
      if (!is_power_of_two(bits) || bits > 64)
        return bad("refcount_bits=" + v + " must be a power of two up to 64");
      refcount_bits = unsigned(bits);
      have_refcount_bits = true;
    } else if (k == "extended_l2") {
      DMU_ASSIGN_OR_RETURN(extended, parse_bool(path, k, v));
    } else if (k == "compression_type") {
      compression = v;
    } else if (k == "data_file") {
      data_file = v;
    } else if (k == "data_file_raw") {
      DMU_ASSIGN_OR_RETURN(raw, parse_bool(path, k, v));
    } else if (k == "backing_file") {
      if (backing && *backing != v) return bad("backing_file given twice");
      backing = v;
    } else if (k == "backing_fmt") {
      if (backing_fmt && *backing_fmt != v) return bad("backing_fmt given twice");
      backing_fmt = v;
    } else if (k == "size") {
      DMU_ASSIGN_OR_RETURN(uint64_t s, parse_size(path, k, v));
      if (size && size != s) return bad("size given twice");
      size = s;
    } else if (k == "preallocation") {
      if (v != "off")
        return fail(ENOTSUP, path + ": preallocation=" + v + " is not supported (only off)");
    } else if (k == "encryption" || k == "encrypt.format" || k == "encrypt") {
      return fail(ENOTSUP, path + ": encrypted qcow2 images are not supported");
    } else {
      return bad("unknown qcow2 option '" + k + "'");
    }
  }
  if (compat == "1.1" || compat == "v3")
    h.version = 3;
  else if (compat == "0.10" || compat == "v2")
    h.version = 2;
  else
    return bad("compat=" + compat + " must be 0.10 or 1.1");
  if (!is_power_of_two(cluster_size) || cluster_size < (1u << kMinClusterBits) ||
      cluster_size > (1u << kMaxClusterBits))
    return bad("cluster_size " + std::to_string(cluster_size) +
               " must be a power of two between 512 and 2 MiB");
  h.cluster_bits = unsigned(__builtin_ctzll(cluster_size));
  if (compression != "zlib" && compression != "zstd")
    return bad("compression_type=" + compression + " must be zlib or zstd");
  if (h.version == 2) {
    if (lazy) return bad("lazy_refcounts need compat=1.1");
    if (have_refcount_bits && refcount_bits != 16)
      return bad("refcount widths other than 16 bits need compat=1.1");
    if (extended) return bad("extended_l2 needs compat=1.1");
    if (compression == "zstd") return bad("compression_type=zstd needs compat=1.1");
    if (data_file) return bad("data_file needs compat=1.1");
  }
  if (extended && cluster_size < (1u << kMinExtendedL2ClusterBits))
    return bad("extended_l2 needs a cluster_size of at least 16384 bytes");
  if (raw && !data_file) return bad("data_file_raw needs data_file");
  if (raw && backing) return bad("data_file_raw cannot be used with a backing file");
  if (backing_fmt && !backing) return bad("backing_fmt given without a backing file");
  if (backing && (backing->empty() || backing->size() > kMaxBackingNameLength))
    return bad("backing file name must be 1.." + std::to_string(kMaxBackingNameLength) + " bytes");
  if (data_file && data_file->empty()) return bad("data_file name is empty");

  h.size = *align_up(size, kSectorSize);
  h.refcount_order = unsigned(__builtin_ctz(refcount_bits));
  if (h.version >= 3) {
    if (data_file) h.incompatible |= kIncompatDataFile;
    if (compression == "zstd") {
      h.incompatible |= kIncompatCompressionType;
      h.compression_type = CompressionType::Zstd;
    }
    if (extended) h.incompatible |= kIncompatExtendedL2;
    if (lazy) h.compatible |= kCompatLazyRefcounts;
    if (raw) h.autoclear |= kAutoclearDataFileRaw;
  }
  h.backing_file = backing;
  h.backing_format = backing_fmt;
  h.data_file = data_file;
  if (data_file)
    p.data_file_path = (*data_file)[0] == '/' ? *data_file : directory_prefix(path) + *data_file;
  return p;
}

}  // namespace

Result<void> create(Env& env, const std::string& path, const CreateOptions& options) {
  DMU_ASSIGN_OR_RETURN(Plan p, plan(path, options));
  Header& h = p.header;
  const Geometry g = h.geometry();
  const uint64_t cs = g.cluster_size;
  const unsigned l1_shift = g.l1_entry_shift();
  const uint64_t l1_size = (h.size >> l1_shift) + ((h.size & ((uint64_t(1) << l1_shift) - 1)) != 0);
  if (l1_size * 8 > kMaxL1Bytes)
    return fail(EFBIG, path + ": virtual size " + std::to_string(h.size) +
                           " needs an L1 table over 32 MiB; use a larger cluster_size");
  const uint64_t l1_clusters = g.clusters_for(l1_size * 8);
  const bool raw = h.data_file_raw();
  const uint64_t l2_tables = raw ? l1_size : 0;

  // Clusters: header, refcount table, refcount blocks, L1, L2 tables; the
  // blocks must cover every one of them.
  uint64_t t = 1, nblocks = 1;
  for (int i = 0; i < 64; ++i) {
    uint64_t total = 1 + t + nblocks + l1_clusters + l2_tables;
    uint64_t nb = (total + g.refblock_entries - 1) >> g.refblock_bits;
    uint64_t nt = std::max<uint64_t>((nb * 8 + cs - 1) / cs, 1);
    if (nb == nblocks && nt == t) break;
    nblocks = nb;
    t = nt;
  }
  if ((t << g.cluster_bits) > kMaxRefTableBytes)
    return fail(EFBIG, path + ": image metadata would need a refcount table over 8 MiB");
  const uint64_t reftable_at = 1, blocks_at = 1 + t, l1_at = blocks_at + nblocks,
                 l2_at = l1_at + l1_clusters, total = l2_at + l2_tables;

  h.l1_size = uint32_t(l1_size);
  h.l1_table_offset = l1_size ? l1_at * cs : 0;
  h.refcount_table_offset = reftable_at * cs;
  h.refcount_table_clusters = uint32_t(t);
  DMU_ASSIGN_OR_RETURN(std::vector<uint8_t> first, encode_header(h, path));

  std::vector<uint8_t> table(t * cs, 0);
  std::vector<std::vector<uint8_t>> blocks(nblocks, std::vector<uint8_t>(cs, 0));
  for (uint64_t b = 0; b < nblocks; ++b) store_be64(&table[b * 8], (blocks_at + b) * cs);
  for (uint64_t c = 0; c < total; ++c)
    set_refcount_entry(blocks[c >> g.refblock_bits].data(), g.refcount_order,
                       c & (g.refblock_entries - 1), 1);
  std::vector<uint8_t> l1(l1_size * 8, 0);
  for (uint64_t i = 0; i < l2_tables; ++i)
    store_be64(&l1[i * 8], ((l2_at + i) * cs) | kOflagCopied);

  // Options are valid: now write.
  std::unique_ptr<File> data;
  if (p.data_file_path) {
    DMU_ASSIGN_OR_RETURN(data, env.open(*p.data_file_path, OpenMode::CreateTruncate));
    DMU_TRY(data->truncate(h.size));
  }
  DMU_ASSIGN_OR_RETURN(auto f, env.open(path, OpenMode::CreateTruncate));
  DMU_TRY(f->write(0, first));
  DMU_TRY(f->write(reftable_at * cs, table));
  for (uint64_t b = 0; b < nblocks; ++b) DMU_TRY(f->write((blocks_at + b) * cs, blocks[b]));
  if (l1_size) DMU_TRY(f->write(l1_at * cs, l1));
  if (l2_tables) {
    // A raw data file: every guest cluster lives at the same data file offset.
    std::vector<uint8_t> l2(cs);
    const uint64_t clusters = g.clusters_for(h.size);
    for (uint64_t i = 0; i < l2_tables; ++i) {
      std::fill(l2.begin(), l2.end(), 0);
      for (uint64_t j = 0; j < g.l2_entries; ++j) {
        uint64_t c = (i << g.l2_bits) + j;
        if (c >= clusters) break;
        store_be64(&l2[j * g.l2_entry_bytes], (c << g.cluster_bits) | kOflagCopied);
      }
      DMU_TRY(f->write((l2_at + i) * cs, l2));
    }
  }
  if (data) {
    DMU_TRY(data->sync());
    DMU_TRY(env.sync_directory_of(*p.data_file_path));
  }
  DMU_TRY(f->sync());
  return env.sync_directory_of(path);
}

}  // namespace dmu::formats::qcow2
