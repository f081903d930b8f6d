/* SPDX-License-Identifier: GPL-2.0 */
/*
 * dm-userspace: internal definitions shared by the target's source files.
 *
 * State lives in one struct dmu_target per key (per dm device), shared by
 * every table of that device: a table reload (ctr of the new table, swap,
 * dtr of the old one) keeps the cache, the requests, the allocation records
 * and the bound daemon, as dm-thin's pool outlives its tables.  Each table
 * has a small struct dmu_tc (ti->private) with its own device references
 * and options, which become the target's at that table's resume.
 *
 * A bio that the extent cache (dmu-cache.c) can map is remapped inside
 * map(); any other bio is parked on a struct dmu_req (a MAP request) that a
 * daemon reads from /dev/dm-userspace (dmu-control.c), and is driven through
 * the cache again once the answer (dmu-response.c) has been applied.
 *
 * An applied answer that must report DONE becomes a struct dmu_tracker
 * (dmu-tracker.c): it fills its NEW extents with kcopyd (dmu-fill.c), tracks
 * the writes it re-drove, then queues its DONE.  It stays an unpublished
 * allocation record until a COMMIT read after its DONE is answered
 * COMMITTED (dmu-flush.c); a daemon that binds after another one left can
 * list the records and reads their DONEs again, so it learns every
 * allocation the kernel may still use.
 *
 * Every bio remapped to a data device holds a reference on the current I/O
 * generation (dmu-drain.c) until it completes; invalidation, discards and
 * fills that replace cached mappings wait for the older generations to
 * drain before they let anyone reuse the space.
 *
 * Locking (outermost first):
 *   dmu_registry_lock (mutex, dmu-control.c)  targets by key, dt->nr_tables
 *   ch->rmutex / ch->wmutex  one read() / one write() per channel at a time
 *   dt->mutex     control-plane transitions: answering, binding/unbinding,
 *                 timing out, failing requests, suspend/resume, cache
 *                 mutations from userspace.  Never held across
 *                 copy_to_user()/copy_from_user() or a wait for I/O to
 *                 complete; submitting re-driven bios and kcopyd jobs
 *                 under it may wait for memory (their bioset and kcopyd
 *                 mempools) or queue tags, never for the daemon.
 *   dt->lock      (spinlock, irq-safe) send_queue, sent, pending_maps, the
 *                 id hash, req->bios, the tracker lists, the flush lists,
 *                 daemon state, suspending/parked, dt->channel and the
 *                 live table's geometry and read-only mode.
 *                 Taken by map() on a miss and by bio completion.
 *   cache->lock   (spinlock) the rbtree and LRU of extents and
 *                 tk->busy_bios; cache->seq (a seqcount of this lock) is
 *                 bumped around every change of the tree, of an extent's
 *                 mapping or of its BUSY bit (dmu_cache_write_lock()).
 *                 map()'s hit on an extent already USED takes no lock: an
 *                 RCU walk of the tree validated by cache->seq, extents
 *                 being freed only after a grace period
 *                 (dmu_try_hit_rcu() in dmu-request.c says why drains stay
 *                 exact).  map() takes the lock for everything else (first
 *                 use of an extent, misses, BUSY extents).  Never taken in
 *                 hard irq context; map() takes it with irqsave because it
 *                 may run in any context that submits bios.
 *   drain->lock   (spinlock, irq-safe) the drain cycle.
 *   ch->lock      (spinlock) ch->dt, ch->detached and ch->binding.
 * dt->lock and cache->lock are never held together.
 *
 * Lifetime: dt is reference counted (kref): each table and a bound channel
 * hold one.  When the last table holding it is destroyed, dt dies:
 * waiting I/O fails, the channel is detached (the daemon then sees -ENODEV
 * but never freed memory), and the workers are torn down.
 */
#ifndef DMU_H
#define DMU_H

