// SPDX-License-Identifier: GPL-2.0
/*
 * dm-userspace requests: routing a bio through the cache, parking it on a
 * MAP request when the cache cannot map it, and the rules for which
 * waiting bios a noflush suspend hands back to dm core.  (What happens to
 * waiting I/O when the daemon goes away or the wait times out, and the
 * hand-back with no daemon: dmu-timeout.c.)
 *
 * A parked bio always lies inside one block (map() cuts it at the block
 * boundary), so when it is driven through the cache again it is either
 * mapped whole by one extent or needs exactly one block.
 */
#include <linux/blkdev.h>
#include <linux/interval_tree_generic.h>
#include <linux/slab.h>

#include "dmu.h"

/*
 * Unanswered MAP requests by the blocks they cover: every miss looks for
 * one, under dt->lock with interrupts off, and there may be thousands
 * (max_unpublished, and the held ones beyond).
 */
static u64 dmu_req_first(struct dmu_req *req)
{
	return req->block;
}

static u64 dmu_req_last(struct dmu_req *req)
{
	return req->block + req->nr_blocks - 1;
}

INTERVAL_TREE_DEFINE(struct dmu_req, pending, u64, subtree_last,
		     dmu_req_first, dmu_req_last, static, dmu_pending)

/* Request ids are unique for the life of the module, across targets. */
static atomic64_t dmu_last_id = ATOMIC64_INIT(0);

u64 dmu_new_id(void)
{
	return (u64)atomic64_inc_return(&dmu_last_id) & ~DMU_PUSH_ID;
}

/*
 * The errno a bio ends with when the daemon failed its request with
 * status.  Some errnos mean something to the block layer beyond "this I/O
 * failed" (-EAGAIN reissues a REQ_NOWAIT bio, -EREMCHG is dm core's own
 * requeue, -EREMOTEIO makes dm core turn discards off, -ETIMEDOUT and
 * -ENOLINK are path errors to dm-mpath): a daemon passes only plain
 * failures; anything else fails as -EIO.
 */
int dmu_guest_errno(int status)
{
	switch (status) {
	case 0:
	case -EIO:
	case -ENOSPC:
	case -ENODATA:
	case -EOPNOTSUPP:
		return status;
	default:
		return -EIO;
	}
}

void dmu_end_bio(struct bio *bio, int error)
{
	bio->bi_status = error ? errno_to_blk_status(error) : BLK_STS_OK;
	bio_endio(bio);
}

void dmu_end_bio_list(struct bio_list *bios, int error)
{
	struct bio *bio;

	while ((bio = bio_list_pop(bios)))
		dmu_end_bio(bio, error);
}

/*
 * Hand a parked bio back to dm core, which issues it again after resume.
 * A held FUA write keeps DMU_BIO_HELD: end_io, called again, is done
 * with it (map() clears the flags when dm core issues it again).
 */
void dmu_requeue_bio(struct dmu_target *dt, struct bio *bio)
{
	atomic64_inc(&dt->c.requeued);
	bio->bi_status = BLK_STS_DM_REQUEUE;
	bio_endio(bio);
}

struct dmu_req *dmu_req_alloc(struct dmu_target *dt, gfp_t gfp)
{
	struct dmu_req *req = mempool_alloc(&dt->req_pool, gfp);

	if (!req)
		return NULL;
	memset(req, 0, sizeof(*req));
	INIT_LIST_HEAD(&req->msg.list);
	RB_CLEAR_NODE(&req->pending);
	INIT_HLIST_NODE(&req->hash);
	req->msg.kind = DMU_MSG_MAP;
	req->dt = dt;
	req->from_pool = true;
	return req;
}

/* Forget the answer accumulated so far, and give its room back. */
void dmu_req_drop_answer(struct dmu_req *req)
{
	if (!req->msgs)
		return;
	/* Answers are appended, checked and applied under it. */
	lockdep_assert_held(&req->dt->mutex);
	atomic_sub(req->max_msgs, &req->dt->open_msgs);
	kfree(req->msgs);
	req->msgs = NULL;
	req->nr_msgs = 0;
	req->max_msgs = 0;
}

/* Frees a request that is on no list (the embedded COMMIT is never freed). */
void dmu_req_free(struct dmu_req *req)
{
	dmu_req_drop_answer(req);
	if (req == &req->dt->commit)
		return;
	if (req->from_pool)
		mempool_free(req, &req->dt->req_pool);
	else
		kmem_cache_free(dmu_req_slab, req);
}

