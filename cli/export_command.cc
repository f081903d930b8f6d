// dmu export: the guest-visible bytes of an image (through its backing
// chain) as a raw file.  Zero and unallocated ranges, and data blocks that
// are all zeros, become holes, so the output is as sparse as qemu-img
// convert's.  Reading overlaps writing: SparseWriter writes on a thread of
// its own.  Progress goes to stderr when it is a terminal.
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>

#include "cli/cli_common.h"
#include "cli/sparse_writer.h"

namespace dmu::cli {

extern const Command kExport;

namespace {

constexpr uint64_t kChunk = 1 << 20;  // bytes read at once
constexpr size_t kBuffers = 8;        // chunks read ahead of the writer

class Progress {
 public:
  Progress(uint64_t total) : total_(total), enabled_(::isatty(STDERR_FILENO) == 1) {}
  void update(uint64_t done, bool final = false) {
    if (!enabled_) return;
    auto now = std::chrono::steady_clock::now();
    if (!final && now - last_ < std::chrono::milliseconds(200)) return;
    last_ = now;
    double secs = std::chrono::duration<double>(now - start_).count();
    double pct = total_ ? 100.0 * double(done) / double(total_) : 100.0;
    double mbs = secs > 0 ? double(done) / 1e6 / secs : 0;
    std::fprintf(stderr, "\r    (%6.2f/100%%) %8.1f MB/s", pct, mbs);
    if (final) std::fprintf(stderr, "\n");
  }

 private:
  uint64_t total_;
  bool enabled_;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point last_{};
};

// Bytes from `offset` (at most `length`) that are a hole of the file, as
// SEEK_DATA tells; 0 when they start with data or the file cannot tell.
uint64_t hole_bytes(File& file, uint64_t offset, uint64_t length) {
  if (file.fd() < 0) return 0;
  off_t data = ::lseek(file.fd(), off_t(offset), SEEK_DATA);
  if (data < 0) return errno == ENXIO ? length : 0;  // ENXIO: only a hole up to the end
  return std::min<uint64_t>(length, uint64_t(data) - offset);
}

Result<void> export_chain(formats::Chain& chain, File& out) {
  const uint64_t size = chain.virtual_size();
  DMU_TRY(out.truncate(size));  // everything not written stays a hole
  Progress progress(size);
  SparseWriter writer(out, kBuffers, kChunk);
  for (uint64_t pos = 0; pos < size;) {
    DMU_ASSIGN_OR_RETURN(formats::ChainMapping m,
                         chain.map(pos, std::min(size - pos, kChunk * 64)));
    if (m.kind == formats::ChainMapping::Kind::Zero) {
      pos += m.length;
      progress.update(pos);
      continue;
    }
    File* device =
        m.kind == formats::ChainMapping::Kind::Data ? chain.devices()[m.device] : nullptr;
    for (uint64_t done = 0; done < m.length;) {
      if (device) {
        // Holes of the data file read as zeros: skip them without reading.
        const uint64_t skip = hole_bytes(*device, m.host_offset + done, m.length - done);
        if (skip) {
          done += skip;
          progress.update(pos + done);
          continue;
        }
      }
      const uint64_t n = std::min(kChunk, m.length - done);
      DMU_ASSIGN_OR_RETURN(std::span<uint8_t> buffer, writer.acquire());
      std::span<uint8_t> part = buffer.first(n);
      if (device) {
        DMU_ASSIGN_OR_RETURN(size_t got, device->read_some(m.host_offset + done, part));
        std::memset(part.data() + got, 0, n - got);  // past the file's end reads as zeros
      } else {
        DMU_TRY(chain.read(pos + done, part));
      }
      writer.submit(pos + done, buffer, n);
      done += n;
      progress.update(pos + done);
    }
    pos += m.length;
  }
  DMU_TRY(writer.finish());
  // No fsync, like cp and qemu-img convert (whose output cache mode is
  // "unsafe"): the file is complete for every reader once we return.
  progress.update(size, true);
  return {};
}

}  // namespace

int export_main(const std::vector<std::string>& args) {
  po::options_description options("options");
  options.add_options()("format,f", po::value<std::string>(), "image format (probed if absent)")(
      "image", po::value<std::string>()->required(), "the image")(
      "output", po::value<std::string>()->required(), "the raw file to write");
  po::positional_options_description positional;
  positional.add("image", 1).add("output", 1);
  int code = kExitOk;
  auto vm = parse_args(args, kExport, options, positional, &code);
  if (!vm) return code;
  const std::string image = (*vm)["image"].as<std::string>();
  const std::string output = (*vm)["output"].as<std::string>();
  std::optional<std::string> format;
  if (vm->count("format")) format = (*vm)["format"].as<std::string>();

  auto chain = open_chain(image, format, formats::Access::ReadOnly, true);
  if (!chain) return report(chain.error());
  if (auto out_id = posix_env().identity(output)) {
    for (File* f : (*chain)->devices()) {
      auto id = posix_env().identity(f->path());
      if (id && *id == *out_id)
        return report(Error{EINVAL, output + ": is part of the image being exported"});
    }
  }
  auto out = posix_env().open(output, OpenMode::CreateTruncate);
  if (!out) return report(out.error());
  if (auto r = export_chain(**chain, **out); !r) {
    // What was written is no export of the image: do not leave it behind
    // (unless OUTPUT is a device node, which must never be unlinked).
    struct stat st {};
    out->reset();
    if (::stat(output.c_str(), &st) == 0 && S_ISREG(st.st_mode)) (void)posix_env().remove(output);
    return report(r.error());
  }
  return kExitOk;
}

}  // namespace dmu::cli
