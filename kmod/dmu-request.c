// SPDX-License-Identifier: GPL-2.0
/*
 * dm-userspace requests: routing a bio through the cache, parking it on a
 * MAP request when the cache cannot map it, and what happens to waiting
 * I/O when the daemon goes away, the wait times out or the device is
 * suspended.
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

void dmu_end_bio(struct bio *bio, int error)
{
	bio->bi_status = error ? errno_to_blk_status(error) : BLK_STS_OK;
	bio_endio(bio);
}

static void dmu_end_bio_list(struct bio_list *bios, int error)
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

/* Frees a request that is on no list (the embedded COMMIT is never freed). */
void dmu_req_free(struct dmu_req *req)
{
	kfree(req->msgs);
	req->msgs = NULL;
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
 */
static bool dmu_handing_back(struct dmu_target *dt)
{
	return dt->suspending && !dt->dying && dm_noflush_suspending(dt->ti);
}

/*
 * What such a suspend hands back (these three with dt->lock held).  With
 * no daemon, every bio that waits for one.  With a daemon bound, what may
 * wait for a COMMIT the daemon may never give: a new MAP that would be
 * held for room (dmu_requeue_held says why), a flush, a FUA write not yet
 * written, and from presuspend the FUA writes waiting (dmu_flush_defer
 * says why not those completing later).  A MAP the daemon has it answers
 * within daemon_timeout.
 */
bool dmu_must_requeue(struct dmu_target *dt)
{
	return dmu_handing_back(dt) && dt->state != DMU_DAEMON_BOUND;
}

static bool dmu_must_requeue_map(struct dmu_target *dt)
{
	return dmu_handing_back(dt) &&
	       (dt->state != DMU_DAEMON_BOUND || dmu_must_hold(dt));
}

bool dmu_must_requeue_flush(struct dmu_target *dt)
{
	return dmu_handing_back(dt);
}

/* The same for a FUA write in map(), before it is written. */
bool dmu_fua_must_requeue(struct dmu_target *dt)
{
	unsigned long flags;
	bool requeue;

	spin_lock_irqsave(&dt->lock, flags);
	requeue = dmu_handing_back(dt);
	spin_unlock_irqrestore(&dt->lock, flags);
	return requeue;
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

/* A pending MAP covering block, one not held if there is such. */
static struct dmu_req *dmu_find_pending(struct dmu_target *dt, u64 block,
					 bool write)
{
	struct dmu_req *req, *held = NULL;

	lockdep_assert_held(&dt->lock);
	for (req = dmu_pending_iter_first(&dt->pending_maps, block, block); req;
	     req = dmu_pending_iter_next(req, block, block)) {
		if (req->map_flags & DMU_MAP_DISCARD)
			continue;
		if (write && !(req->map_flags & DMU_MAP_WRITE))
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
					       map_flags & DMU_MAP_WRITE);
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

/*
 * A noflush suspend with no daemon: hand every bio that waits for a daemon
 * back to dm core.  The requests stay pending (a daemon may still answer
 * them); the bios come back after resume and find them again.
 */
void dmu_requeue_parked(struct dmu_target *dt)
{
	struct bio_list bios = BIO_EMPTY_LIST;
	struct rb_node *node;
	struct bio *bio;

	lockdep_assert_held(&dt->mutex);
	spin_lock_irq(&dt->lock);
	for (node = rb_first_cached(&dt->pending_maps); node;
	     node = rb_next(node)) {
		struct dmu_req *req = rb_entry(node, struct dmu_req, pending);

		bio_list_merge(&bios, &req->bios);
		bio_list_init(&req->bios);
	}
	bio_list_merge(&bios, &dt->deferred);
	bio_list_init(&dt->deferred);
	spin_unlock_irq(&dt->lock);
	while ((bio = bio_list_pop(&bios)))
		dmu_requeue_bio(dt, bio);
	dmu_flush_requeue(dt);
}

/*
 * Fail every MAP request and every flush that waits for a daemon.  DONE
 * messages stay queued for the next daemon (dtr frees them).
 */
void dmu_fail_all(struct dmu_target *dt, blk_status_t status)
{
	int error = blk_status_to_errno(status);
	struct dmu_msg *m, *tmp;
	struct bio_list deferred;
	LIST_HEAD(victims);

	lockdep_assert_held(&dt->mutex);
	spin_lock_irq(&dt->lock);
	list_splice_tail_init(&dt->sent, &dt->send_queue);
	list_splice_tail_init(&dt->held_maps, &dt->send_queue);
	list_for_each_entry_safe(m, tmp, &dt->send_queue, list) {
		struct dmu_req *req;

		if (m->kind != DMU_MSG_MAP)
			continue;
		req = container_of(m, struct dmu_req, msg);
		dmu_req_unlink(req);
		list_add_tail(&req->msg.list, &victims);
	}
	deferred = dt->deferred;
	bio_list_init(&dt->deferred);
	spin_unlock_irq(&dt->lock);

	list_for_each_entry_safe(m, tmp, &victims, list) {
		struct dmu_req *req = container_of(m, struct dmu_req, msg);

		list_del_init(&m->list);
		dmu_end_bio_list(&req->bios, error);
		dmu_req_free(req);
	}
	dmu_end_bio_list(&deferred, error);
	dmu_flush_fail_all(dt, status);
}

/*
 * The bound daemon closed its file (or died).  The next daemon first reads
 * the DONEs no COMMITTED covered, then what this one read but did not
 * answer; I/O waits for it up to daemon_timeout.
 */
void dmu_daemon_gone(struct dmu_target *dt)
{
	bool fail_now, requeue;
	struct dmu_msg *m;

	lockdep_assert_held(&dt->mutex);
	spin_lock_irq(&dt->lock);
	dt->channel = NULL;
	dt->features = 0;
	list_for_each_entry(m, &dt->sent, list) {
		struct dmu_req *req = container_of(m, struct dmu_req, msg);

		req->state = DMU_RS_QUEUED;
		req->resent = true;
		req->nr_msgs = 0;
		atomic64_inc(&dt->c.resent);
	}
	list_splice_init(&dt->sent, &dt->send_queue);
	dmu_done_requeue(dt);
	/*
	 * A COMMIT it did not answer is withdrawn and the cycle starts over
	 * (a fresh device flush, then a fresh COMMIT behind every DONE now
	 * queued), so no COMMIT ever follows a DONE its flush did not cover.
	 */
	if (dt->commit.state != DMU_RS_IDLE) {
		dmu_req_unlink(&dt->commit);
		set_bit(DMU_NEEDS_COMMIT, &dt->flags);
		dt->commit_stage = DMU_CS_WAIT;
		queue_work(dt->wq, &dt->flush_work);
	}
	dt->state = DMU_DAEMON_WAITING;
	requeue = dmu_must_requeue(dt);
	fail_now = dt->dying || !dt->opt.daemon_timeout;
	spin_unlock_irq(&dt->lock);
	dmu_drop_pushes(dt);

	if (requeue) {
		dmu_requeue_parked(dt);
		mod_delayed_work(dt->wq, &dt->timeout_work,
				 (unsigned long)dt->opt.daemon_timeout * HZ);
	} else if (fail_now) {
		if (!dt->dying) {
			spin_lock_irq(&dt->lock);
			dt->state = DMU_DAEMON_TIMED_OUT;
			spin_unlock_irq(&dt->lock);
		}
		dmu_fail_all(dt, BLK_STS_IOERR);
	} else {
		mod_delayed_work(dt->wq, &dt->timeout_work,
				 (unsigned long)dt->opt.daemon_timeout * HZ);
	}
}

/* Start the timeout clock unless it runs already (0: no timeout). */
void dmu_arm_timeout(struct dmu_target *dt)
{
	if (dt->opt.daemon_timeout)
		queue_delayed_work(dt->wq, &dt->timeout_work,
				   (unsigned long)dt->opt.daemon_timeout * HZ);
}

/*
 * A bound daemon must answer each request within daemon_timeout: fail the
 * I/O of those it left unanswered for longer (the daemon stays bound and a
 * late answer counts as bad).  Re-arm for the oldest remaining request.
 */
static void dmu_expire_requests(struct dmu_target *dt)
{
	unsigned long limit = (unsigned long)dt->opt.daemon_timeout * HZ;
	unsigned long now = jiffies, next = 0;
	struct list_head *queues[] = { &dt->sent, &dt->send_queue,
				       &dt->held_maps };
	struct dmu_msg *m, *tmp;
	bool commit = false;
	unsigned int i, n = 0;
	LIST_HEAD(victims);

	lockdep_assert_held(&dt->mutex);
	if (!limit)
		return;
	spin_lock_irq(&dt->lock);
	for (i = 0; i < ARRAY_SIZE(queues); i++) {
		list_for_each_entry_safe(m, tmp, queues[i], list) {
			struct dmu_req *req;

			if (m->kind == DMU_MSG_DONE)
				continue;
			req = container_of(m, struct dmu_req, msg);
			if (time_before(now, req->queued_at + limit)) {
				if (!next || time_before(req->queued_at + limit, next))
					next = req->queued_at + limit;
				continue;
			}
			dmu_req_unlink(req);
			n++;
			if (m->kind == DMU_MSG_COMMIT)
				commit = true;
			else
				list_add_tail(&m->list, &victims);
		}
	}
	/* Expired MAPs made room for held ones. */
	if (n)
		dmu_release_held_maps(dt);
	spin_unlock_irq(&dt->lock);

	if (n) {
		atomic64_inc(&dt->c.timeouts);
		DMWARN("%s: daemon left %u requests unanswered for %u s; failing their I/O",
		       dt->key, n, dt->opt.daemon_timeout);
	}
	list_for_each_entry_safe(m, tmp, &victims, list) {
		struct dmu_req *req = container_of(m, struct dmu_req, msg);

		list_del_init(&m->list);
		dmu_end_bio_list(&req->bios, -EIO);
		dmu_req_free(req);
	}
	if (commit)
		dmu_commit_expired(dt);
	if (next)
		queue_delayed_work(dt->wq, &dt->timeout_work,
				   time_after(next, now) ? next - now : 1);
}

/*
 * The timeout clock ran out.  Unbound: no daemon came back within
 * daemon_timeout, so fail what waits and, until a daemon binds, fail new
 * misses at once (a noflush suspend requeues instead).  Bound: fail
 * requests the daemon sits on for too long.
 */
void dmu_timeout_work(struct work_struct *work)
{
	struct dmu_target *dt = container_of(to_delayed_work(work),
					     struct dmu_target, timeout_work);
	bool expire = false, bound;

	mutex_lock(&dt->mutex);
	spin_lock_irq(&dt->lock);
	bound = dt->state == DMU_DAEMON_BOUND;
	if (!dt->dying && !bound && (dt->parked || dmu_must_requeue(dt))) {
		/*
		 * Nothing waits during a noflush suspend, nor while the device
		 * stays suspended: resume starts the clock again.
		 */
		dmu_arm_timeout(dt);
	} else if (!dt->dying && !bound) {
		/* Before any daemon bound, only I/O that waited counts. */
		expire = dt->state != DMU_DAEMON_ABSENT || dt->nr_pending ||
			 !bio_list_empty(&dt->flush_bios) ||
			 !bio_list_empty(&dt->commit_bios);
		if (expire)
			dt->state = DMU_DAEMON_TIMED_OUT;
	}
	spin_unlock_irq(&dt->lock);
	if (expire) {
		atomic64_inc(&dt->c.timeouts);
		DMWARN("%s: no daemon bound within %u s; failing waiting I/O",
		       dt->key, dt->opt.daemon_timeout);
		dmu_fail_all(dt, BLK_STS_IOERR);
	} else if (bound && !dt->dying) {
		dmu_expire_requests(dt);
	}
	mutex_unlock(&dt->mutex);
}
