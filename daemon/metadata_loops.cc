// Metadata loops; see metadata_loops.h.
#include "daemon/metadata_loops.h"

#include <set>

namespace dmu::daemon {

Result<std::vector<MetadataFile>> metadata_files(const formats::Chain& chain,
                                                 const std::string& image, bool writable) {
  // By identity, not by name: the engines name a qcow2 file's own data file
  // with the path the image was opened with, a backing image may be named
  // through a symlink or "dir/../".
  std::set<std::string> covered;
  for (File* f : chain.devices()) {
    DMU_ASSIGN_OR_RETURN(std::string id, posix_env().identity(f->path()));
    covered.insert(id);
  }
  std::vector<MetadataFile> out;
  const auto images = chain.images();
  for (size_t depth = 0; depth < images.size(); ++depth) {
    const std::string& name = images[depth]->info().filename;
    DMU_ASSIGN_OR_RETURN(std::string path, posix_env().identity(name));
    if (!covered.insert(path).second) continue;
    MetadataFile m;
    m.path = path;
    m.mode = depth == 0 && writable ? LockMode::Writer : LockMode::Reader;
    if (name != image) m.named_by = depth == 0 ? image : images[depth - 1]->info().filename;
    out.push_back(std::move(m));
  }
  return out;
}

Result<mapper::LoopDevice> attach_metadata_loop(const MetadataFile& file) {
  mapper::LoopOptions lo;
  lo.read_only = true;   // nothing is read or written through it
  lo.direct_io = false;  // a 300-byte vmdk descriptor is no multiple of a sector
  lo.autoclear = true;   // until keep_after_close(), see the header
  lo.lock = file.mode;
  lo.named_by = file.named_by;
  return mapper::LoopDevice::attach(file.path, lo);
}

Result<void> restore_metadata_loops(DeviceState& state) {
  std::vector<mapper::LoopDevice> made;
  DeviceState updated = state;
  for (MetadataLoop& m : updated.metadata_loops) {
    if (mapper::open_loop_of(m.loop, m.file)) continue;  // still bound: its locks are in place
    const LockMode mode = m.writer ? LockMode::Writer : LockMode::Reader;
    // Checked first: while nothing of ours held the file, QEMU may have
    // taken it, and serving under its feet would corrupt the image.
    auto held = ImageLock::acquire(m.file, mode);
    if (!held)
      return fail(held.error().code,
                  state.name + ": the loop device holding the locks on " + m.file +
                      " is gone and they cannot be taken again: " + held.error().message);
    MetadataFile f{m.file, mode, std::nullopt};
    if (m.file != state.image) f.named_by = state.image;
    DMU_ASSIGN_OR_RETURN(mapper::LoopDevice loop, attach_metadata_loop(f));
    m.loop = loop.path();
    made.push_back(std::move(loop));
  }
  if (made.empty()) return {};
  // Recorded before autoclear goes: dying in between leaves a record naming
  // a loop that went with us, which the next start sets up again.
  DMU_TRY(write_state(updated));
  for (mapper::LoopDevice& l : made) DMU_TRY(l.keep_after_close());
  for (mapper::LoopDevice& l : made) l.release();
  state = std::move(updated);
  return {};
}

Result<void> release_metadata_loops(const DeviceState& state) {
  for (const MetadataLoop& m : state.metadata_loops) {
    DMU_TRY(mapper::detach_loop_of(m.loop, m.file));
    mapper::wait_loop_released(m.loop, m.file);
  }
  return {};
}

}  // namespace dmu::daemon