#include <linux/atomic.h>
#include <linux/bio.h>
#include <linux/blkdev.h>
#include <linux/device-mapper.h>
#include <linux/dm-kcopyd.h>
#include <linux/hashtable.h>
#include <linux/kref.h>
#include <linux/mempool.h>
#include <linux/mutex.h>
#include <linux/percpu.h>
#include <linux/percpu-refcount.h>
#include <linux/rbtree.h>
#include <linux/rcupdate.h>
#include <linux/seqlock.h>
#include <linux/spinlock.h>
#include <linux/wait.h>
#include <linux/workqueue.h>
#include <linux/dm-userspace.h>

#define DM_MSG_PREFIX "userspace"

#define DMU_MAX_DEVS		64
#define DMU_MAX_ANSWER_MSGS	256	/* messages accumulated per answer */
#define DMU_MAX_OPEN_PUSHES	16	/* push batches without FINAL yet */
/* Room for messages of answers and pushes without FINAL yet (1 MiB). */
#define DMU_MAX_OPEN_MSGS	16384
#define DMU_MAX_PUSH_FILLS	64	/* pushes whose NEW extents are filling */
#define DMU_IO_MSGS		64	/* messages per read()/write() chunk */
#define DMU_MAX_LIST		256	/* entries copied per LIST chunk */
#define DMU_MAX_PASSDOWN	64	/* data ranges one discard passes down */

static_assert(sizeof(struct dmu_request) == DMU_MSG_SIZE);
static_assert(sizeof(struct dmu_response) == DMU_MSG_SIZE);
static_assert(sizeof(struct dmu_bind) == 136);
static_assert(sizeof(struct dmu_extent_info) == 40);
static_assert(sizeof(struct dmu_list_extents) == 48);
static_assert(sizeof(struct dmu_allocation) == 40);
static_assert(sizeof(struct dmu_list_allocations) == 48);

/* 6.5 replaced fmode_t by blk_mode_t in the device-mapper API. */
#ifdef BLK_OPEN_WRITE
#define DMU_MODE_WRITE	BLK_OPEN_WRITE
#else
#define DMU_MODE_WRITE	FMODE_WRITE
#endif

/* ---- extent cache (dmu-cache.c) ---- */

struct dmu_tracker;

struct dmu_extent {
	struct rb_node node;
	struct list_head lru;
	u64 block;
	u64 nr_blocks;
	u64 sector;		/* REMAP: sector of 'block' on dev */
	u32 dev;
	u8 kind;		/* DMU_EXT_ZERO, DMU_EXT_REMAP */
	u8 ext_flags;		/* DMU_EXT_WRITABLE */
	u8 state;		/* DMU_EXTENT_PUSHED | USED | BUSY, DMU_EXT_DOOMED */
	u8 referenced;		/* clock bit for eviction */
	struct dmu_tracker *owner;	/* while BUSY: the answer filling it */
	struct rcu_head rcu;	/* freed a grace period after unlinking */
};

/* state: a discard covered it while BUSY; dropped once its fill ends. */
#define DMU_EXT_DOOMED		(1U << 7)

struct dmu_cache {
	spinlock_t lock;
	seqcount_spinlock_t seq;	/* map()'s lockless snapshot of the tree */
	struct rb_root root;
	struct list_head lru;	/* eviction order (clock) */
	unsigned long nr;
	unsigned long max;
	struct kmem_cache *slab;
};

/*
 * A section under cache->lock that changes what map()'s lockless lookup
 * reads: the tree's shape, an extent's block, nr_blocks, sector, dev, kind,
 * ext_flags, or its BUSY bit.  The seqcount tells map() that its snapshot
 * may be torn, and a section that drops mappings ends before any drain of
 * them starts (see dmu_cache_find_rcu()).  Sections that only read, or only
 * set USED and the clock bit, take the plain lock.
 */
static inline void dmu_cache_write_lock(struct dmu_cache *cache)
{
	spin_lock_irq(&cache->lock);
	write_seqcount_begin(&cache->seq);
}

