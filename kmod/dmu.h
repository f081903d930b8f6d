/* SPDX-License-Identifier: GPL-2.0 */
/*
 * dm-userspace: internal definitions shared by the target's source files.
 *
 * One struct dmu_target per table target.  A bio that the extent cache
 * (dmu-cache.c) can map is remapped inside map(); any other bio is parked
 * on a struct dmu_request that a daemon reads from /dev/dm-userspace
 * (dmu-control.c), and is driven through the cache again once the answer
 * (dmu-response.c) has been applied.  Freshly allocated extents are filled
 * by kcopyd before use (dmu-fill.c); flushes wait for a metadata commit
 * (dmu-flush.c).
 *
 * Life of a MAP request: created by map() -> send_queue -> read() moves it
 * to the sent list -> the daemon's answer is accumulated in msgs[] -> at
 * DMU_RSP_FINAL it leaves every list, its extents enter the cache and its
 * bios are re-driven.  A write request (or a push with DMU_EXT_NEW extents)
 * then lives on as a "tracker" until its fills and the writes it re-drove
 * have completed, and finally turns into the DONE message that reports
 * them (so completion context never allocates).
 *
 * Locking (outermost first):
 *   dmu_registry_lock (mutex, dmu-control.c)  the list of targets by key
 *   dt->mutex     control-plane transitions: answering, binding/unbinding,
 *                 timing out, failing requests, cache mutations from
 *                 userspace.  Held while a request is being answered, so a
 *                 sent request cannot vanish under read() or write().
 *   dt->lock      (spinlock, irq-safe) send_queue, sent, pending_maps, the
 *                 id hash, req->bios, trackers, the flush lists, daemon
 *                 state and dt->channel.  Taken by map() on a miss and by
 *                 bio completion.
 *   cache->lock   (spinlock, never taken from irq) the rbtree and LRU of
 *                 extents and req->busy_bios (bios waiting for a fill).
 *                 Taken by map() on every bio: the hit path is one lock and
 *                 one tree walk.
 *   ch->lock      (spinlock) ch->dt and ch->detached.
 * dt->lock and cache->lock are never held together.
 *
 * Lifetime: dt is reference counted (kref); the table holds one reference
 * from ctr to dtr and a bound channel holds one.  dtr releases the devices,
 * the cache and the workers and detaches the channel, so a daemon that
 * still holds the file open sees -ENODEV but never freed memory.
 */
#ifndef DMU_H
#define DMU_H

#include <linux/atomic.h>
#include <linux/bio.h>
#include <linux/device-mapper.h>
#include <linux/dm-kcopyd.h>
#include <linux/hashtable.h>
#include <linux/kref.h>
#include <linux/mempool.h>
#include <linux/mutex.h>
#include <linux/rbtree.h>
#include <linux/spinlock.h>
#include <linux/wait.h>
#include <linux/workqueue.h>
#include <linux/dm-userspace.h>

#define DM_MSG_PREFIX "userspace"

#define DMU_MAX_DEVS		64
#define DMU_MAX_ANSWER_MSGS	256	/* messages accumulated per answer */
#define DMU_MAX_OPEN_PUSHES	16	/* push batches without FINAL yet */
#define DMU_MAX_PUSH_FILLS	64	/* pushes whose NEW extents are filling */
#define DMU_IO_MSGS		64	/* messages per read()/write() chunk */
#define DMU_MAX_LIST		4096	/* extents per LIST_EXTENTS call */

static_assert(sizeof(struct dmu_request) == DMU_MSG_SIZE);
static_assert(sizeof(struct dmu_response) == DMU_MSG_SIZE);
static_assert(sizeof(struct dmu_bind) == 136);
static_assert(sizeof(struct dmu_extent_info) == 40);
static_assert(sizeof(struct dmu_list_extents) == 48);

/* ---- extent cache (dmu-cache.c) ---- */

struct dmu_req;

