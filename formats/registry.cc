// The list of formats.  Adding a format: one folder under formats/ and one
// line here.
#include <algorithm>
#include <array>
#include <vector>

#include "formats/image.h"

namespace dmu::formats {

extern const Driver qcow2_driver;
extern const Driver qcow_driver;
extern const Driver vmdk_driver;
extern const Driver raw_driver;

namespace {
// Probed in this order; raw accepts anything, so it comes last.
const std::array<Driver, 4> kDrivers = {qcow2_driver, qcow_driver, vmdk_driver, raw_driver};
}  // namespace

std::span<const Driver> drivers() {
  return kDrivers;
}

const Driver* find_driver(const std::string& name) {
  for (const Driver& d : kDrivers)
    if (name == d.name) return &d;
  return nullptr;
}

Result<const Driver*> probe(Env& env, const std::string& path) {
  DMU_ASSIGN_OR_RETURN(auto file, env.open(path, OpenMode::ReadOnly));
  std::vector<uint8_t> head(kProbeBytes);
  DMU_ASSIGN_OR_RETURN(size_t n, file->read_some(0, head));
  head.resize(n);
  return probe_head(head, path);
}

Result<const Driver*> probe_head(std::span<const uint8_t> bytes, const std::string& path) {
  // QEMU probes a zero-padded 512-byte buffer: a file cut inside a qcow or
  // qcow2 header is still that format (and refused), never raw.
  std::vector<uint8_t> head(bytes.begin(), bytes.begin() + std::min(bytes.size(), kProbeBytes));
  head.resize(std::max<size_t>(head.size(), 512));
  const Driver* best = nullptr;
  int best_score = 0;
  for (const Driver& d : kDrivers) {
    int score = d.probe(head, path);
    if (score > best_score) {
      best = &d;
      best_score = score;
    }
  }
  if (!best) return fail(EINVAL, path + ": unknown image format");
  return best;
}

}  // namespace dmu::formats