static inline void dmu_cache_write_unlock(struct dmu_cache *cache)
{
	write_seqcount_end(&cache->seq);
	spin_unlock_irq(&cache->lock);
}

/* ---- I/O generations (dmu-drain.c) ---- */

struct dmu_drain;

struct dmu_io_gen {
	struct percpu_ref ref;
	struct dmu_drain *drain;
};

/* Called from the drain's workqueue once all I/O begun before it ended. */
struct dmu_drain_waiter {
	struct list_head list;
	void (*fn)(struct dmu_drain_waiter *w);
};

struct dmu_drain {
	struct dmu_io_gen gen[2];
	unsigned int cur;		/* the generation new I/O joins */
	spinlock_t lock;
	bool running;			/* a cycle waits for gen[!cur] */
	bool dead;			/* torn down: waiters run at once */
	struct list_head next;		/* waiters for the next cycle */
	struct list_head current_cycle;	/* waiters of the running cycle */
	struct work_struct work;
	struct workqueue_struct *wq;
	wait_queue_head_t idle;
};

/* ---- requests and trackers (dmu-request.c, -timeout.c, -tracker.c) ---- */

/* Something the daemon reads: a MAP or COMMIT request, or a DONE. */
enum dmu_msg_kind {
	DMU_MSG_MAP,
	DMU_MSG_COMMIT,
	DMU_MSG_DONE,
};

struct dmu_msg {
	struct list_head list;	/* send_queue / held_maps / sent / done_... */
	enum dmu_msg_kind kind;
};

enum dmu_req_state {
	DMU_RS_IDLE,		/* on no list */
	DMU_RS_QUEUED,		/* on send_queue */
	DMU_RS_HELD,		/* on held_maps: too many answers unpublished */
	DMU_RS_SENT,		/* on sent: read by the daemon, unanswered */
};

/* A MAP or COMMIT request, or a push batch being accumulated. */
struct dmu_req {
	struct dmu_msg msg;
	struct rb_node pending;		/* dt->pending_maps (MAP only) */
	u64 subtree_last;		/* of pending's interval subtree */
	struct hlist_node hash;		/* dt->ids */
	struct dmu_target *dt;
	u64 id;
	u64 block;
	u64 nr_blocks;
	unsigned long queued_at;	/* jiffies: for the answer timeout */
	enum dmu_req_state state;
	u32 map_flags;			/* DMU_MAP_* */
	bool resent;			/* was read by a daemon that left */
	bool push;			/* a push batch (dt->pushes) */
	bool from_pool;			/* allocated from dt->req_pool */
	bool bad_answer;		/* its answer missed its first block */
	struct bio_list bios;		/* waiting for the answer (dt->lock) */

	/* The answer being accumulated (dt->mutex). */
	struct dmu_response *msgs;
	unsigned int nr_msgs;
	unsigned int max_msgs;
};

enum dmu_tracker_kind {
	DMU_TK_WRITE,		/* answer to a write MAP */
	DMU_TK_PUSH,		/* push with NEW extents */
	DMU_TK_DISCARD,		/* answer to a discard MAP */
};

/* One NEW extent of an answer: what LIST_ALLOCATIONS reports. */
struct dmu_alloc {
	u64 block;
	u64 nr_blocks;
	u64 sector;
	u32 dev;
};

/* A data range a discard passes down to its device. */
struct dmu_range {
	u64 sector;
	u64 nr_sectors;
	u32 dev;
};

struct dmu_tracker {
	struct dmu_msg msg;		/* DONE: send_queue, done_read/covered */
	struct list_head inflight;	/* dt->inflight while work is left */
	struct list_head record;	/* dt->records until published */
	struct dmu_target *dt;
	enum dmu_tracker_kind kind;
	u64 id;				/* what DONE reports */
	u64 block;
	u64 nr_blocks;
	u32 map_flags;
	u64 seq;			/* application order */
	atomic_t io_pending;		/* retired when it drops to 0 */
	int error;			/* DONE status: first fill/direct error */
	bool io_done;			/* io_pending reached 0 */
	bool resent;			/* its DONE was read by a daemon that left */

