// A crash simulator.  Every file keeps what is durable (synced) apart from the
// writes since the last sync.  After `power_cut_after(n)` the n+1-th mutating
// call and everything after it fail with EIO, as if power had gone; `crash()`
// then rebuilds every file from its durable bytes plus a chosen subset of the
// unsynced writes: none, all, or a random subset of their 512-byte sectors (a
// disk may persist any sector of any write, in any order; one sector is
// written whole or not at all).  Names are directory entries: a file created,
// or removed, since its directory was last synced (sync_directory_of) may be
// gone, or back, after the crash.  Crash tests reopen the images afterwards.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <vector>

#include "fileio/file.h"

namespace dmu::test {

enum class CrashKeeps { Nothing, Everything, RandomSubset };

class FaultEnv : public Env {
 public:
  Result<std::unique_ptr<File>> open(const std::string& path, OpenMode mode) override;
  bool exists(const std::string& path) override;
  Result<void> remove(const std::string& path) override;
  Result<void> sync_directory_of(const std::string& path) override;
  Result<std::string> identity(const std::string& path) override { return path; }

  // Mutating calls (write, truncate, sync, punch_hole, sync_directory_of)
  // counted so far.
  uint64_t mutations() const;
  // Allows n more mutating calls, then fails all of them until crash().
  void power_cut_after(uint64_t n);
  // Simulates the power loss; files opened before are dead afterwards.
  void crash(CrashKeeps keeps, uint32_t seed = 0);

  std::vector<uint8_t> contents(const std::string& path);
  void set_contents(const std::string& path, std::vector<uint8_t> bytes);

 private:
  struct Op {
    enum Kind { Write, Truncate, Zero } kind;
    uint64_t offset;
    uint64_t length;  // Truncate: new size
    std::vector<uint8_t> bytes;
  };
  struct FileState {
    std::vector<uint8_t> durable;
    std::vector<uint8_t> current;
    std::vector<Op> unsynced;
    uint64_t generation = 0;  // bumped by crash(): old handles stop working
    bool name_durable = true;  // false from its creation to its directory's sync
  };
  class FaultFile;

  // Called under mu_ by FaultFile for every mutating call; false after the cut.
  bool admit_mutation();

  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<FileState>> files_;
  // Removed, but the removal is not durable yet: the file may come back.
  std::map<std::string, std::shared_ptr<FileState>> removed_;
  uint64_t mutations_ = 0;
  uint64_t cut_at_ = UINT64_MAX;
};

}  // namespace dmu::test
