// The interface every format engine implements (raw, qcow, qcow2, vmdk).
//
// An Image is one file of a backing chain (plus its own data files: vmdk
// extents, a qcow2 external data file).  It answers "where do the guest bytes
// [offset, offset + length) live?" for the longest prefix that has one answer,
// and, when opened read-write, prepares ranges for writing and commits
// metadata.  It never moves guest data itself: the caller (the kernel through
// the daemon, or the in-process transport of `dmu io`) reads and writes the
// data files at the places the engine names.  The one exception is
// read_compressed(), which decodes a compressed cluster.
//
// Write protocol (the caller's side, for a guest write to [off, off + len)):
//   1. old = chain.map(...)            how the range reads now
//   2. t = image.prepare_write(off, len)
//   3. if t.fresh: fill the parts of t's range the write does not cover with
//      their old contents (copy from `old`, or zeros), so no sector is left
//      with stale bytes
//   4. write the guest data at t.file / t.host_offset
//   5. image.write_done(t.token, ok)   now metadata may point at the data
//   6. on a guest flush: make the data written in place durable (sync the
//      data files, or the kernel's flush of its data devices), then
//      image.commit()
// commit() makes durable exactly the allocations that reached write_done, in
// the order data -> refcounts -> L2 -> L1/header with a sync between
// dependent steps (the first syncs the data files before any metadata that
// points into them), so a crash at any point leaves a consistent image that
// holds every write acknowledged by a completed commit.
//
// Restart (adopt_write): a process that dies between steps 2 and 6 leaves
// preparations nobody committed; the kernel still uses their host ranges and
// reports them to the next process, which opens the image afresh (its
// metadata holds only what was committed) and, before anything else changes
// the image, calls adopt_write for each: the range becomes a pending
// preparation exactly as if prepare_write had just returned it, and
// write_done(token, ok) decides as usual (ok: metadata may point at it; not
// ok: its space is released).  Adoptions are checked against the committed
// metadata: a host range that overlaps metadata, or data of another guest
// range, or that the format cannot express for that guest range, is refused
// (nothing of that call changes then).  A range the committed metadata
// already maps there (the dead process committed before the kernel saw it)
// is adopted as the in-place write it now is.  Adoptions come first because
// the engine must not place metadata of its own on a range a later adoption
// names: qcow2 defers the refcounts and L2 tables the adoptions need to the
// first call that is not an adoption (write_done included), keeping every
// adopted cluster out of its allocator until then; qcow and vmdk, which only
// append, move their allocation point past each adopted range.  Host ranges
// past the end of the file are legal (the dead process grew it).  raw has no
// metadata and never answers EBUSY.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "common/error.h"
#include "fileio/file.h"