	struct dmu_alloc *allocs;	/* the answer's NEW extents */
	unsigned int nr_allocs;

	/* Fill of NEW extents (dmu-fill.c). */
	struct dmu_extent **new_ext;	/* BUSY extents this answer owns */
	unsigned int nr_new;
	struct dmu_response *copies;	/* the answer's COPY messages */
	unsigned int nr_copies;
	struct bio_list direct;		/* our writes inside NEW extents */
	struct bio_list direct_done;	/* ... completed, held (dt->lock) */
	struct bio_list busy_bios;	/* waiting for our fill (cache->lock) */
	atomic_t stage_pending;		/* kcopyd jobs or direct writes */
	int stage;			/* DMU_STAGE_* */
	bool needs_drain;		/* replaced mappings: drain before filling */
	struct work_struct stage_work;
	struct dmu_drain_waiter drain_waiter;

	/* Discard. */
	struct bio_list discard_bios;	/* the guest's discards, until DONE */
	struct dmu_range *passdown;
	unsigned int nr_passdown;
};

/* ---- per-bio data ---- */

#define DMU_BIO_FUA	(1U << 0)	/* complete only after a commit */
#define DMU_BIO_HELD	(1U << 1)	/* end_io already ran once */
#define DMU_BIO_DIRECT	(1U << 2)	/* a write issued during a fill */

struct dmu_bio {
	struct dmu_tracker *tracker;	/* write re-driven by an answer */
	struct percpu_ref *io_ref;	/* the I/O generation it joined */
	unsigned int flags;
	u32 dev;			/* where a remapped write went */
};

/* ---- the target ---- */

enum dmu_daemon_state {
	DMU_DAEMON_ABSENT,	/* none bound yet; I/O waits */
	DMU_DAEMON_BOUND,
	DMU_DAEMON_WAITING,	/* the daemon left; I/O waits for another */
	DMU_DAEMON_TIMED_OUT,	/* waited too long; misses fail at once */
};

struct dmu_counters {
	atomic64_t requests;	/* MAP requests created */
	atomic64_t misses;	/* bios that needed the daemon */
	atomic64_t pushed;	/* extents received in pushes */
	atomic64_t pushed_used;	/* pushed extents used by I/O */
	atomic64_t bad;		/* rejected messages */
	atomic64_t fills;	/* kcopyd copy/zero jobs */
	atomic64_t commits;	/* COMMIT requests answered */
	atomic64_t timeouts;	/* daemon waits that expired */
	atomic64_t resent;	/* requests handed to a new daemon */
	atomic64_t evicted;	/* extents evicted from the cache */
	atomic64_t invalidated;	/* extents dropped by invalidation */
	atomic64_t requeued;	/* bios handed back to dm during suspend */
	atomic64_t drains;	/* waits for in-flight I/O */
	atomic64_t cycles;	/* commit cycles (flushes, checkpoints) */
};

/*
 * Counters of the hit path, per cpu so that a hit writes no cache line
 * another cpu writes too.  reset_counters keeps the sums as a base instead
 * of writing other cpus' counters (which would race with their increments).
 */
struct dmu_hit_counters {
	u64 hits;		/* bios mapped by the cache */
	u64 zero_reads;		/* reads answered from ZERO extents */
};

enum dmu_commit_stage {
	DMU_CS_IDLE,		/* no commit cycle under way */
	DMU_CS_WAIT,		/* waiting for trackers older than the barrier */
	DMU_CS_FLUSHING,	/* the worker flushes the data devices */
	DMU_CS_SENT,		/* COMMIT queued or read; waiting for COMMITTED */
};

