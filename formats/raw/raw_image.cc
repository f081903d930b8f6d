// The raw engine (see raw_image.h).
#include "formats/raw/raw_image.h"

#include <unistd.h>

#include "common/checked.h"

namespace dmu::formats::raw {
namespace {

constexpr uint64_t kSector = 512;

// Where the data/hole run that contains `offset` ends, by SEEK_DATA and
// SEEK_HOLE.  Files without a descriptor (in-memory test files) are all data.
struct Run {
  bool data = true;
  uint64_t end = 0;  // exclusive; may exceed the file size
};

Result<Run> run_at(File& file, uint64_t offset, uint64_t file_size) {
  int fd = file.fd();
  if (fd < 0) return Run{true, file_size};
  off_t data = ::lseek(fd, off_t(offset), SEEK_DATA);
  if (data < 0) {
    // ENXIO: no data at or after offset (a hole up to EOF).  EINVAL: the file
    // system does not support SEEK_DATA; treat everything as data.
    if (errno == ENXIO) return Run{false, file_size};
    if (errno == EINVAL || errno == EOPNOTSUPP) return Run{true, file_size};
    return fail(errno_error(file.path() + ": SEEK_DATA at " + hex(offset)));
  }
  if (uint64_t(data) > offset) return Run{false, uint64_t(data)};
  off_t hole = ::lseek(fd, off_t(offset), SEEK_HOLE);
  if (hole < 0) return fail(errno_error(file.path() + ": SEEK_HOLE at " + hex(offset)));
  if (uint64_t(hole) <= offset) return Run{true, file_size};  // raced with a writer
  return Run{true, uint64_t(hole)};
}

}  // namespace

Result<std::unique_ptr<Image>> RawImage::open(Env& env, const std::string& path, Access access) {
  DMU_ASSIGN_OR_RETURN(auto file, env.open(path, access == Access::ReadWrite ? OpenMode::ReadWrite
                                                                             : OpenMode::ReadOnly));
  DMU_ASSIGN_OR_RETURN(uint64_t size, file->size());
  ImageInfo info;
  info.format = "raw";
  info.filename = path;
  info.virtual_size = size;
  info.cluster_size = 0;
  info.granularity = kSector;
  return std::unique_ptr<Image>(new RawImage(std::move(file), access, std::move(info)));
}

Result<void> RawImage::check_range(uint64_t offset, uint64_t length, const char* what) const {
  if (length == 0 || !range_within(offset, length, info_.virtual_size))
    return fail(EINVAL, info_.filename + ": " + what + " of " + std::to_string(length) +
                            " bytes at " + hex(offset) + " is outside the virtual disk (" +
                            std::to_string(info_.virtual_size) + " bytes)");
  return {};
}

Result<void> RawImage::require_writable(const char* what) const {
  if (access_ != Access::ReadWrite)
    return fail(EROFS, info_.filename + ": " + what + " on an image opened read-only");
  return {};
}

Result<Mapping> RawImage::map(uint64_t offset, uint64_t length) {
  DMU_TRY(check_range(offset, length, "map"));
  if (access_ == Access::ReadWrite) {
    // Opened for writing (only ever as the top of the chain): holes read as
    // zeros through the file too, and a write there allocates in the file
    // system, not in any metadata of ours, so the whole disk is one run of
    // writable data.  The daemon then hands a hole out writable, and a guest
    // write to it needs no miss; nor is a block part data, part hole, which
    // the daemon would have to copy into its scratch store.  (qemu-img map's
    // view, holes as zeros, is for read-only opens: dmu map, backing images.)
    Mapping m;
    m.length = length;
    m.kind = MapKind::Data;
    m.host_offset = offset;
    m.writable = true;
    return m;
  }
  DMU_ASSIGN_OR_RETURN(Run run, run_at(*file_, offset, info_.virtual_size));
  // Holes and data runs come in file-system blocks; keep answers on sector
  // boundaries so the granularity promise holds.
  uint64_t asked_end = offset + length;
  uint64_t end = std::min(run.end, asked_end);
  if (end < asked_end && end % kSector) {
    uint64_t aligned = align_down(end, kSector);
    end = aligned > offset ? aligned : std::min(align_down(offset, kSector) + kSector, asked_end);
  }
  Mapping m;
  m.length = end - offset;
  if (run.data) {
    m.kind = MapKind::Data;
    m.host_offset = offset;
  } else {
    m.kind = MapKind::Zero;
  }
  return m;
}

Result<void> RawImage::read_compressed(uint64_t offset, std::span<uint8_t>) {
  return fail(EINVAL, info_.filename + ": raw images have no compressed data (read at " +
                          hex(offset) + ")");
}

Result<WriteTarget> RawImage::prepare_write(uint64_t offset, uint64_t length) {
  DMU_TRY(require_writable("write"));
  DMU_TRY(check_range(offset, length, "write"));
  WriteTarget t;
  t.offset = align_down(offset, kSector);
  // The rest of the disk maps to itself: the map service hands out as much
  // of it as it wants in one write answer (after a discard dropped the
  // kernel's extents, a sequential writer misses once per answer, not once
  // per request).
  t.length = info_.virtual_size - t.offset;
  t.file = 0;
  t.host_offset = t.offset;
  t.fresh = false;
  t.token = next_token_++;
  return t;
}

Result<void> RawImage::write_done(uint64_t token, bool) {
  if (token == 0 || token >= next_token_)
    return fail(EINVAL, info_.filename + ": write_done for unknown token " + std::to_string(token));
  return {};
}

// A raw image maps every guest byte to itself and has no metadata, so an
// adoption is only checked (the old process can only have written in place)
// and nothing this engine does can contradict a later one: raw never answers
// EBUSY here.
Result<uint64_t> RawImage::adopt_write(uint64_t offset, uint64_t length, unsigned file,
                                       uint64_t host_offset) {
  DMU_TRY(require_writable("adopt"));
  DMU_TRY(check_range(offset, length, "adopt"));
  const uint64_t end = offset + length;
  if (file != 0 || host_offset != offset || offset % kSector ||
      (end % kSector && end != info_.virtual_size))
    return fail(EINVAL, info_.filename + ": cannot adopt guest [" + hex(offset) + ", " + hex(end) +
                            ") at file " + std::to_string(file) + " offset " + hex(host_offset) +
                            ": a raw image maps each sector-aligned guest range to itself");
  return next_token_++;
}

Result<void> RawImage::write_zeroes(uint64_t offset, uint64_t length, bool) {
  DMU_TRY(require_writable("write_zeroes"));
  DMU_TRY(check_range(offset, length, "write_zeroes"));
  return file_->punch_hole(offset, length);
}

Result<void> RawImage::discard(uint64_t offset, uint64_t length) {
  DMU_TRY(require_writable("discard"));
  DMU_TRY(check_range(offset, length, "discard"));
  return file_->punch_hole(offset, length);
}

Result<void> RawImage::commit() {
  if (access_ != Access::ReadWrite) return {};
  return file_->sync();
}

Result<CheckReport> RawImage::check(Repair) {
  // A raw file has no metadata to check; answer as qemu-img does ("This image
  // format does not support checks", which dmu check turns into exit 63).
  return fail(ENOTSUP, info_.filename + ": raw images have no metadata to check");
}

}  // namespace dmu::formats::raw