struct dmu_extent {
	struct rb_node node;
	struct list_head lru;
	u64 block;
	u64 nr_blocks;
	u64 sector;		/* REMAP: sector of 'block' on dev */
	u32 dev;
	u8 kind;		/* DMU_EXT_ZERO, DMU_EXT_REMAP */
	u8 ext_flags;		/* DMU_EXT_WRITABLE */
	u8 state;		/* DMU_EXTENT_PUSHED | USED | BUSY */
	u8 referenced;		/* clock bit for eviction */
	struct dmu_req *owner;	/* while BUSY: the answer filling it */
};

struct dmu_cache {
	spinlock_t lock;
	struct rb_root root;
	struct list_head lru;	/* eviction order (clock) */
	unsigned long nr;
	unsigned long max;
	struct kmem_cache *slab;
};

/* ---- requests (dmu-request.c) ---- */

enum dmu_req_kind {
	DMU_RQ_MAP,		/* MAP, kernel id */
	DMU_RQ_COMMIT,		/* COMMIT, embedded in the target */
	DMU_RQ_PUSH,		/* daemon's push batch, never sent */
	DMU_RQ_DONE,		/* a finished tracker, waiting to be read */
};

enum dmu_req_state {
	DMU_RS_IDLE,		/* on no list */
	DMU_RS_QUEUED,		/* on send_queue */
	DMU_RS_SENT,		/* on sent: read by the daemon, unanswered */
	DMU_RS_TRACKING,	/* answered; fills or writes outstanding */
};

struct dmu_req {
	struct list_head list;		/* send_queue / sent / dt->pushes */
	struct list_head pending;	/* dt->pending_maps (MAP only) */
	struct list_head tracker;	/* dt->trackers */
	struct hlist_node hash;		/* dt->ids */
	struct dmu_target *dt;
	u64 id;
	u64 block;
	u64 nr_blocks;
	u64 seq;			/* tracker order, for the flush barrier */
	unsigned long queued_at;	/* jiffies: for the answer timeout */
	enum dmu_req_kind kind;
	enum dmu_req_state state;
	u32 map_flags;			/* DMU_MAP_* */
	bool resent;			/* was read by a daemon that left */
	bool needs_done;		/* write MAP or push with NEW extents */

	struct bio_list bios;		/* waiting for the answer (dt->lock) */
	struct bio_list busy_bios;	/* waiting for our fill (cache->lock) */

	/* The answer being accumulated (dt->mutex). */
	struct dmu_response *msgs;
	unsigned int nr_msgs;
	unsigned int max_msgs;

	/* Fill of DMU_EXT_NEW extents (dmu-fill.c). */
	struct dmu_extent **new_ext;	/* BUSY extents this answer owns */
	unsigned int nr_new;
	struct bio_list direct;		/* our writes inside NEW extents */
	atomic_t stage_pending;		/* kcopyd jobs or direct writes */
	int stage;			/* DMU_STAGE_* */
	struct work_struct stage_work;

	atomic_t io_pending;		/* tracker: DONE when it drops to 0 */
	int error;			/* first error (negative errno) */
};

/* ---- per-bio data ---- */

#define DMU_BIO_FUA	(1U << 0)	/* complete only after a commit */
#define DMU_BIO_HELD	(1U << 1)	/* end_io already ran once */
#define DMU_BIO_DIRECT	(1U << 2)	/* a write issued during a fill */

struct dmu_bio {
	struct dmu_req *tracker;
	unsigned int flags;
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
	atomic64_t hits;	/* bios mapped by the cache */
	atomic64_t misses;	/* bios that needed the daemon */
	atomic64_t pushed;	/* extents received in pushes */
	atomic64_t pushed_used;	/* pushed extents used by I/O */
	atomic64_t bad;		/* rejected messages */
	atomic64_t zero_reads;	/* reads answered from ZERO extents */
	atomic64_t fills;	/* kcopyd copy/zero jobs */
	atomic64_t commits;	/* COMMIT requests answered */
	atomic64_t timeouts;	/* daemon waits that expired */
	atomic64_t resent;	/* requests handed to a new daemon */
	atomic64_t evicted;	/* extents evicted from the cache */
	atomic64_t invalidated;	/* extents dropped by invalidation */
};