struct dmu_req *dmu_req_lookup(struct dmu_target *dt, u64 id)
{
	struct dmu_req *req;

	lockdep_assert_held(&dt->lock);
	hash_for_each_possible(dt->ids, req, hash, id)
		if (req->id == id)
			return req;
	return NULL;
}

/* Take an unanswered MAP or COMMIT off every list. */
void dmu_req_unlink(struct dmu_req *req)
{
	lockdep_assert_held(&req->dt->lock);
	hash_del(&req->hash);
	if (!RB_EMPTY_NODE(&req->pending)) {
		dmu_pending_remove(req, &req->dt->pending_maps);
		RB_CLEAR_NODE(&req->pending);
	}
	list_del_init(&req->msg.list);
	req->dt->nr_pending--;
	if (req->state == DMU_RS_HELD)
		req->dt->nr_held--;
	req->state = DMU_RS_IDLE;
}

/*
 * Called with dt->lock held: a noflush suspend (a table reload) is under
 * way, so what waits can go back to dm core, which issues it again after
 * resume.  dm core honours a requeue only while it is noflush suspending
 * (an interrupted suspend ends that before presuspend_undo), so ask it.
 *
 * What such a suspend hands back (these three predicates, all with
 * dt->lock held): with no daemon, every bio that waits for one
 * (dmu_must_requeue).  With a daemon bound, what may wait for a COMMIT the
 * daemon may never give: a new MAP that would be held for room
 * (dmu_must_requeue_map; dmu_requeue_held says why), a flush and a FUA
 * write not yet written (dmu_handing_back itself), and from presuspend
 * the FUA writes waiting (dmu_fua_defer says why not those completing
 * later).  A MAP the daemon has it answers within daemon_timeout.
 */
bool dmu_handing_back(struct dmu_target *dt)
{
	lockdep_assert_held(&dt->lock);
	return dt->suspending && !dt->dying && dm_noflush_suspending(dt->ti);
}

bool dmu_must_requeue(struct dmu_target *dt)
{
	return dmu_handing_back(dt) && dt->state != DMU_DAEMON_BOUND;
}

static bool dmu_must_requeue_map(struct dmu_target *dt)
{
	return dmu_handing_back(dt) &&
	       (dt->state != DMU_DAEMON_BOUND || dmu_must_hold(dt));
}

/* Called with dt->lock held: I/O that needs the daemon fails at once. */
bool dmu_must_fail_now(struct dmu_target *dt)
{
	if (dt->dying || dt->state == DMU_DAEMON_TIMED_OUT)
		return true;
	return dt->state != DMU_DAEMON_BOUND && !dt->opt.daemon_timeout;
}

void dmu_wake_daemon(struct dmu_target *dt)
{
	lockdep_assert_held(&dt->lock);
	if (dt->channel)
		dmu_channel_wake(dt->channel);
}

/*
 * A pending MAP covering block, one not held if there is such.  A read
 * joins a write's MAP too, unless alone is set: a read re-driven after a
 * write's MAP failed must not ride on the next write's MAP to that block.
 */
static struct dmu_req *dmu_find_pending(struct dmu_target *dt, u64 block,
					 bool write, bool alone)
{
	struct dmu_req *req, *held = NULL;

	lockdep_assert_held(&dt->lock);
	for (req = dmu_pending_iter_first(&dt->pending_maps, block, block); req;
	     req = dmu_pending_iter_next(req, block, block)) {
		if (req->map_flags & DMU_MAP_DISCARD)
			continue;
		if (write && !(req->map_flags & DMU_MAP_WRITE))
			continue;
		if (alone && !write && (req->map_flags & DMU_MAP_WRITE))
			continue;
		if (req->state != DMU_RS_HELD)
			return req;
		if (!held)
			held = req;
	}
	return held;
}

/*
 * Park a bio on the MAP request for [block, block + nr_blocks), creating
 * and sending one unless a pending request already covers the bio's block
 * (then the pieces of one large bio make one request).  A read or write bio
 * lies inside one block; nr_blocks is how many blocks the original bio
 * touched, a hint that lets the daemon answer a large bio with one extent.
 * A discard always gets a request of its own.  Returns what map() returns.
 */
