// The map service: the brain of the mapping daemon.  It turns protocol
// requests (struct dmu_request, kmod/include/uapi/linux/dm-userspace.h) into
// protocol answers (struct dmu_response) from an image chain.  The daemon
// feeds it what it reads from the control device; the in-process transport
// (mapper/inprocess_transport.h) feeds it the requests it makes while doing
// the kernel's job with pread/pwrite, so `dmu io` and the unit tests run the
// very code the daemon runs.
//
// Devices: the chain's devices (Chain::devices(), top image first) followed
// by the scratch store (mapper/scratch_store.h), which holds decompressed
// clusters and blocks whose parts live in different places.
//
// Block size (the dm table's block_sectors), choose_block_size():
//   - every image that maps at a fine granularity (qcow, qcow2, sparse vmdk)
//     limits the block to its granularity (ImageInfo::granularity: cluster,
//     subcluster, grain); the block is the smallest of those, so a block
//     never straddles two clusters of any image in the chain and an extent
//     can map it linearly;
//   - raw images and flat vmdk extents map linearly and impose nothing; a
//     chain of only those uses 64 KiB;
//   - the protocol bounds the result to 4 KiB .. 2 MiB (a power of two).
//     Below 4 KiB (2 KiB subclusters, 512-byte clusters) a block can hold
//     parts with different mappings: reads of such a block are served from
//     the scratch store; writes work when the top image keeps the block's
//     parts contiguous on disk: always for subclusters, which share their
//     cluster; for qcow2 clusters below 4 KiB because the service tells the
//     engine its block (Image::set_write_block) and the engine moves a
//     block whose clusters lie apart; otherwise that write fails with EIO.
//
// Writes (the "pending list"): a write MAP allocates with
// Image::prepare_write and answers DMU_EXT_NEW extents plus COPY messages
// describing the old contents; the preparation tokens are remembered per
// request id until the kernel's DONE, which calls Image::write_done.  The
// engine makes durable, on COMMIT, only allocations whose write_done
// arrived, so a flush never publishes metadata pointing at unwritten data.
//
// One decision per block at a time (dm-userspace.h: "A daemon should not
// decide a block again ... before the DONE of its earlier decision"): a MAP
// whose first block lies in a write answer whose DONE has not been handled
// (the kernel may hold that block's new extent, filled and written, while the
// engine still shows the old mapping -- qcow and vmdk show a preparation only
// after write_done -- and the engines refuse a second preparation of a
// cluster being allocated) waits in the service, unanswered, and is answered
// in arrival order once those DONEs are handled; a discard waits if any of
// its blocks is in flight.  A MAP whose later blocks are in flight is
// answered up to them; the kernel asks again for the rest.  Requests for a
// block that already has a waiting one queue behind it.  An answer the
// kernel refuses gets no DONE if it came too late, so the daemon reports
// refusals (refused()), which resolve the id as failed.
//
// Restart (adopt()): a daemon that died between a write answer and the
// COMMIT publishing it leaves allocations only the kernel knows
// (DMU_IOC_LIST_ALLOCATIONS).  The next service adopts them, before it
// handles any request: each NEW-extent record becomes an
// Image::adopt_write, its token joins the pending list under the record's
// id, so the DONE the kernel redelivers resolves it like any other; records
// already flagged DONE/FAILED are resolved at once.  The next COMMIT then
// publishes the successful ones.
#pragma once

#include <linux/dm-userspace.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "common/error.h"
#include "formats/chain.h"
#include "mapper/block_ranges.h"
#include "mapper/scratch_store.h"

namespace dmu::mapper {

// dm-userspace.h: "At most 256 messages make one answer or push".
constexpr unsigned kMaxAnswerMessages = 256;

static_assert(sizeof(dmu_request) == DMU_MSG_SIZE);
static_assert(sizeof(dmu_response) == DMU_MSG_SIZE);

struct MapServiceOptions {
  uint64_t block_size = 0;                    // bytes; 0 = choose_block_size(chain)
  uint64_t read_ahead = 4 << 20;              // bytes a read answer may map beyond the request
  unsigned max_messages = 128;                // per read answer (at most kMaxAnswerMessages)
  uint64_t max_scratch_per_answer = 8 << 20;  // bytes decompressed for one read answer
  uint64_t max_write_span = 4 << 20;          // bytes of the asked range one write answer maps
  // Called after the service extended a data device (a freshly allocated
  // cluster past the end of the file) and before it answers with an extent
  // there: the daemon grows the loop device (LOOP_SET_CAPACITY).  An error
  // fails the write with it.
  std::function<Result<void>(unsigned device, uint64_t new_size)> device_grown;
};

// The block size the service uses for this chain (see the top of this file).
uint64_t choose_block_size(formats::Chain& chain);

class MapService {
 public:
  // The scratch store's slots must be block_size (choose_block_size(chain)
  // unless options say otherwise).
  static Result<std::unique_ptr<MapService>> create(formats::Chain& chain,
                                                    std::unique_ptr<ScratchStore> scratch,
                                                    const MapServiceOptions& options);