namespace dmu::formats {

enum class Access { ReadOnly, ReadWrite };

// What one guest range of one image is.
enum class MapKind {
  Data,         // the bytes are in data_files()[file] at host_offset
  Zero,         // reads as zeros in this image (zero cluster, zero grain)
  Unallocated,  // not in this image: read the backing image (zeros if none)
  Compressed,   // stored compressed: read_compressed() returns the bytes
};

struct Mapping {
  uint64_t length = 0;  // bytes from the asked offset for which this holds, > 0
  MapKind kind = MapKind::Unallocated;
  unsigned file = 0;         // Data: index into data_files()
  uint64_t host_offset = 0;  // Data: where the asked offset lives in that file
  // Data that a guest write may overwrite in place (allocated in this image,
  // not shared with a snapshot, not compressed): the daemon can hand it out
  // writable on a read miss and save the write miss later.
  bool writable = false;
};

// What qemu-img info shows as "format-specific" (formats/format_specific_json.h
// renders it in qemu-img's JSON), for the formats that have any.
struct Qcow2Bitmap {
  std::string name;
  uint64_t granularity = 0;
  bool in_use = false, autoload = false;  // the "in-use" and "auto" flags
};
struct Qcow2Specific {
  bool v3 = true;  // compat 1.1; version 2 is compat 0.10
  bool zstd = false;
  uint32_t refcount_bits = 16;
  bool lazy_refcounts = false, corrupt = false, extended_l2 = false;  // shown for v3 only
  std::optional<std::string> data_file;                               // as written in the image
  bool data_file_raw = false;
  std::vector<Qcow2Bitmap> bitmaps;
};
struct VmdkExtentSpecific {
  uint64_t virtual_size = 0;
  std::string filename;
  std::string format;         // the descriptor's type: SPARSE, FLAT, VMFS ...
  uint64_t cluster_size = 0;  // the grain; 0 for flat extents
  bool compressed = false;
};
struct VmdkSpecific {
  uint32_t cid = 0, parent_cid = 0;
  std::string create_type;
  std::vector<VmdkExtentSpecific> extents;
};
using FormatSpecific = std::variant<std::monostate, Qcow2Specific, VmdkSpecific>;

struct ImageInfo {
  std::string format;        // "raw", "qcow", "qcow2", "vmdk" (as qemu-img names it)
  std::string filename;      // the path it was opened with
  uint64_t virtual_size = 0;
  uint64_t cluster_size = 0;  // qemu-img info's cluster-size; 0 where it has none
  // The smallest aligned unit whose mapping can differ from its neighbours
  // (subcluster for extended L2, grain for vmdk, 512 for raw).  Mapping
  // lengths and prepare_write ranges are multiples of it, except at the end
  // of the virtual disk.  The daemon uses it as the dm block size.
  uint64_t granularity = 512;
  std::optional<std::string> backing_file;         // as written in the image
  std::optional<std::string> backing_file_format;  // as written, if it says
  bool dirty = false;                              // needs check/repair before use
  FormatSpecific format_specific;                  // monostate where qemu-img info shows none
};

// A range prepared for a guest write.
struct WriteTarget {
  uint64_t offset = 0;  // guest range, granularity-aligned, covers the start
  uint64_t length = 0;  // of the asked range (may be shorter or longer)
  unsigned file = 0;
  uint64_t host_offset = 0;
  // Newly allocated: holds garbage until the caller fills it (step 3) and
  // reports write_done; until then commit() will not point metadata at it.
  bool fresh = false;
  uint64_t token = 0;  // names this preparation in write_done
};

// Findings of check(), as qemu-img check reports them.
struct CheckReport {
  uint64_t corruptions = 0;
  uint64_t leaks = 0;
  uint64_t check_errors = 0;
  uint64_t corruptions_fixed = 0;
  uint64_t leaks_fixed = 0;
  uint64_t allocated_clusters = 0;
  uint64_t total_clusters = 0;
  uint64_t fragmented_clusters = 0;
  uint64_t compressed_clusters = 0;
  std::optional<uint64_t> image_end_offset;
  std::vector<std::string> messages;  // one line per finding
};

enum class Repair { None, Leaks, All };

// How an engine's adopt_write names what it refuses:
//   "IMAGE: cannot adopt guest [0x..., +0x...) at host 0x... (file N)"
inline std::string adopt_context(const std::string& image, uint64_t offset, uint64_t length,
                                 unsigned file, uint64_t host_offset) {
  return image + ": cannot adopt guest [" + hex(offset) + ", +" + hex(length) + ") at host " +
         hex(host_offset) + " (file " + std::to_string(file) + ")";
}

class Image {
 public:
  virtual ~Image() = default;
  Image() = default;
  Image(const Image&) = delete;
  Image& operator=(const Image&) = delete;

  virtual const ImageInfo& info() const = 0;
  // The files holding guest data; Mapping::file and WriteTarget::file index it.
  virtual std::vector<File*> data_files() = 0;

  // Where [offset, offset + length) lives, for the longest prefix with one
  // answer.  offset < virtual_size, length > 0.
  virtual Result<Mapping> map(uint64_t offset, uint64_t length) = 0;

  // Decodes the guest bytes [offset, offset + out.size()) of a Compressed
  // range (the range must lie inside one Compressed mapping).
  virtual Result<void> read_compressed(uint64_t offset, std::span<uint8_t> out) = 0;

  // --- read-write images only ---