enum dmu_commit_stage {
	DMU_CS_IDLE,		/* no commit cycle under way */
	DMU_CS_WAIT,		/* waiting for trackers older than the barrier */
	DMU_CS_FLUSHING,	/* the worker flushes the data devices */
	DMU_CS_SENT,		/* COMMIT queued or read; waiting for COMMITTED */
};

struct dmu_channel;

struct dmu_target {
	struct dm_target *ti;
	struct kref kref;
	struct list_head registry;	/* dmu_registry (dmu_registry_lock) */
	char key[DMU_KEY_LEN];
	u32 block_sectors;
	unsigned int block_shift;
	u64 target_blocks;
	u32 nr_devs;
	struct dm_dev *devs[DMU_MAX_DEVS];
	unsigned int daemon_timeout;	/* seconds */
	unsigned int max_extents;

	struct mutex mutex;
	spinlock_t lock;
	enum dmu_daemon_state state;
	bool dying;			/* dtr has started */
	bool suspending;		/* between presuspend and resume */
	struct dmu_channel *channel;	/* bound daemon */
	u64 features;			/* granted to the bound daemon */
	struct list_head send_queue;
	struct list_head sent;
	struct list_head pending_maps;
	DECLARE_HASHTABLE(ids, 8);
	u64 next_id;
	u64 next_seq;
	unsigned int nr_pending;	/* unanswered MAP and COMMIT */
	struct list_head trackers;	/* in seq order */
	unsigned int nr_trackers;
	unsigned int nr_push_trackers;	/* bounds what a daemon can start */
	wait_queue_head_t drain_wait;	/* dtr waits for trackers */
	struct list_head pushes;	/* open push batches (dt->mutex) */
	unsigned int nr_pushes;
	struct bio_list deferred;	/* misses that could not allocate */

	/* flush/commit (dmu-flush.c), under dt->lock */
	struct bio_list flush_bios;	/* wait for the next commit cycle */
	struct bio_list commit_bios;	/* covered by the cycle under way */
	enum dmu_commit_stage commit_stage;
	u64 commit_barrier;		/* trackers older than this first */
	struct dmu_req commit;
	unsigned long dirty_devs;	/* written since their last flush */
	unsigned long flags;		/* DMU_DIRTY */

	struct workqueue_struct *wq;
	struct work_struct flush_work;
	struct work_struct deferred_work;
	struct delayed_work timeout_work;
	struct dm_kcopyd_client *kc;
	mempool_t req_pool;

	struct dmu_cache cache;
	struct dmu_counters c;
};

#define DMU_DIRTY	0	/* written since the last commit was sent */

static inline u64 dmu_block_of(struct dmu_target *dt, sector_t sector)
{
	return sector >> dt->block_shift;
}

static inline sector_t dmu_block_start(struct dmu_target *dt, u64 block)
{
	return (sector_t)block << dt->block_shift;
}

static inline struct dmu_bio *dmu_pb(struct bio *bio)
{
	return dm_per_bio_data(bio, sizeof(struct dmu_bio));
}

/* A write is about to reach dev: the next flush must flush it and commit. */
static inline void dmu_mark_dirty(struct dmu_target *dt, u32 dev)
{
	if (!test_bit(dev, &dt->dirty_devs))
		set_bit(dev, &dt->dirty_devs);
	if (!test_bit(DMU_DIRTY, &dt->flags))
		set_bit(DMU_DIRTY, &dt->flags);
}

/* dmu-target.c */
extern struct kmem_cache *dmu_extent_slab;
extern struct kmem_cache *dmu_req_slab;