struct dmu_channel;

/* Options of one table line; the live table's are the target's. */
struct dmu_options {
	unsigned int daemon_timeout;	/* seconds */
	unsigned int max_extents;
	u32 writable_devs;
	bool discard_passdown;
};

/* ti->private: one per table. */
struct dmu_tc {
	struct list_head list;		/* dt->tables (dmu_registry_lock) */
	struct dm_target *ti;
	struct dmu_target *dt;
	struct dmu_options opt;
	u32 block_sectors;
	u32 nr_devs;
	struct dm_dev *devs[DMU_MAX_DEVS];
};

struct dmu_target {
	struct kref kref;
	struct list_head registry;	/* dmu_registry (dmu_registry_lock) */
	char key[DMU_KEY_LEN];
	struct mapped_device *md;	/* the device the key belongs to */
	unsigned int nr_tables;		/* dmu_registry_lock */
	struct list_head tables;	/* struct dmu_tc (dmu_registry_lock) */
	u32 block_sectors;
	unsigned int block_shift;
	u32 nr_devs;
	struct block_device *bdev[DMU_MAX_DEVS];

	/* The live table: set by its resume (and by the first ctr). */
	struct dm_target *ti;
	sector_t begin;			/* ti->begin */
	sector_t len;			/* ti->len */
	u64 target_blocks;
	struct dmu_options opt;

	struct mutex mutex;
	spinlock_t lock;
	enum dmu_daemon_state state;
	bool dying;			/* the last table was destroyed */
	bool suspending;		/* between presuspend and resume */
	bool parked;			/* noflush-suspended, until resume */
	bool read_only;			/* the live table is (dmsetup --readonly) */
	struct dmu_channel *channel;	/* bound daemon */
	u64 features;			/* granted to the bound daemon */
	struct list_head send_queue;	/* struct dmu_msg */
	struct list_head sent;		/* read MAP and COMMIT, unanswered */
	struct list_head held_maps;	/* MAPs held back (dmu_must_hold) */
	unsigned int nr_held;
	struct rb_root_cached pending_maps;	/* by block range */
	DECLARE_HASHTABLE(ids, 8);
	unsigned int nr_pending;	/* unanswered MAP and COMMIT */
	struct list_head pushes;	/* open push batches (dt->mutex) */
	unsigned int nr_pushes;
	/* dmu_req.max_msgs of every request: grows under dt->mutex */
	atomic_t open_msgs;
	struct bio_list deferred;	/* misses that could not allocate */

	/* trackers (dmu-tracker.c), under dt->lock */
	u64 next_seq;
	struct list_head inflight;	/* work outstanding, in seq order */
	unsigned int nr_inflight;
	unsigned int nr_push_inflight;	/* bounds what a daemon can start */
	struct list_head records;	/* unpublished, in seq order */
	unsigned int nr_records;
	unsigned int nr_unpublished;	/* every tracker not yet freed */
	struct list_head done_read;	/* DONE read, no COMMIT read since */
	struct list_head done_covered;	/* covered by the COMMIT under way */
	struct list_head done_held;	/* retired during a device flush */
	wait_queue_head_t drain_wait;	/* dtr waits for inflight trackers */

	/* flush/commit (dmu-flush.c), under dt->lock */
	struct bio_list flush_bios;	/* wait for the next commit cycle */
	struct bio_list commit_bios;	/* covered by the cycle under way */
	enum dmu_commit_stage commit_stage;
	u64 commit_barrier;		/* trackers older than this first */
	bool checkpoint;		/* a cycle without bios was asked for */
	struct dmu_req commit;
	DECLARE_BITMAP(dirty_devs, DMU_MAX_DEVS);	/* written since flushed */
	unsigned long flags;		/* DMU_NEEDS_COMMIT */