  uint64_t block_size() const { return block_size_; }
  uint32_t block_sectors() const { return uint32_t(block_size_ / 512); }
  uint64_t virtual_size() const { return chain_.virtual_size(); }
  uint64_t target_blocks() const;  // blocks covering the virtual disk (last may be partial)
  // Chain devices, then the scratch store.
  const std::vector<File*>& devices() const { return devices_; }
  unsigned scratch_device() const { return unsigned(devices_.size() - 1); }

  // Answers one request: appends the response messages (possibly none, for
  // DONE) to `out`.  Never fails: engine errors become COMPLETE/COMMITTED
  // with -errno, and the last message of an answer carries DMU_RSP_FINAL.
  // COMMIT: the caller has made the data written before it durable (the
  // kernel flushes its data devices before it sends COMMIT;
  // InprocessTransport::flush syncs the devices it wrote); the service adds
  // no sync of its own to the engine's commit, which syncs the data files
  // itself before it publishes an allocation (formats/image.h) -- that also
  // covers DONEs handled after the caller's flush.
  void handle(const dmu_request& request, std::vector<dmu_response>& out);

  // Adopts a previous daemon's unpublished allocation records, in the order
  // LIST_ALLOCATIONS gave them; call it once, before the first handle().
  // Every NEW-extent record is checked by the top image (adopt_write) and
  // waits for its DONE in the pending list (pending_writes() counts its id);
  // records flagged DMU_ALLOC_DONE are resolved (write_done) after all
  // adoptions, so the engine places no metadata of its own before it knows
  // every adopted range.  Discard records are counted and not replayed:
  // their clusters stay allocated with their old contents.  An error (a
  // record the image refuses, EINVAL with the record and the engine's
  // reason; EIO for a DONE record the engine cannot take in, see lost_)
  // leaves the records adopted until then pending, some perhaps resolved:
  // the daemon must not serve the device then; the kernel keeps the records
  // for the next.
  Result<void> adopt(std::span<const dmu_allocation> records);
  // What the last adopt() did.
  struct AdoptCounts {
    size_t adopted = 0;   // records registered with adopt_write
    size_t resolved = 0;  // of those, resolved at once (flagged DONE/FAILED)
    size_t discards = 0;  // discard records, replayed in list order
    size_t failed = 0;    // records of failed answers: their space is unused, skipped
  };
  const AdoptCounts& adopt_counts() const { return adopt_counts_; }

  // A push (protocol 2, "Pushes"): appends to `out` the extents a read of
  // the disk from first_block on (up to end_block) would be answered with,
  // under push id `id` (DMU_PUSH_ID set), at most kMaxAnswerMessages, the
  // last one FINAL;
  // blocks that need the scratch store (compressed clusters, blocks whose
  // parts lie apart) are skipped.  Returns the block to continue from
  // (target_blocks() when the disk is covered or mapping failed, end_block
  // when that is reached); `out` may stay empty (only skipped blocks so
  // far).  Blocks of write answers whose DONE is not handled yet are
  // skipped too (see map_for_reading).
  uint64_t push(uint64_t first_block, uint64_t id, std::vector<dmu_response>& out,
                uint64_t end_block = ~uint64_t(0));

  // The kernel refused (part of) the answer to request `id`: if it was a
  // write answer, no DONE may ever come (a late answer is refused whole; a
  // bad one is failed and its DONE reports -EIO), so it is resolved as
  // failed now; answers that waited for it are appended to `out`.
  void refused(uint64_t id, std::vector<dmu_response>& out);

