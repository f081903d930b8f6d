// One hosted sparse extent (monolithicSparse, one twoGbMaxExtentSparse piece,
// streamOptimized): header, grain directory (and the redundant one), grain
// tables on demand, and the write state.
//
// Grain table entries are sector offsets of grains: 0 unallocated (read the
// parent), 1 a zeroed grain when the header allows it, else data (a grain
// marker plus deflated bytes in compressed extents).  Writes follow
// formats/image.h: prepare() hands out grains at the end of the file
// (`inflight_`), done() moves them to `pending_` (grain index -> new entry,
// visible to lookups at once), commit() writes data -> grain tables (both
// copies) -> directory entries of new tables, syncing between the steps.
// Offsets taken and returned here are relative to the extent.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "fileio/file.h"
#include "formats/host_ranges.h"
#include "formats/image.h"
#include "formats/vmdk/sparse_header.h"

namespace dmu::formats::vmdk {

class SparseExtent {
 public:
  // Reads and validates the header (or a stream-optimized footer) and the
  // directories of `file`; `name` is used in messages.
  static Result<std::unique_ptr<SparseExtent>> open(File& file, const std::string& name);

  const SparseHeader& header() const { return header_; }
  uint64_t grain_bytes() const { return header_.grain_size * 512; }
  uint64_t size() const { return header_.capacity * 512; }
  File& file() { return file_; }

  // The longest prefix of [offset, offset + length) with one answer
  // (Mapping::file is left 0 for the caller to fill).
  Result<Mapping> map(uint64_t offset, uint64_t length, bool writable);
  Result<void> read_compressed(uint64_t offset, std::span<uint8_t> out);

  // A write target covering `offset` (WriteTarget::file and token left for
  // the caller); `token` names it in done().
  Result<WriteTarget> prepare(uint64_t offset, uint64_t length, uint64_t token);
  bool done(uint64_t token, bool ok);  // false: unknown token
  // Registers a preparation a dead process made for [offset, offset +
  // length) at host_offset under `token` (see Image::adopt_write): in place
  // when every grain is allocated there, new grains when none is and the
  // host range overlaps nothing in use.  Reserves the range (next_free_ moves
  // past it) so later grains and grain tables never land on it.
  Result<void> adopt(uint64_t offset, uint64_t length, uint64_t host_offset, uint64_t token);
  // The adoption phase is over: forget the map of used bytes.
  void end_adoption() { used_.reset(); }
  // Makes whole grains of [offset, offset + length) read as zeros (zeroed
  // grain entries, or deallocation when nothing lies below); ENOTSUP when
  // some part of the range cannot be expressed.  dry_run only checks.
  Result<void> zero(uint64_t offset, uint64_t length, bool has_parent, bool dry_run);
  bool has_pending() const { return !pending_.empty(); }
  bool has_inflight() const { return !inflight_.empty(); }
  Result<void> commit();
  // Adds this extent's findings to r (`label` prefixes messages).
  Result<void> check(CheckReport& r, const std::string& label);

 private:
  struct Grain {
    enum Kind { Unallocated, Zero, Data, Compressed } kind = Unallocated;
    uint64_t offset = 0;  // bytes in the file
  };
  struct Inflight {
    uint64_t first_grain = 0, count = 0, host_offset = 0;
  };

  SparseExtent(File& file, std::string name, SparseHeader h)
      : file_(file), name_(std::move(name)), header_(h) {}

  Result<uint64_t> file_size(bool refresh);
  Result<const std::vector<uint32_t>*> grain_table(uint64_t gd_index);
  Result<uint32_t> entry(uint64_t grain);
  Result<Grain> decode(uint64_t grain, uint32_t entry);
  Result<Grain> lookup(uint64_t grain) {
    return entry(grain).and_then([&](uint32_t e) { return decode(grain, e); });
  }
  bool table_range_empty(uint64_t grain) const;
  bool busy(uint64_t first, uint64_t count) const;
  Result<void> inflate_grain(uint64_t grain, const Grain& g);
  Result<void> write_tables(std::map<uint64_t, uint64_t>& new_tables);
  // sparse_extent_adopt.cc
  Result<void> load_used();
  Result<Inflight> plan_adoption(uint64_t offset, uint64_t end, uint64_t host);

  File& file_;
  std::string name_;
  SparseHeader header_;
  std::vector<uint32_t> gd_, rgd_;  // rgd_ empty without a redundant directory
  std::unordered_map<uint64_t, std::vector<uint32_t>> gt_cache_;  // by directory index
  std::map<uint64_t, uint32_t> pending_;                          // grain -> entry
  std::unordered_map<uint64_t, Inflight> inflight_;               // by token
  uint64_t next_free_ = 0;
  std::optional<HostRanges> used_;  // while adopting: file bytes in use
  uint64_t known_file_size_ = 0;
  uint64_t cached_grain_ = ~uint64_t(0);
  std::vector<uint8_t> cached_data_;
};

}  // namespace dmu::formats::vmdk