	struct workqueue_struct *wq;
	struct work_struct flush_work;
	struct work_struct deferred_work;
	struct delayed_work timeout_work;
	struct delayed_work retry_work;	/* checkpoint after a failed cycle */
	struct dm_kcopyd_client *kc;
	struct bio_set zero_bs;		/* fills' zero writes (dmu-fill.c) */
	mempool_t req_pool;
	struct dmu_drain drain;

	struct dmu_cache cache;
	struct dmu_counters c;
	struct dmu_hit_counters __percpu *hc;
	struct dmu_hit_counters hc_base;	/* the sums at the last reset */
};

#define DMU_NEEDS_COMMIT	0	/* a DONE was queued since the last COMMIT */

/*
 * Unpublished trackers past which new MAPs wait and NEW pushes are refused
 * (module parameter max_unpublished); at a quarter of it the kernel asks
 * for a COMMIT of its own (a checkpoint).
 */
extern unsigned int dmu_max_unpublished;

static inline unsigned int dmu_unpublished_limit(void)
{
	return max(READ_ONCE(dmu_max_unpublished), 4U);
}

static inline u64 dmu_block_of(struct dmu_target *dt, sector_t sector)
{
	return sector >> dt->block_shift;
}

static inline sector_t dmu_block_start(struct dmu_target *dt, u64 block)
{
	return (sector_t)block << dt->block_shift;
}

/*
 * Devices 0..n-1 may be mapped writable: none while the live table is
 * read-only (the block layer does not stop a fill writing a device the
 * table opened read-only), whatever writable_devs says.
 */
static inline u32 dmu_writable_devs(struct dmu_target *dt)
{
	return READ_ONCE(dt->read_only) ? 0 : dt->opt.writable_devs;
}

/* The sector of a bio of the live table, counted from the target's start. */
static inline sector_t dmu_offset(struct dmu_target *dt, struct bio *bio)
{
	return bio->bi_iter.bi_sector - READ_ONCE(dt->begin);
}

static inline struct dmu_bio *dmu_pb(struct bio *bio)
{
	return dm_per_bio_data(bio, sizeof(struct dmu_bio));
}

/* A write to dev completed: the next flush must flush dev. */
static inline void dmu_mark_dirty(struct dmu_target *dt, u32 dev)
{
	if (!test_bit(dev, dt->dirty_devs))
		set_bit(dev, dt->dirty_devs);
}

/*
 * The unit, in sectors, below which zeroing or discarding a range of a data
 * device is done with plain writes or not at all: a page, or the device's
 * discard granularity if larger (for a loop device, its file system's
 * block).  A file system zeroes the parts of its blocks at the ends of a
 * punched or zeroed range through the page cache, which direct I/O of data
 * beside them cannot share (dmu_fill_zero()).  Data devices are whole loop
 * devices at offset 0, so device sectors align with file offsets.
 */
static inline sector_t dmu_zero_unit(struct block_device *bdev)
{
	sector_t g = bdev_discard_granularity(bdev) >> SECTOR_SHIFT;

	if (!is_power_of_2(g) || g <= PAGE_SECTORS)
		return PAGE_SECTORS;
	/* The partial ends are one bio of zero pages each. */
	return min_t(sector_t, g, BIO_MAX_VECS * PAGE_SECTORS);
}

/* dmu-target.c */
extern struct kmem_cache *dmu_extent_slab;
extern struct kmem_cache *dmu_req_slab;
extern struct kmem_cache *dmu_tracker_slab;

/* dmu-pool.c: the per-key state */
int dmu_pool_get(struct dmu_tc *tc, const char *key, char **error);
void dmu_pool_put(struct dmu_tc *tc);
void dmu_pool_activate(struct dmu_tc *tc);
void dmu_target_put(struct dmu_target *dt);
struct dmu_target *dmu_registry_find(const char *key);
extern struct mutex dmu_registry_lock;