  // Makes guest range [offset, ...) writable in place (see WriteTarget).
  virtual Result<WriteTarget> prepare_write(uint64_t offset, uint64_t length) = 0;
  // The caller finished step 3 and 4 for token (ok = the writes succeeded).
  virtual Result<void> write_done(uint64_t token, bool ok) = 0;
  // Guest range [offset, offset + length) was prepared for writing at
  // data_files()[file] host_offset by a process that died; its data may or
  // may not have landed.  Registers it as a pending preparation (the token
  // names it in write_done, like prepare_write's).  offset and offset +
  // length must be granularity-aligned (or the end of the disk), and
  // host_offset where the format can put offset (same place in a cluster).
  // Only while nothing but adoptions changed the image since it was opened,
  // or since a commit that left nothing in flight (EBUSY otherwise); refused
  // with EINVAL (naming the image and the offsets) when it contradicts the
  // image: see the top of this file.
  virtual Result<uint64_t> adopt_write(uint64_t offset, uint64_t length, unsigned file,
                                       uint64_t host_offset) = 0;
  // A discard that process answered after its last commit, in its place
  // among the adoptions (the order the kernel lists them): from here on the
  // range reads as that discard left it, earlier adoptions inside it are
  // forgotten, and later ones may place it anew, as the dead process did.
  // The data file already holds the discard's effect (holes punched): only
  // metadata changes, and only when adoption ends.  Same phase rule as
  // adopt_write.  Returns the guest byte range [first, second) whose
  // mapping the replay changes (empty when none): no write of that range
  // can have been in flight when the dead process answered the discard.
  // Engines whose discard leaves the metadata alone (raw, qcow, vmdk)
  // have nothing to replay.
  virtual Result<std::pair<uint64_t, uint64_t>> adopt_discard(uint64_t offset, uint64_t length) {
    (void)offset;
    (void)length;
    return std::pair<uint64_t, uint64_t>{0, 0};
  }
  // [offset, offset + length) reads as zeros afterwards.  may_unmap: the
  // space may be released (discard / write -z -u).  Returns ENOTSUP when the
  // format cannot express zeros for this range (qcow v1 with a backing file):
  // the caller then writes zero bytes through prepare_write.
  virtual Result<void> write_zeroes(uint64_t offset, uint64_t length, bool may_unmap) = 0;
  // A discard: the range's contents become unspecified-but-stable; engines
  // release space where they can (QEMU semantics for the format).
  virtual Result<void> discard(uint64_t offset, uint64_t length) = 0;
  // Makes all completed writes' metadata durable (see the top of this file).
  virtual Result<void> commit() = 0;

  // Checks (and with Repair, fixes) the image's metadata.
  virtual Result<CheckReport> check(Repair repair) = 0;

  // The caller writes in aligned blocks of `bytes` (a power of two), each of
  // which must lie contiguously in one data file: the dm target remaps a
  // block as a whole, and its blocks are at least 4 KiB.  An engine whose
  // units are smaller then keeps every block it prepares for writing
  // contiguous, moving a block whose parts lie apart to a fresh place as a
  // copy-on-write does (qcow2 does; the others ignore it, and the map
  // service fails writes to such blocks with EIO).
  virtual void set_write_block(uint64_t bytes) { (void)bytes; }
};

struct CreateOptions {
  uint64_t virtual_size = 0;
  std::map<std::string, std::string> options;  // -o key=value, as qemu-img names them
  std::optional<std::string> backing_file;
  std::optional<std::string> backing_format;
};

// One format: a row in the registry (formats/registry.cc).
struct Driver {
  const char* name;  // "qcow2"
  // Confidence 0..100 that the first bytes (up to 4 KiB, may be shorter) are
  // this format; raw answers 1 for anything.
  int (*probe)(std::span<const uint8_t> head, const std::string& path);
  Result<std::unique_ptr<Image>> (*open)(Env& env, const std::string& path, Access access);
  Result<void> (*create)(Env& env, const std::string& path, const CreateOptions& options);
};

// All drivers, raw last.
std::span<const Driver> drivers();
const Driver* find_driver(const std::string& name);
// How much of a file's start the probe looks at.
inline constexpr size_t kProbeBytes = 4096;
// The best driver for a file by probing its first bytes.
Result<const Driver*> probe(Env& env, const std::string& path);
// The same for a file whose first bytes are these (up to kProbeBytes).
Result<const Driver*> probe_head(std::span<const uint8_t> head, const std::string& path);

}  // namespace dmu::formats