  // Writes prepared (or adopted) but not yet reported DONE, by request id.
  size_t pending_writes() const { return pending_.size(); }
  // Whether a write answer with this request id awaits its DONE (a MAP
  // with that id again abandons it: see handle()).
  bool awaits_done(uint64_t id) const { return pending_.count(id) != 0; }
  // MAP requests waiting for the DONE of an earlier answer on their blocks.
  size_t waiting_requests() const { return waiting_.size(); }
  // The last engine error, for logs ("" if none).
  const std::string& last_error() const { return last_error_; }

 private:
  struct Pending {
    std::vector<uint64_t> tokens;             // Image::prepare_write tokens
    std::vector<size_t> pinned_slots;         // scratch slots used as COPY sources
    uint64_t first_block = 0, nr_blocks = 0;  // what the NEW extents covered
  };
  class ReadAnswer;
  class WriteAnswer;

  MapService(formats::Chain& chain, std::unique_ptr<ScratchStore> scratch,
             const MapServiceOptions& options, uint64_t block_size);

  void answer_map_read(const dmu_request& r, std::vector<dmu_response>& out);
  // The read answer's mapping of [start, limit) (bytes) under id, at most
  // max_extents extents, ending before blocks in flight; `push` skips
  // those and scratch blocks and sends no COMPLETE.  Returns the first
  // block not covered.
  uint64_t map_for_reading(uint64_t id, uint64_t start, uint64_t limit, unsigned max_extents,
                           bool push, std::vector<dmu_response>& out);
  // Does MAP r have to wait for DONEs (see the top of this file)?
  bool must_wait(const dmu_request& r) const;
  void answer_map(const dmu_request& r, std::vector<dmu_response>& out);
  // Answers the waiting requests that no longer have to wait, in order.
  void answer_waiting(std::vector<dmu_response>& out);
  // pending_ and in_flight_ change together.
  void add_pending(uint64_t id, Pending p);
  // Resolves a pending answer with write_done(ok) for each token.  Where
  // the engine cannot take in a completed write (write_done(true) fails:
  // qcow2 after a failed metadata update, or one that recorded it and then
  // failed an early commit), its blocks go to lost_.
  struct Resolved {
    uint64_t first_block, nr_blocks;  // the blocks of its NEW extents
    bool lost;
  };
  Resolved resolve_pending(std::map<uint64_t, Pending>::iterator it, bool ok);
  void answer_map_write(const dmu_request& r, std::vector<dmu_response>& out);
  void answer_discard(const dmu_request& r, std::vector<dmu_response>& out);
  void answer_commit(const dmu_request& r, std::vector<dmu_response>& out);
  void handle_done(const dmu_request& r, std::vector<dmu_response>& out);
  // map_service_adopt.cc
  Result<void> adopt_discard_record(const dmu_allocation& a,
                                    std::span<const dmu_allocation* const> in_flight);
  Result<void> adopt_record(const dmu_allocation& a);
  Result<void> resolve_adopted(uint64_t id, bool ok);

  // Fills a scratch slot with the guest contents of `block` (or finds the
  // one that has them); evicted blocks get INVALIDATE messages in `out`.
  Result<size_t> scratch_block(uint64_t block, std::vector<dmu_response>& out);
  // Forgets scratch slots of blocks whose contents change.
  void forget_scratch(uint64_t first_block, uint64_t nr_blocks);
  // Size of a device, cached (the top image's files are re-read when stale).
  Result<uint64_t> device_size(unsigned device, bool refresh);
  Result<void> ensure_device_size(unsigned device, uint64_t end);

  int record_error(const Error& e);

  formats::Chain& chain_;
  std::unique_ptr<ScratchStore> scratch_;
  MapServiceOptions options_;
  uint64_t block_size_;
  std::vector<File*> devices_;
  std::vector<uint64_t> device_sizes_;   // 0 = unknown
  std::map<uint64_t, Pending> pending_;  // by MAP request id
  BlockRanges in_flight_;                // the NEW blocks of pending_
  std::deque<dmu_request> waiting_;      // MAPs waiting for DONEs, in arrival order
  BlockRanges waiting_blocks_;           // their blocks
  // Blocks whose completed write the engine could not take in.  The image
  // still shows their old contents, so no answer is right for them any
  // more: MAPs that need them fail with EIO (pushes and read-ahead skip
  // them) for the life of this service, and so does every COMMIT, so that
  // the kernel keeps its records of those writes for a new mapping process
  // to adopt.
  BlockRanges lost_;
  std::string last_error_;
  AdoptCounts adopt_counts_;
};

}  // namespace dmu::mapper