/* dmu-cache.c */
int dmu_cache_init(struct dmu_cache *cache, unsigned long max);
void dmu_cache_exit(struct dmu_cache *cache);
struct dmu_extent *dmu_cache_find(struct dmu_cache *cache, u64 block);
struct dmu_extent *dmu_cache_find_rcu(struct dmu_cache *cache, u64 block);
struct dmu_extent *dmu_extent_alloc(struct dmu_cache *cache);
void dmu_extent_free(struct dmu_cache *cache, struct dmu_extent *e);
struct dmu_extent *dmu_cache_first_busy(struct dmu_cache *cache, u64 block,
					u64 nr_blocks);
unsigned int dmu_cache_count_busy(struct dmu_cache *cache, u64 block,
				  u64 nr_blocks);
bool dmu_cache_has_writable(struct dmu_cache *cache, u64 block, u64 nr_blocks);
void dmu_cache_make_room(struct dmu_target *dt, unsigned long incoming);
void dmu_cache_insert(struct dmu_target *dt, struct dmu_extent *e,
		      struct dmu_extent **spare);
unsigned long dmu_cache_invalidate(struct dmu_target *dt, u64 block,
				   u64 nr_blocks, struct dmu_extent **spare);
unsigned int dmu_cache_doom_busy(struct dmu_cache *cache, u64 block,
				 u64 nr_blocks);
unsigned int dmu_cache_writable_ranges(struct dmu_target *dt, u64 block,
				       u64 nr_blocks, struct dmu_range *out,
				       unsigned int max);
void dmu_cache_remove(struct dmu_target *dt, struct dmu_extent *e);
int dmu_cache_list(struct dmu_cache *cache, u64 start,
		   struct dmu_extent_info *out, unsigned int max, u64 *next);

/* dmu-drain.c */
int dmu_drain_init(struct dmu_drain *d, struct workqueue_struct *wq);
void dmu_drain_exit(struct dmu_drain *d);
struct percpu_ref *dmu_io_begin(struct dmu_drain *d);
struct percpu_ref *dmu_io_begin_rcu(struct dmu_drain *d);
void dmu_io_end(struct percpu_ref *ref);
void dmu_drain_async(struct dmu_drain *d, struct dmu_drain_waiter *w);
struct dmu_drain_sync;
struct dmu_drain_sync *dmu_drain_sync_alloc(void);
int dmu_drain_sync_wait(struct dmu_drain *d, struct dmu_drain_sync *s);
int dmu_drain_wait(struct dmu_drain *d);

/* dmu-request.c */
enum dmu_route {
	DMU_ROUTE_MAP,		/* from map(): may shorten the bio */
	DMU_ROUTE_ANSWER,	/* re-driven by origin's answer */
	DMU_ROUTE_RETRY,	/* re-driven after a fill or a refused write */
	DMU_ROUTE_DEFERRED,	/* retried by the worker: may sleep */
};

int dmu_map_bio(struct dmu_target *dt, struct bio *bio, enum dmu_route how,
		struct dmu_tracker *origin, struct dmu_req *answered);
int dmu_queue_request(struct dmu_target *dt, struct bio *bio, u64 block,
		      u64 nr_blocks, u32 map_flags, enum dmu_route how);
int dmu_queue_discard(struct dmu_target *dt, struct bio *bio,
		      enum dmu_route how);
struct dmu_req *dmu_req_alloc(struct dmu_target *dt, gfp_t gfp);
void dmu_req_drop_answer(struct dmu_req *req);
void dmu_req_free(struct dmu_req *req);
struct dmu_req *dmu_req_lookup(struct dmu_target *dt, u64 id);
void dmu_req_unlink(struct dmu_req *req);
u64 dmu_new_id(void);
bool dmu_must_fail_now(struct dmu_target *dt);
bool dmu_handing_back(struct dmu_target *dt);
bool dmu_must_requeue(struct dmu_target *dt);
void dmu_wake_daemon(struct dmu_target *dt);
int dmu_guest_errno(int status);
void dmu_end_bio(struct bio *bio, int error);
void dmu_end_bio_list(struct bio_list *bios, int error);
void dmu_requeue_bio(struct dmu_target *dt, struct bio *bio);
void dmu_deferred_work(struct work_struct *work);