int dmu_queue_request(struct dmu_target *dt, struct bio *bio, u64 block,
		      u64 nr_blocks, u32 map_flags, enum dmu_route how)
{
	struct dmu_req *req = NULL, *fresh = NULL;
	unsigned long flags;

	for (;;) {
		bool requeue;

		spin_lock_irqsave(&dt->lock, flags);
		requeue = dmu_must_requeue_map(dt);
		if (requeue || dmu_must_fail_now(dt)) {
			spin_unlock_irqrestore(&dt->lock, flags);
			if (fresh)
				dmu_req_free(fresh);
			if (requeue && how == DMU_ROUTE_MAP) {
				atomic64_inc(&dt->c.requeued);
				return DM_MAPIO_REQUEUE;
			}
			if (requeue)
				dmu_requeue_bio(dt, bio);
			else
				bio_io_error(bio);
			return DM_MAPIO_SUBMITTED;
		}
		if (!(map_flags & DMU_MAP_DISCARD))
			req = dmu_find_pending(dt, block,
					       map_flags & DMU_MAP_WRITE,
					       how == DMU_ROUTE_RETRY);
		if (req || fresh)
			break;
		spin_unlock_irqrestore(&dt->lock, flags);

		/*
		 * Only the deferral worker may sleep for a request: map() must
		 * not, and the pool refills when the daemon answers.
		 */
		fresh = dmu_req_alloc(dt, how == DMU_ROUTE_DEFERRED ?
				      GFP_NOIO : GFP_NOWAIT);
		if (!fresh) {
			spin_lock_irqsave(&dt->lock, flags);
			bio_list_add(&dt->deferred, bio);
			spin_unlock_irqrestore(&dt->lock, flags);
			queue_work(dt->wq, &dt->deferred_work);
			return DM_MAPIO_SUBMITTED;
		}
	}
	if (!req) {
		bool hold = dmu_must_hold(dt);

		req = fresh;
		fresh = NULL;
		req->id = dmu_new_id();
		req->block = block;
		req->nr_blocks = min(nr_blocks, dt->target_blocks - block);
		req->map_flags = map_flags;
		hash_add(dt->ids, &req->hash, req->id);
		dmu_pending_insert(req, &dt->pending_maps);
		dt->nr_pending++;
		req->queued_at = jiffies;
		atomic64_inc(&dt->c.requests);
		dmu_arm_timeout(dt);
		if (hold) {
			req->state = DMU_RS_HELD;
			list_add_tail(&req->msg.list, &dt->held_maps);
			dt->nr_held++;
			/* Unless the room is all MAPs out: answers free that. */
			if (dt->nr_unpublished)
				dmu_want_checkpoint(dt);
		} else {
			req->state = DMU_RS_QUEUED;
			list_add_tail(&req->msg.list, &dt->send_queue);
			dmu_wake_daemon(dt);
		}
	}
	bio_list_add(&req->bios, bio);
	spin_unlock_irqrestore(&dt->lock, flags);
	if (fresh)
		dmu_req_free(fresh);
	return DM_MAPIO_SUBMITTED;
}

/* The answer to 'answered' did not cover its first block: fail the bio. */
static void dmu_answer_missed(struct dmu_target *dt, struct dmu_req *answered,
			      struct bio *bio, bool write, u64 block)
{
	if (!answered->bad_answer) {
		answered->bad_answer = true;
		atomic64_inc(&dt->c.bad);
		DMERR_LIMIT("%s: answer to request %llu does not cover its first block %llu for %s",
			    dt->key, answered->id, block, write ? "writing" : "reading");
	}
	bio_io_error(bio);
}

/* What a hit needs from its extent, copied while the extent is stable. */
struct dmu_hit {
	u64 block;		/* the extent's first block */
	u64 nr_blocks;
	u64 sector;
	u32 dev;
	u8 kind;
};

static void dmu_hit_of(const struct dmu_extent *e, struct dmu_hit *hit)
{
	hit->block = READ_ONCE(e->block);
	hit->nr_blocks = READ_ONCE(e->nr_blocks);
	hit->sector = READ_ONCE(e->sector);
	hit->dev = READ_ONCE(e->dev);
	hit->kind = READ_ONCE(e->kind);
}

static bool dmu_can_hit(const struct dmu_extent *e, u8 state, bool write)
{
	if (state & DMU_EXTENT_BUSY)
		return false;
	return !write || (READ_ONCE(e->kind) == DMU_EXT_REMAP &&
			  (READ_ONCE(e->ext_flags) & DMU_EXT_WRITABLE));
}

