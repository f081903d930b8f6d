// Rebuilding the refcount structures from scratch (check with Repair::All
// when the existing refcount table or blocks cannot be trusted, or when the
// refcount of a referenced cluster lacks a block).  The new table and
// blocks are written past the end of the file, so nothing in use is
// overwritten, and the header is switched to them only once they are
// durable; the old structures become leaks, which check() then frees.
#include <algorithm>

#include "common/endian.h"
#include "formats/qcow2/qcow2_image.h"

namespace dmu::formats::qcow2 {

Result<void> Qcow2Image::rebuild_refcounts(const std::vector<uint32_t>& counted,
                                           CheckReport& report) {
  if (access_ != Access::ReadWrite) return fail(EROFS, path_ + ": cannot rebuild read-only");
  DMU_ASSIGN_OR_RETURN(uint64_t file_size, file_->size());
  const uint64_t per_table_cluster = g_.cluster_size / 8;
  const uint64_t start = std::max<uint64_t>(g_.clusters_for(file_size), counted.size());
  // Fixed point: the table and the blocks must cover themselves too.
  uint64_t t = 1, nblocks = 0;
  for (int i = 0; i < 64; ++i) {
    uint64_t total = start + t + nblocks;
    uint64_t nb = (total + g_.refblock_entries - 1) >> g_.refblock_bits;
    uint64_t nt = (nb + per_table_cluster - 1) / per_table_cluster;
    if (nb == nblocks && nt == t) break;
    nblocks = nb;
    t = std::max<uint64_t>(nt, 1);
  }
  if ((t << g_.cluster_bits) > kMaxRefTableBytes)
    return fail(ENOSPC, path_ + ": a rebuilt refcount table would exceed 8 MiB");

  std::vector<uint32_t> refs = counted;
  refs.resize(start + t + nblocks, 0);
  for (uint64_t c = start; c < start + t + nblocks; ++c) refs[c] = 1;

  std::vector<uint8_t> table(t << g_.cluster_bits, 0);
  std::vector<uint8_t> block(g_.cluster_size);
  for (uint64_t b = 0; b < nblocks; ++b) {
    std::fill(block.begin(), block.end(), 0);
    uint64_t first = b << g_.refblock_bits;
    for (uint64_t i = 0; i < g_.refblock_entries && first + i < refs.size(); ++i) {
      uint64_t v = refs[first + i];
      if (v > g_.refcount_max)
        return fail(EOVERFLOW, path_ + ": cluster " + std::to_string(first + i) + " has " +
                                   std::to_string(v) + " references, more than " +
                                   std::to_string(g_.refcount_bits) + "-bit refcounts hold");
      set_refcount_entry(block.data(), g_.refcount_order, i, v);
    }
    uint64_t at = (start + t + b) << g_.cluster_bits;
    DMU_TRY(file_->write(at, block));
    store_be64(&table[b * 8], at);
  }
  DMU_TRY(file_->write(start << g_.cluster_bits, table));
  DMU_TRY(file_->sync());
  uint8_t fields[12];
  store_be64(fields, start << g_.cluster_bits);
  store_be32(fields + 8, uint32_t(t));
  DMU_TRY(file_->write(field::kRefcountTableOffset, fields));
  DMU_TRY(file_->sync());
  header_.refcount_table_offset = start << g_.cluster_bits;
  header_.refcount_table_clusters = uint32_t(t);
  report.messages.push_back("Refcount structure rebuilt: table at " +
                            hex(header_.refcount_table_offset) + ", " + std::to_string(nblocks) +
                            " block(s)");
  return reload_refcounts();
}

}  // namespace dmu::formats::qcow2