/* dmu-timeout.c */
void dmu_requeue_parked(struct dmu_target *dt);
void dmu_fail_all(struct dmu_target *dt, blk_status_t status);
void dmu_daemon_gone(struct dmu_target *dt);
void dmu_timeout_work(struct work_struct *work);
void dmu_arm_timeout(struct dmu_target *dt);

/* dmu-tracker.c */
struct dmu_tracker *dmu_tracker_alloc(struct dmu_target *dt,
				      enum dmu_tracker_kind kind, u64 id,
				      unsigned int nr_allocs);
void dmu_tracker_start(struct dmu_tracker *tk);
void dmu_tracker_put(struct dmu_tracker *tk, int error);
void dmu_set_error(struct dmu_tracker *tk, int error);
void dmu_tracker_free(struct dmu_tracker *tk);
void dmu_done_read(struct dmu_target *dt, struct dmu_tracker *tk);
void dmu_done_requeue(struct dmu_target *dt);
void dmu_commit_read(struct dmu_target *dt);
void dmu_commit_outcome(struct dmu_target *dt, bool published);
unsigned int dmu_tracker_room(struct dmu_target *dt);
bool dmu_must_hold(struct dmu_target *dt);
void dmu_want_checkpoint(struct dmu_target *dt);
void dmu_release_held_maps(struct dmu_target *dt);
void dmu_requeue_held(struct dmu_target *dt);
void dmu_retry_work(struct work_struct *work);
void dmu_trackers_exit(struct dmu_target *dt);
unsigned int dmu_list_allocations(struct dmu_target *dt, u64 start,
				  struct dmu_allocation *out, unsigned int max,
				  u64 *next);

/* dmu-check.c: NULL, or why the message (answer) is bad */
const char *dmu_check_fields(struct dmu_target *dt,
			     const struct dmu_response *r);
const char *dmu_check_answer(struct dmu_target *dt, struct dmu_req *req);

static inline bool dmu_is_new(const struct dmu_response *m)
{
	return m->type == DMU_RSP_EXTENT && (m->ext_flags & DMU_EXT_NEW);
}

/* dmu-response.c */
unsigned int dmu_handle_responses(struct dmu_target *dt,
				  const struct dmu_response *msgs,
				  unsigned int n, bool *bad,
				  struct dmu_drain_sync **drain);
void dmu_drop_pushes(struct dmu_target *dt);
int dmu_invalidate(struct dmu_target *dt, u64 block, u64 nr_blocks);

/* dmu-discard.c */
void dmu_discard_answered(struct dmu_target *dt, struct dmu_tracker *tk,
			  struct dmu_extent **spare);

/* dmu-fill.c */
void dmu_fill_start(struct dmu_tracker *tk);
void dmu_stage_work(struct work_struct *work);
void dmu_direct_write_done(struct dmu_tracker *tk, struct bio *bio);

/* dmu-flush.c */
bool dmu_flush_defer(struct dmu_target *dt, struct bio *bio);
bool dmu_fua_defer(struct dmu_target *dt, struct bio *bio);
bool dmu_fua_must_requeue(struct dmu_target *dt);
void dmu_flush_work(struct work_struct *work);
void dmu_commit_answered(struct dmu_target *dt, int status);
void dmu_flush_fail_all(struct dmu_target *dt, blk_status_t status);
void dmu_commit_expired(struct dmu_target *dt);
void dmu_flush_requeue(struct dmu_target *dt);

/* dmu-control.c */
int dmu_control_init(void);
void dmu_control_exit(void);
void dmu_channel_detach(struct dmu_target *dt);
void dmu_channel_wake(struct dmu_channel *ch);

#endif /* DMU_H */