/*
 * The hit path without cache->lock: look the block up in an RCU-protected
 * snapshot of the tree, join the I/O generation, then check with the
 * seqcount that no change to the cache began since the snapshot was taken.
 * Returns false (having dropped any reference it took) whenever it cannot
 * tell, and the caller takes the locked path, which decides exactly as
 * before.
 *
 * Why the drain guarantee survives without the lock: an invalidation (or
 * discard, or fill replacing mappings) changes the tree inside a seqcount
 * write section and only then starts its drain cycle, which makes the other
 * generation current (after a full barrier, dmu_drain_start()) and kills
 * the old one.  Here, cur is read after the seqcount and before it is
 * checked again (smp_rmb() in read_seqcount_retry()).  So if the check
 * passes, this bio saw the tree before the change and read cur before the
 * cycle switched it: its reference is on the generation that cycle kills
 * (or on an older one still draining, which that cycle waits behind), and
 * the kill's RCU grace period (percpu_ref_kill()) cannot end before this
 * read side, so the drain counts the reference.  If the tree changed, the
 * check fails and the reference is dropped again unused.
 *
 * Only extents already USED hit here, so the status counter pushed_used and
 * the USED bit (a read-modify-write of state, which writers also modify)
 * are only ever written under the lock.  The clock bit is a byte of its
 * own; racing with eviction's clearing of it only costs a second chance.
 */
static bool dmu_try_hit_rcu(struct dmu_target *dt, u64 block, bool write,
			    struct dmu_hit *hit, struct percpu_ref **ref)
{
	struct dmu_cache *cache = &dt->cache;
	struct dmu_extent *e;
	bool ok = false;
	unsigned int seq;
	u8 state;

	rcu_read_lock();
	seq = raw_read_seqcount(&cache->seq);
	if (seq & 1)
		goto out;
	e = dmu_cache_find_rcu(cache, block);
	if (!e)
		goto out;
	state = READ_ONCE(e->state);
	if (!(state & DMU_EXTENT_USED) || !dmu_can_hit(e, state, write))
		goto out;
	dmu_hit_of(e, hit);
	*ref = hit->kind == DMU_EXT_REMAP ? dmu_io_begin_rcu(&dt->drain) : NULL;
	if (read_seqcount_retry(&cache->seq, seq)) {
		if (*ref)
			dmu_io_end(*ref);
		goto out;
	}
	/* e is not freed before rcu_read_unlock(), even if unlinked by now. */
	if (!READ_ONCE(e->referenced))
		WRITE_ONCE(e->referenced, 1);
	ok = true;
out:
	rcu_read_unlock();
	return ok;
}

/*
 * Remap (or zero-fill) a bio that hit.  ref is the I/O generation the bio
 * joined while its extent was known to be in the cache (NULL for ZERO).
 */
static int dmu_remap_hit(struct dmu_target *dt, struct bio *bio,
			 enum dmu_route how, struct dmu_tracker *origin,
			 const struct dmu_hit *hit, struct percpu_ref *ref)
{
	bool in_map = how == DMU_ROUTE_MAP;
	sector_t offset = dmu_offset(dt, bio);
	sector_t start = dmu_block_start(dt, hit->block);
	sector_t limit = dmu_block_start(dt, hit->block + hit->nr_blocks) - offset;
	struct dmu_bio *pb = dmu_pb(bio);

	if (in_map && bio_sectors(bio) > limit)
		dm_accept_partial_bio(bio, limit);
	if (in_map)
		this_cpu_inc(dt->hc->hits);
	if (hit->kind == DMU_EXT_ZERO) {
		this_cpu_inc(dt->hc->zero_reads);
		zero_fill_bio(bio);
		bio_endio(bio);
		return DM_MAPIO_SUBMITTED;
	}
	pb->io_ref = ref;
	pb->dev = hit->dev;
	bio_set_dev(bio, dt->bdev[hit->dev]);
	bio->bi_iter.bi_sector = hit->sector + (offset - start);
	if (in_map)
		return DM_MAPIO_REMAPPED;
	if (op_is_write(bio_op(bio)) && origin) {
		pb->tracker = origin;
		atomic_inc(&origin->io_pending);
	}
	dm_submit_bio_remap(bio, NULL);
	return DM_MAPIO_SUBMITTED;
}