/* dmu-cache.c */
int dmu_cache_init(struct dmu_cache *cache, unsigned long max);
void dmu_cache_exit(struct dmu_cache *cache);
struct dmu_extent *dmu_cache_find(struct dmu_cache *cache, u64 block);
struct dmu_extent *dmu_extent_alloc(struct dmu_cache *cache);
void dmu_extent_free(struct dmu_cache *cache, struct dmu_extent *e);
struct dmu_extent *dmu_cache_first_busy(struct dmu_cache *cache, u64 block,
					u64 nr_blocks);
unsigned int dmu_cache_count_busy(struct dmu_cache *cache, u64 block,
				  u64 nr_blocks);
void dmu_cache_make_room(struct dmu_target *dt, unsigned long incoming);
void dmu_cache_insert(struct dmu_target *dt, struct dmu_extent *e,
		      struct dmu_extent **spare);
unsigned long dmu_cache_invalidate(struct dmu_target *dt, u64 block,
				   u64 nr_blocks, struct dmu_extent **spare);
void dmu_cache_remove(struct dmu_target *dt, struct dmu_extent *e);
int dmu_cache_list(struct dmu_cache *cache, u64 start,
		   struct dmu_extent_info *out, unsigned int max, u64 *next);

/* dmu-request.c */
enum dmu_route {
	DMU_ROUTE_MAP,		/* from map(): may shorten the bio */
	DMU_ROUTE_ANSWER,	/* re-driven by origin's answer */
	DMU_ROUTE_RETRY,	/* re-driven after a fill */
	DMU_ROUTE_DEFERRED,	/* retried by the worker: may sleep */
};

int dmu_map_bio(struct dmu_target *dt, struct bio *bio, enum dmu_route how,
		struct dmu_req *origin);
void dmu_queue_request(struct dmu_target *dt, struct bio *bio, u64 block,
		       u64 nr_blocks, u32 map_flags, bool can_sleep);
struct dmu_req *dmu_req_alloc(struct dmu_target *dt, gfp_t gfp);
void dmu_req_free(struct dmu_req *req);
struct dmu_req *dmu_req_lookup(struct dmu_target *dt, u64 id);
void dmu_req_unlink(struct dmu_req *req);
void dmu_req_fail(struct dmu_req *req, int error);
void dmu_tracker_start(struct dmu_req *req);
void dmu_tracker_put(struct dmu_req *req, int error);
void dmu_set_error(struct dmu_req *req, int error);
void dmu_fail_all(struct dmu_target *dt, blk_status_t status);
void dmu_daemon_gone(struct dmu_target *dt);
void dmu_deferred_work(struct work_struct *work);
void dmu_timeout_work(struct work_struct *work);
void dmu_arm_timeout(struct dmu_target *dt);
bool dmu_must_fail_now(struct dmu_target *dt);
void dmu_wake_daemon(struct dmu_target *dt);
void dmu_end_bio(struct bio *bio, int error);

/* dmu-response.c */
unsigned int dmu_handle_responses(struct dmu_target *dt,
				  const struct dmu_response *msgs,
				  unsigned int n, bool *bad);
void dmu_drop_pushes(struct dmu_target *dt);
int dmu_invalidate(struct dmu_target *dt, u64 block, u64 nr_blocks);

/* dmu-fill.c */
void dmu_fill_start(struct dmu_req *req);
void dmu_stage_work(struct work_struct *work);
void dmu_direct_write_done(struct dmu_req *req);

/* dmu-flush.c */
void dmu_flush_defer(struct dmu_target *dt, struct bio *bio);
void dmu_flush_work(struct work_struct *work);
void dmu_commit_answered(struct dmu_target *dt, int status);
void dmu_flush_fail_all(struct dmu_target *dt, blk_status_t status);
void dmu_commit_expired(struct dmu_target *dt);

/* dmu-control.c */
int dmu_control_init(void);
void dmu_control_exit(void);
void dmu_registry_add(struct dmu_target *dt);
void dmu_registry_del(struct dmu_target *dt);
void dmu_channel_detach(struct dmu_target *dt);
void dmu_channel_wake(struct dmu_channel *ch);
void dmu_target_put(struct dmu_target *dt);

#endif /* DMU_H */
