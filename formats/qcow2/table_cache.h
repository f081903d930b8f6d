// A bounded cache of one-cluster metadata tables (L2 tables, refcount
// blocks), keyed by their offset in the image file.  Tables are changed in
// memory and marked dirty; flush() writes them back in offset order.
//
// Write-order dependencies (QEMU's qcow2_cache_set_dependency): a cache may
// name a step that must be durable before any of its tables is written —
// the L2 cache depends on the refcount store, so an L2 entry never reaches
// the disk before the refcount that covers the cluster it points at.
//
// Memory: get() never evicts, so pointers stay valid for the rest of the
// current engine operation; trim() (called between operations) drops the
// least recently used clean tables until the cache is within its budget.
// Dirty tables cannot be dropped; over_budget() tells the engine to commit.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/error.h"
#include "fileio/file.h"

namespace dmu::formats::qcow2 {

class TableCache {
 public:
  TableCache(File& file, uint64_t table_bytes, size_t max_tables, std::string what);

  // The table at offset, read from the file if not cached (a short read at
  // the end of the file reads as zeros, as QEMU's file layer does).
  Result<uint8_t*> get(uint64_t offset);
  // A zero-filled table at offset that is not read from the file (new
  // allocation); it starts dirty.
  uint8_t* create(uint64_t offset);
  void mark_dirty(uint64_t offset);
  bool contains(uint64_t offset) const { return tables_.count(offset) != 0; }
  // Forgets a table without writing it (its cluster was freed before any
  // reference to it became durable).
  void forget(uint64_t offset) { tables_.erase(offset); }
  void clear() { tables_.clear(); }

  bool has_dirty() const;
  // Runs the dependency, then writes every dirty table.  Does not sync.
  Result<void> flush();
  void set_dependency(std::function<Result<void>()> before_write) {
    dependency_ = std::move(before_write);
  }
  // Asked before each table is written; an error stops the write (QEMU's
  // metadata overlap check: never write a table over other metadata).
  void set_write_guard(std::function<Result<void>(uint64_t offset)> guard) {
    guard_ = std::move(guard);
  }

  void trim();
  bool over_budget() const { return tables_.size() > max_tables_; }
  size_t size() const { return tables_.size(); }

 private:
  struct Entry {
    std::vector<uint8_t> bytes;
    bool dirty = false;
    uint64_t last_use = 0;
  };

  File& file_;
  uint64_t table_bytes_;
  size_t max_tables_;
  std::string what_;
  uint64_t clock_ = 0;
  std::unordered_map<uint64_t, std::unique_ptr<Entry>> tables_;
  std::function<Result<void>()> dependency_;
  std::function<Result<void>(uint64_t)> guard_;
};

// Reads [offset, offset + out.size()) zero-filling past the end of the file.
Result<void> read_padded(File& file, uint64_t offset, std::span<uint8_t> out);

}  // namespace dmu::formats::qcow2
