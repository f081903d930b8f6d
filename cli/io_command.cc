// dmu io: qemu-io style commands on an image, executed through the map
// service and the in-process transport, i.e. through the same code the
// mapping daemon runs for the kernel.  Supported: read [-P pattern] OFF LEN,
// write [-P pattern | -z] OFF LEN, discard OFF LEN, flush.  The first failing
// command ends the run (exit 1); the image is committed at the end, as
// qemu-io does when it closes it.  As QEMU does, a write to a raw image
// whose format was probed fails with EPERM when the image's first bytes
// would then probe as another format (a guest's write must not turn its
// disk into, say, a qcow2 image naming a host file as its backing file).
#include <chrono>
#include <cstdio>
#include <sstream>

#include "cli/cli_common.h"
#include "fileio/mem_env.h"
#include "mapper/inprocess_transport.h"

namespace dmu::cli {

extern const Command kIo;

namespace {

constexpr uint64_t kIoChunk = 4 << 20;  // large requests are done in pieces

struct IoCommand {
  std::string verb;  // read, write, discard, flush
  bool zero = false;
  std::optional<uint8_t> pattern;
  uint64_t offset = 0, length = 0;
  std::string text;
};

Result<IoCommand> parse_command(const std::string& text) {
  std::istringstream in(text);
  std::vector<std::string> words;
  for (std::string w; in >> w;) words.push_back(w);
  IoCommand c;
  c.text = text;
  if (words.empty()) return fail(EINVAL, "empty command");
  c.verb = words[0];
  if (c.verb == "d") c.verb = "discard";
  if (c.verb == "f") c.verb = "flush";
  if (c.verb != "read" && c.verb != "write" && c.verb != "discard" && c.verb != "flush")
    return fail(EINVAL, "unknown command '" + words[0] + "' in '" + text +
                            "' (supported: read, write, discard, flush)");
  std::vector<std::string> rest;
  for (size_t i = 1; i < words.size(); ++i) {
    const std::string& w = words[i];
    if (w == "-P" && c.verb != "discard" && c.verb != "flush") {
      if (++i == words.size()) return fail(EINVAL, "-P needs a pattern in '" + text + "'");
      char* end = nullptr;
      long v = std::strtol(words[i].c_str(), &end, 0);
      if (*end || v < 0 || v > 255) return fail(EINVAL, "bad pattern '" + words[i] + "'");
      c.pattern = uint8_t(v);
    } else if (w == "-z" && c.verb == "write") {
      c.zero = true;
    } else if (w == "-q") {
      // quiet: accepted for qemu-io compatibility
    } else if (!w.empty() && w[0] == '-' && w.size() > 1 && !std::isdigit(uint8_t(w[1]))) {
      return fail(EINVAL, "unsupported option " + w + " in '" + text + "'");
    } else {
      rest.push_back(w);
    }
  }
  if (c.zero && c.pattern) return fail(EINVAL, "-z and -P exclude each other in '" + text + "'");
  if (c.verb == "flush") {
    if (!rest.empty()) return fail(EINVAL, "flush takes no arguments in '" + text + "'");
    return c;
  }
  if (rest.size() != 2) return fail(EINVAL, "'" + text + "' needs OFFSET and LENGTH");
  DMU_ASSIGN_OR_RETURN(c.offset, parse_size(rest[0]));
  DMU_ASSIGN_OR_RETURN(c.length, parse_size(rest[1]));
  return c;
}

void print_done(const IoCommand& c, double secs) {
  const char* what = c.verb == "read" ? "read" : c.verb == "write" ? "wrote" : "discard";
  std::printf("%s %llu/%llu bytes at offset %llu\n", what, (unsigned long long)c.length,
              (unsigned long long)c.length, (unsigned long long)c.offset);
  const double mib = double(c.length) / (1 << 20);
  std::printf("%s, 1 ops; %05.2f sec (%.3f MiB/sec and %.4f ops/sec)\n",
              human_size(c.length).c_str(), secs, secs > 0 ? mib / secs : 0.0,
              secs > 0 ? 1 / secs : 0.0);
}

// QEMU's rule for a probed raw image (block/raw-format.c): the write may not
// make the image probe as another format.  QEMU looks at the first 512
// bytes of an aligned write; ours can be unaligned and our probe reads
// kProbeBytes, so the check is on that window as the write would leave it.
// Discards and zero writes are checked too: cheap, and never a loss.
Result<void> check_probed_raw(mapper::InprocessTransport& io, const std::string& image,
                              uint64_t image_size, const IoCommand& c) {
  if (c.verb == "read" || c.verb == "flush" || c.offset >= formats::kProbeBytes) return {};
  std::vector<uint8_t> head(std::min<uint64_t>(formats::kProbeBytes, image_size));
  if (c.offset >= head.size()) return {};
  DMU_TRY(io.read(0, head));
  const uint8_t value = c.verb == "discard" || c.zero ? 0 : c.pattern.value_or(0xcd);
  // No c.offset + c.length: a huge length would wrap past the window.
  const uint64_t end = c.offset + std::min<uint64_t>(c.length, head.size() - c.offset);
  for (uint64_t i = c.offset; i < end; ++i) head[i] = value;
  DMU_ASSIGN_OR_RETURN(const formats::Driver* d, formats::probe_head(head, image));
  if (std::string(d->name) != "raw")
    return fail(EPERM, "the write would make this probed raw image probe as " +
                           std::string(d->name) + " (name the format: -f raw)");
  return {};
}

Result<void> run(mapper::InprocessTransport& io, const IoCommand& c) {
  if (c.verb == "flush") return io.flush();
  if (c.verb == "discard") return io.discard(c.offset, c.length);
  std::vector<uint8_t> buf(std::min(c.length, kIoChunk));
  if (c.verb == "write") std::fill(buf.begin(), buf.end(), c.zero ? 0 : c.pattern.value_or(0xcd));
  for (uint64_t done = 0; done < c.length;) {
    const uint64_t n = std::min(kIoChunk, c.length - done);
    std::span<uint8_t> part(buf.data(), n);
    if (c.verb == "write") {
      DMU_TRY(io.write(c.offset + done, part));
    } else {
      DMU_TRY(io.read(c.offset + done, part));
      if (c.pattern)
        for (uint64_t i = 0; i < n; ++i)
          if (part[i] != *c.pattern)
            return fail(EIO, "Pattern verification failed at offset " +
                                 std::to_string(c.offset + done + i) + ", " +
                                 std::to_string(c.length) + " bytes");
    }
    done += n;
  }
  return {};
}

}  // namespace

int io_main(const std::vector<std::string>& args) {
  po::options_description options("options");
  options.add_options()("format,f", po::value<std::string>(), "image format (probed if absent)")(
      "cmd,c", po::value<std::vector<std::string>>()->required(),
      "a command: read [-P pattern] OFF LEN | write [-P pattern | -z] OFF LEN | discard OFF LEN "
      "| flush")("image", po::value<std::string>()->required(), "the image");
  po::positional_options_description positional;
  positional.add("image", 1);
  int code = kExitOk;
  auto vm = parse_args(args, kIo, options, positional, &code);
  if (!vm) return code;
  const std::string image = (*vm)["image"].as<std::string>();
  std::optional<std::string> format;
  if (vm->count("format")) format = (*vm)["format"].as<std::string>();

  std::vector<IoCommand> commands;
  bool writes = false;
  for (const std::string& text : (*vm)["cmd"].as<std::vector<std::string>>()) {
    auto c = parse_command(text);
    if (!c) return report(std::move(c.error()).context(image));
    writes = writes || c->verb == "write" || c->verb == "discard";
    commands.push_back(std::move(*c));
  }

  // Only images that will be written are opened read-write: reading a
  // (possibly hostile) image never changes it.
  auto chain = open_chain(image, format,
                          writes ? formats::Access::ReadWrite : formats::Access::ReadOnly, true);
  if (!chain) return report(chain.error());
  MemEnv scratch_env;  // decompressed clusters need no file of their own here
  const uint64_t block = mapper::choose_block_size(**chain);
  auto scratch = mapper::ScratchStore::create(scratch_env, "scratch", 64 << 20, block, false);
  if (!scratch) return report(scratch.error());
  auto service = mapper::MapService::create(**chain, std::move(*scratch), {});
  if (!service) return report(service.error());
  mapper::InprocessTransport io(**service);
  const bool probed_raw = !format && (*chain)->top().info().format == "raw";
  const uint64_t size = (*chain)->top().info().virtual_size;

  for (const IoCommand& c : commands) {
    auto start = std::chrono::steady_clock::now();
    auto r = probed_raw ? check_probed_raw(io, image, size, c) : Result<void>{};
    if (r) r = run(io, c);
    if (!r) {
      (void)io.flush();  // keep what earlier commands wrote, as qemu-io would
      return report(std::move(r.error()).context(image + ": " + c.text));
    }
    if (c.verb != "flush")
      print_done(c,
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  if (writes)
    if (auto r = io.flush(); !r) return report(r.error());
  return kExitOk;
}

}  // namespace dmu::cli
