// Hostile images: every dmu subcommand on every entry of the corpus that
// tests/hostile/make_corpus.py builds (truncated files, offsets past the end
// or overflowing, backing loops, huge sizes, unknown incompatible features,
// encryption, broken vmdk descriptors, grain tables and markers).
//
// Always: no crash, no hang (20 s of CPU, see kCpuLimit), at most one stderr
// line naming a file of the entry, and the files unchanged (hashed before and
// after) unless a write succeeded.  Per entry (see the generator for the classes): refuse
// at open, refuse what opens the chain, refuse reads of the damaged range,
// or, where QEMU reads such images too, a check exit code equal to
// qemu-img check's.
//
// Built with -DDMU_SANITIZE=ON, dmu runs under ASan+UBSan: a sanitizer
// report exits with a code of its own and fails the test.
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string_view>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/unit/cli_test_support.h"

namespace dmu::test {
namespace {

constexpr int kAsanExit = 86, kUbsanExit = 87;
const char* const kSanitizerEnv =
    "ASAN_OPTIONS=exitcode=86:detect_leaks=1 "
    "UBSAN_OPTIONS=exitcode=87:print_stacktrace=1 ";
// A hang is a spin: each command gets 20 s of CPU (then SIGXCPU: the soft
// limit) and a wall limit (SIGKILL) only as a backstop for one that blocks.
// The suite runs the sanitized build at nice 19 beside the VM tests
// (scripts/test.sh), where a wall limit of 20 s would measure the VMs' load.
const char* const kCpuLimit = "ulimit -S -t 20; ";
constexpr int kWallLimitSeconds = 300;

struct Command {
  const char* name;
  // %F: -f FORMAT when the entry names one; %I: the image; %N: the entry
  const char* args;
  bool writes;
};

const Command kCommands[] = {
    {"info", "info %F %I", false},
    {"info-chain", "info --backing-chain %F %I", false},
    {"map", "map --output=json %F %I", false},
    {"check", "check %F %I", false},
    {"export", "export %F %I ../../export-%N.raw", false},  // entries run side by side
    {"io-read", "io %F %I -c 'read 0 64k'", false},
    {"io-write", "io %F %I -c 'write -P 7 0 4k' -c flush", true},
};

struct Entry {
  std::string name, image, expect, format, why;
};

struct CommandRun {
  Outcome outcome;
  bool unchanged = true;
};

// What identifies a file's contents cheaply: size, modification time and,
// for files small enough, a hash of the bytes (a write that worked may grow a
// file to gigabytes, sparsely).
struct FileState {
  uint64_t size = 0;
  int64_t mtime_ns = 0;
  size_t hash = 0;
  bool operator==(const FileState&) const = default;
};

std::map<std::string, FileState> snapshot(const std::string& dir) {
  std::map<std::string, FileState> files;
  for (const auto& f : std::filesystem::directory_iterator(dir)) {
    if (!f.is_regular_file() || f.path().filename().string()[0] == '.') continue;
    struct stat st {};
    ::stat(f.path().c_str(), &st);
    FileState s{uint64_t(st.st_size), int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec,
                0};
    if (s.size <= (64u << 20)) {
      auto bytes = read_file(f.path());
      s.hash = std::hash<std::string_view>{}(
          std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
    }
    files[f.path().filename()] = s;
  }
  return files;
}

class HostileCorpus : public ::testing::Test {
 public:
  static void SetUpTestSuite() {
    corpus_ = new TempDir;
    // tests/unit/<this file> -> tests/hostile/make_corpus.py
    const std::string gen =
        (std::filesystem::path(__FILE__).parent_path().parent_path() / "hostile/make_corpus.py")
            .string();
    auto made = run_split("python3 " + shell_quote(gen) +
                              " corpus && cp -a --sparse=always "
                              "corpus pristine",
                          corpus_->path(), 300);
    ASSERT_EQ(made.exit_code, 0) << made.err;
    for (const auto& e : nlohmann::json::parse(read_file(corpus_->file("corpus/manifest.json"))))
      entries_.push_back(
          Entry{e["name"], e["image"], e["expect"], e.value("format", ""), e["why"]});
    // Entries are independent (each in its own directory): a few at a
    // time, so the sanitized run (one ASan start-up of dmu per command, on
    // the suite's critical path) does not take minutes on one core.
    std::vector<std::vector<CommandRun>> results(entries_.size());
    std::vector<std::string> errors(entries_.size());
    std::atomic<size_t> next{0};
    auto work = [&] {
      for (size_t i; (i = next++) < entries_.size();) {
        try {  // not out of a thread: that would end the program
          results[i] = run_entry(entries_[i]);
        } catch (const std::exception& ex) {
          errors[i] = entries_[i].name + ": " + ex.what();
        }
      }
    };
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < std::clamp(std::thread::hardware_concurrency(), 1u, 4u); ++t)
      pool.emplace_back(work);
    for (auto& t : pool) t.join();
    for (const std::string& error : errors) ASSERT_TRUE(error.empty()) << error;
    for (size_t i = 0; i < entries_.size(); ++i)
      for (size_t c = 0; c < std::size(kCommands); ++c)
        runs_[{entries_[i].name, kCommands[c].name}] = results[i][c];
  }
  // Every command on one entry, in order, each on the pristine files.
  static std::vector<CommandRun> run_entry(const Entry& e) {
    std::vector<CommandRun> runs;
    const std::string dir = corpus_->file("corpus/" + e.name);
    for (const Command& c : kCommands) {
      std::string args = c.args;
      auto put = [&](const std::string& key, const std::string& value) {
        if (auto at = args.find(key); at != std::string::npos) args.replace(at, key.size(), value);
      };
      put("%F", e.format.empty() ? "" : "-f " + e.format);
      put("%I", e.image);
      put("%N", e.name);
      auto before = snapshot(dir);
      CommandRun run;
      run.outcome = run_split(kCpuLimit + (kSanitizerEnv + dmu(args)), dir, kWallLimitSeconds);
      run.unchanged = snapshot(dir) == before;
      if (!run.unchanged)  // keep later commands independent of a write that worked
        run_split("rm -rf " + shell_quote(dir) + " && cp -a --sparse=always " +
                      shell_quote(corpus_->file("pristine/" + e.name)) + " " + shell_quote(dir),
                  corpus_->path());
      runs.push_back(std::move(run));
    }
    return runs;
  }
  static void TearDownTestSuite() {
    delete corpus_;
    corpus_ = nullptr;
  }

  static const CommandRun& run(const Entry& e, const Command& c) {
    return runs_.at({e.name, c.name});
  }
  static bool mentions_a_file(const Entry& e, const std::string& text) {
    for (const auto& f : std::filesystem::directory_iterator(corpus_->file("corpus/" + e.name)))
      if (text.find(f.path().filename().string()) != std::string::npos) return true;
    return text.find(e.image) != std::string::npos;
  }

  // The properties, each over every entry and command.
  static void CorpusCoversEveryClassOfDefect();
  static void NoCommandCrashesHangsOrTripsASanitizer();
  static void FailuresAreOneLineNamingTheFile();
  static void FilesAreNeverChangedExceptByAWriteThatWorked();
  static void EveryCommandRefusesWhatItMust();
  static void ImagesQemuReadsAreReadAndCheckedAsQemuDoes();

  static TempDir* corpus_;
  static std::vector<Entry> entries_;
  static std::map<std::pair<std::string, std::string>, CommandRun> runs_;
};

TempDir* HostileCorpus::corpus_ = nullptr;
std::vector<Entry> HostileCorpus::entries_;
std::map<std::pair<std::string, std::string>, CommandRun> HostileCorpus::runs_;

void HostileCorpus::CorpusCoversEveryClassOfDefect() {
  std::map<std::string, int> classes;
  for (const Entry& e : entries_) ++classes[e.expect];
  EXPECT_GE(entries_.size(), 35u);
  for (const char* c : {"refuse", "refuse-chain", "refuse-data", "qemu-reads"})
    EXPECT_GE(classes[c], 2) << c;
}

void HostileCorpus::NoCommandCrashesHangsOrTripsASanitizer() {
  for (const Entry& e : entries_)
    for (const Command& c : kCommands) {
      const Outcome& o = run(e, c).outcome;
      EXPECT_NE(o.exit_code, 124) << e.name << " " << c.name << ": timed out";
      EXPECT_LT(o.exit_code, 128) << e.name << " " << c.name
                                  << ": killed by a signal (SIGXCPU: 20 s of CPU; SIGKILL: "
                                  << kWallLimitSeconds << " s)\n"
                                  << o.err;
      EXPECT_NE(o.exit_code, kAsanExit) << e.name << " " << c.name << "\n" << o.err;
      EXPECT_NE(o.exit_code, kUbsanExit) << e.name << " " << c.name << "\n" << o.err;
    }
}

void HostileCorpus::FailuresAreOneLineNamingTheFile() {
  for (const Entry& e : entries_)
    for (const Command& c : kCommands) {
      const Outcome& o = run(e, c).outcome;
      if (o.exit_code == 0) continue;
      if (std::string(c.name) == "check" && o.err.empty()) continue;  // a report on stdout
      EXPECT_EQ(line_count(o.err), 1u) << e.name << " " << c.name << ":\n" << o.err;
      EXPECT_TRUE(mentions_a_file(e, o.err)) << e.name << " " << c.name << ": " << o.err;
    }
}

void HostileCorpus::FilesAreNeverChangedExceptByAWriteThatWorked() {
  for (const Entry& e : entries_)
    for (const Command& c : kCommands) {
      const CommandRun& r = run(e, c);
      if (c.writes && r.outcome.exit_code == 0) continue;
      EXPECT_TRUE(r.unchanged) << e.name << " " << c.name << " changed the image";
    }
}

void HostileCorpus::EveryCommandRefusesWhatItMust() {
  for (const Entry& e : entries_) {
    for (const Command& c : kCommands) {
      const std::string cmd = c.name;
      bool must_fail = false;
      if (e.expect == "refuse") must_fail = true;
      if (e.expect == "refuse-chain") must_fail = cmd != "info" && cmd != "check";
      if (e.expect == "refuse-data")
        must_fail = cmd == "export" || cmd == "io-read" || cmd == "io-write";
      if (!must_fail) continue;
      EXPECT_NE(run(e, c).outcome.exit_code, 0)
          << e.name << " (" << e.why << "): dmu " << cmd << " accepted it\n"
          << run(e, c).outcome.out.substr(0, 400);
    }
  }
}

void HostileCorpus::ImagesQemuReadsAreReadAndCheckedAsQemuDoes() {
  for (const Entry& e : entries_) {
    if (e.expect != "qemu-reads") continue;
    const std::string dir = corpus_->file("corpus/" + e.name);
    auto ref = run_split("qemu-img check " + e.image, dir, 60);
    for (const Command& c : kCommands) {
      if (std::string(c.name) != "check") continue;
      EXPECT_EQ(run(e, c).outcome.exit_code, ref.exit_code)
          << e.name << " (" << e.why << ")\ndmu:\n"
          << run(e, c).outcome.out << run(e, c).outcome.err << "qemu-img:\n"
          << ref.out << ref.err;
    }
    auto same = run_split("qemu-img convert -O raw " + e.image + " ../../qemu.raw && " +
                              dmu("export " + e.image + " ../../dmu.raw") +
                              " && qemu-img compare -q -f raw -F raw ../../qemu.raw ../../dmu.raw",
                          dir, 60);
    EXPECT_EQ(same.exit_code, 0) << e.name << ": dmu reads it differently from QEMU\n" << same.err;
  }
}

// One test: the corpus is built and every command run once (about 40
// images x 7 commands), then each property is checked over all of them.
TEST_F(HostileCorpus, EveryCommandOnEveryMalformedImageFailsSafely) {
  {
    SCOPED_TRACE("CorpusCoversEveryClassOfDefect");
    CorpusCoversEveryClassOfDefect();
  }
  {
    SCOPED_TRACE("NoCommandCrashesHangsOrTripsASanitizer");
    NoCommandCrashesHangsOrTripsASanitizer();
  }
  {
    SCOPED_TRACE("FailuresAreOneLineNamingTheFile");
    FailuresAreOneLineNamingTheFile();
  }
  {
    SCOPED_TRACE("FilesAreNeverChangedExceptByAWriteThatWorked");
    FilesAreNeverChangedExceptByAWriteThatWorked();
  }
  {
    SCOPED_TRACE("EveryCommandRefusesWhatItMust");
    EveryCommandRefusesWhatItMust();
  }
  {
    SCOPED_TRACE("ImagesQemuReadsAreReadAndCheckedAsQemuDoes");
    ImagesQemuReadsAreReadAndCheckedAsQemuDoes();
  }
}

}  // namespace
}  // namespace dmu::test
