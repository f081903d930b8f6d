// The bounded metadata table cache (see table_cache.h).
#include "formats/qcow2/table_cache.h"

#include <algorithm>
#include <cstring>

namespace dmu::formats::qcow2 {

Result<void> read_padded(File& file, uint64_t offset, std::span<uint8_t> out) {
  size_t done = 0;
  // read_some returns fewer bytes only at the end of the file.
  while (done < out.size()) {
    DMU_ASSIGN_OR_RETURN(size_t n, file.read_some(offset + done, out.subspan(done)));
    if (n == 0) break;
    done += n;
  }
  std::fill(out.begin() + long(done), out.end(), 0);
  return {};
}

TableCache::TableCache(File& file, uint64_t table_bytes, size_t max_tables, std::string what)
    : file_(file),
      table_bytes_(table_bytes),
      max_tables_(std::max<size_t>(max_tables, 2)),
      what_(std::move(what)) {}

Result<uint8_t*> TableCache::get(uint64_t offset) {
  auto it = tables_.find(offset);
  if (it != tables_.end()) {
    it->second->last_use = ++clock_;
    return it->second->bytes.data();
  }
  auto e = std::make_unique<Entry>();
  e->bytes.resize(table_bytes_);
  if (auto r = read_padded(file_, offset, e->bytes); !r)
    return fail(std::move(r).error().context("reading " + what_ + " at " + hex(offset)));
  e->last_use = ++clock_;
  uint8_t* p = e->bytes.data();
  tables_.emplace(offset, std::move(e));
  return p;
}

uint8_t* TableCache::create(uint64_t offset) {
  auto& e = tables_[offset];
  if (!e) e = std::make_unique<Entry>();
  e->bytes.assign(table_bytes_, 0);
  e->dirty = true;
  e->last_use = ++clock_;
  return e->bytes.data();
}

void TableCache::mark_dirty(uint64_t offset) {
  auto it = tables_.find(offset);
  if (it != tables_.end()) it->second->dirty = true;
}

bool TableCache::has_dirty() const {
  for (const auto& [off, e] : tables_)
    if (e->dirty) return true;
  return false;
}

Result<void> TableCache::flush() {
  std::vector<uint64_t> dirty;
  for (const auto& [off, e] : tables_)
    if (e->dirty) dirty.push_back(off);
  if (dirty.empty()) return {};
  if (dependency_) DMU_TRY(dependency_());
  std::sort(dirty.begin(), dirty.end());
  for (uint64_t off : dirty) {
    auto it = tables_.find(off);
    // A dirty table dropped meanwhile would be an update never written:
    // fail the commit rather than report it durable.
    if (it == tables_.end())
      return fail(EIO, "dirty " + what_ + " at " + hex(off) + " vanished during a flush");
    Entry& e = *it->second;
    if (guard_) DMU_TRY(guard_(off));
    if (auto r = file_.write(off, e.bytes); !r)
      return fail(std::move(r).error().context("writing " + what_ + " at " + hex(off)));
    e.dirty = false;
  }
  return {};
}

void TableCache::trim() {
  if (tables_.size() <= max_tables_) return;
  std::vector<std::pair<uint64_t, uint64_t>> clean;  // (last_use, offset)
  for (const auto& [off, e] : tables_)
    if (!e->dirty) clean.emplace_back(e->last_use, off);
  std::sort(clean.begin(), clean.end());
  for (const auto& [use, off] : clean) {
    if (tables_.size() <= max_tables_) break;
    tables_.erase(off);
  }
}

}  // namespace dmu::formats::qcow2