/*
 * Route one bio through the cache.
 *
 * From map() (DMU_ROUTE_MAP): a hit is remapped and DM_MAPIO_REMAPPED
 * returned, after shortening the bio to the extent with
 * dm_accept_partial_bio(); a miss is shortened to its block and parked.
 *
 * Otherwise the bio lies inside one block and is submitted here.  A write
 * that hits is tracked by origin (the tracker of the answer that re-drives
 * it) when there is one; with DMU_ROUTE_ANSWER a bio in the first block of
 * the answered request that the answer did not cover fails.
 *
 * A remapped bio joins the current I/O generation while its extent is
 * known to be in the cache (under cache->lock, or inside the seqcount
 * snapshot of dmu_try_hit_rcu()), so an invalidation that drops its extent
 * waits for it.
 */
int dmu_map_bio(struct dmu_target *dt, struct bio *bio, enum dmu_route how,
		struct dmu_tracker *origin, struct dmu_req *answered)
{
	bool in_map = how == DMU_ROUTE_MAP;
	struct dmu_cache *cache = &dt->cache;
	sector_t offset = dmu_offset(dt, bio);
	sector_t len = bio_sectors(bio);
	u64 block = dmu_block_of(dt, offset);
	u64 span = dmu_block_of(dt, offset + len - 1) - block + 1;
	bool write = op_is_write(bio_op(bio));
	struct percpu_ref *ref;
	struct dmu_extent *e;
	struct dmu_hit hit;
	unsigned long flags;
	sector_t limit;

	if (likely(dmu_try_hit_rcu(dt, block, write, &hit, &ref)))
		return dmu_remap_hit(dt, bio, how, origin, &hit, ref);

	spin_lock_irqsave(&cache->lock, flags);
	e = dmu_cache_find(cache, block);
	if (e && dmu_can_hit(e, e->state, write)) {
		e->referenced = 1;
		if ((e->state & (DMU_EXTENT_PUSHED | DMU_EXTENT_USED)) ==
		    DMU_EXTENT_PUSHED)
			atomic64_inc(&dt->c.pushed_used);
		e->state |= DMU_EXTENT_USED;
		dmu_hit_of(e, &hit);
		ref = hit.kind == DMU_EXT_REMAP ? dmu_io_begin(&dt->drain) : NULL;
		spin_unlock_irqrestore(&cache->lock, flags);
		return dmu_remap_hit(dt, bio, how, origin, &hit, ref);
	}

	limit = dmu_block_start(dt, block + 1) - offset;
	if (in_map && len > limit)
		dm_accept_partial_bio(bio, limit);
	if (e && (e->state & DMU_EXTENT_BUSY)) {
		bio_list_add(&e->owner->busy_bios, bio);
		spin_unlock_irqrestore(&cache->lock, flags);
		return DM_MAPIO_SUBMITTED;
	}
	spin_unlock_irqrestore(&cache->lock, flags);

	if (how == DMU_ROUTE_ANSWER && answered && block == answered->block) {
		dmu_answer_missed(dt, answered, bio, write, block);
		return DM_MAPIO_SUBMITTED;
	}
	atomic64_inc(&dt->c.misses);
	return dmu_queue_request(dt, bio, block, span,
				 write ? DMU_MAP_WRITE : 0, how);
}

/*
 * A discard asks the daemon for whole blocks only (advisory: partial blocks
 * are simply kept); it never goes through the cache.
 */
int dmu_queue_discard(struct dmu_target *dt, struct bio *bio,
		      enum dmu_route how)
{
	sector_t offset = dmu_offset(dt, bio);
	u64 first = dmu_block_of(dt, offset + dt->block_sectors - 1);
	u64 end = dmu_block_of(dt, offset + bio_sectors(bio));

	if (offset + bio_sectors(bio) == dt->len)
		end = dt->target_blocks;
	if (first >= end) {
		bio_endio(bio);
		return DM_MAPIO_SUBMITTED;
	}
	return dmu_queue_request(dt, bio, first, end - first, DMU_MAP_DISCARD,
				 how);
}

/* Misses whose request could not be allocated inside map(). */
void dmu_deferred_work(struct work_struct *work)
{
	struct dmu_target *dt = container_of(work, struct dmu_target,
					     deferred_work);
	struct bio_list bios;
	struct bio *bio;

	spin_lock_irq(&dt->lock);
	bios = dt->deferred;
	bio_list_init(&dt->deferred);
	spin_unlock_irq(&dt->lock);
	while ((bio = bio_list_pop(&bios))) {
		if (bio_op(bio) == REQ_OP_DISCARD)
			dmu_queue_discard(dt, bio, DMU_ROUTE_DEFERRED);
		else
			dmu_map_bio(dt, bio, DMU_ROUTE_DEFERRED, NULL, NULL);
	}
}
