// Encoding and checking the model format's map slots; see model_slots.h.
#include "tests/kmod/model_slots.h"

#include <zlib.h>

#include <cstddef>
#include <cstring>

#include "common/endian.h"

namespace dmu::testd::model {
namespace {

static_assert(offsetof(Superblock, magic) == 0);
static_assert(offsetof(Superblock, generation) == 8);
static_assert(offsetof(Superblock, block_bytes) == 16);
static_assert(offsetof(Superblock, nr_entries) == 24);
static_assert(offsetof(Superblock, data_start) == 32);
static_assert(offsetof(Superblock, crc) == 40);
static_assert(offsetof(Superblock, reserved) == 44);
static_assert(offsetof(Entry, vblock) == 0);
static_assert(offsetof(Entry, cluster) == 8);
static_assert(kSlotBytes % 4096 == 0 && kSuperBytes % 4096 == 0);

constexpr uint64_t kAlign = 4096;

uint32_t slot_crc(const uint8_t* super, const uint8_t* entries, uint64_t nr_entries) {
  uint8_t copy[sizeof(Superblock)];
  std::memcpy(copy, super, sizeof copy);
  std::memset(copy + offsetof(Superblock, crc), 0, sizeof(uint32_t));
  uLong crc = crc32(0L, Z_NULL, 0);
  crc = crc32(crc, copy, sizeof copy);
  // zlib takes uInt lengths; the entries of a slot stay far below 4 GiB.
  crc = crc32(crc, entries, static_cast<uInt>(nr_entries * sizeof(Entry)));
  return static_cast<uint32_t>(crc);
}

}  // namespace

std::vector<uint8_t> encode_slot(uint64_t generation, uint64_t block_bytes,
                                 std::span<const Entry> entries) {
  const uint64_t used = kSuperBytes + entries.size() * sizeof(Entry);
  std::vector<uint8_t> out((used + kAlign - 1) / kAlign * kAlign, 0);
  uint8_t* super = out.data();
  std::memcpy(super + offsetof(Superblock, magic), kMagic, sizeof kMagic);
  store_le64(super + offsetof(Superblock, generation), generation);
  store_le64(super + offsetof(Superblock, block_bytes), block_bytes);
  store_le64(super + offsetof(Superblock, nr_entries), entries.size());
  store_le64(super + offsetof(Superblock, data_start), kDataStart);
  uint8_t* e = out.data() + kSuperBytes;
  for (size_t i = 0; i < entries.size(); ++i) {
    store_le64(e + i * sizeof(Entry) + offsetof(Entry, vblock), entries[i].vblock);
    store_le64(e + i * sizeof(Entry) + offsetof(Entry, cluster), entries[i].cluster);
  }
  store_le32(super + offsetof(Superblock, crc), slot_crc(super, e, entries.size()));
  return out;
}

std::optional<SlotMap> decode_slot(std::span<const uint8_t> slot) {
  if (slot.size() < sizeof(Superblock)) return std::nullopt;
  const uint8_t* super = slot.data();
  if (std::memcmp(super + offsetof(Superblock, magic), kMagic, sizeof kMagic) != 0)
    return std::nullopt;
  SlotMap m;
  m.generation = load_le64(super + offsetof(Superblock, generation));
  m.block_bytes = load_le64(super + offsetof(Superblock, block_bytes));
  const uint64_t n = load_le64(super + offsetof(Superblock, nr_entries));
  if (n > kMaxEntries || load_le64(super + offsetof(Superblock, data_start)) != kDataStart)
    return std::nullopt;
  if (m.block_bytes < 512 || (m.block_bytes & (m.block_bytes - 1)) != 0) return std::nullopt;
  if (slot.size() < kSuperBytes + n * sizeof(Entry)) return std::nullopt;
  const uint8_t* e = slot.data() + kSuperBytes;
  if (slot_crc(super, e, n) != load_le32(super + offsetof(Superblock, crc))) return std::nullopt;
  m.entries.resize(n);
  for (uint64_t i = 0; i < n; ++i) {
    m.entries[i].vblock = load_le64(e + i * sizeof(Entry) + offsetof(Entry, vblock));
    m.entries[i].cluster = load_le64(e + i * sizeof(Entry) + offsetof(Entry, cluster));
    if (i && m.entries[i].vblock <= m.entries[i - 1].vblock) return std::nullopt;
  }
  return m;
}

Result<Committed> load_committed(File& dev) {
  DMU_ASSIGN_OR_RETURN(uint64_t size, dev.size());
  if (size < kDataStart)
    return fail(EINVAL, dev.path() + ": " + std::to_string(size) +
                            " bytes, too small for the two model map slots (" +
                            std::to_string(kDataStart) + " bytes)");
  std::optional<SlotMap> slots[2];
  std::vector<uint8_t> bytes(kSlotBytes);
  for (int i = 0; i < 2; ++i) {
    DMU_TRY(dev.read(slot_offset(i), bytes));
    slots[i] = decode_slot(bytes);
  }
  Committed c;
  for (int i = 0; i < 2; ++i) {
    if (!slots[i]) continue;
    if (c.slot < 0 || slots[i]->generation > c.map->generation) {
      c.slot = i;
      c.map = slots[i];
    }
  }
  c.other_valid = c.slot >= 0 && slots[1 - c.slot].has_value();
  return c;
}

}  // namespace dmu::testd::model
