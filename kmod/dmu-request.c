// SPDX-License-Identifier: GPL-2.0
/*
 * dm-userspace requests: routing a bio through the cache, parking it on a
 * MAP request when the cache cannot map it, trackers that turn into DONE
 * messages, and what happens to waiting I/O when the daemon goes away or
 * the wait times out.
 *
 * A parked bio always lies inside one block (map() cuts it at the block
 * boundary), so when it is driven through the cache again it is either
 * mapped whole by one extent or needs exactly one block.
 */
#include <linux/blkdev.h>
#include <linux/slab.h>

#include "dmu.h"

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

struct dmu_req *dmu_req_alloc(struct dmu_target *dt, gfp_t gfp)
{
	struct dmu_req *req = mempool_alloc(&dt->req_pool, gfp);

	if (!req)
		return NULL;
	memset(req, 0, sizeof(*req));
	INIT_LIST_HEAD(&req->list);
	INIT_LIST_HEAD(&req->pending);
	INIT_LIST_HEAD(&req->tracker);
	INIT_HLIST_NODE(&req->hash);
	req->dt = dt;
	return req;
}

/* Frees a request that is on no list (the embedded COMMIT is never freed). */
void dmu_req_free(struct dmu_req *req)
{
	kfree(req->msgs);
	kfree(req->new_ext);
	if (req != &req->dt->commit)
		mempool_free(req, &req->dt->req_pool);
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
	list_del_init(&req->pending);
	list_del_init(&req->list);
	req->dt->nr_pending--;
	req->state = DMU_RS_IDLE;
}

/* Called with dt->lock held: I/O that needs the daemon fails at once. */
bool dmu_must_fail_now(struct dmu_target *dt)
{
	lockdep_assert_held(&dt->lock);
	if (dt->dying || dt->state == DMU_DAEMON_TIMED_OUT)
		return true;
	return dt->state != DMU_DAEMON_BOUND &&
	       (dt->suspending || !dt->daemon_timeout);
}

void dmu_wake_daemon(struct dmu_target *dt)
{
	lockdep_assert_held(&dt->lock);
	if (dt->channel)
		dmu_channel_wake(dt->channel);
}

static struct dmu_req *dmu_find_pending(struct dmu_target *dt, u64 block,
					 bool write)
{
	struct dmu_req *req;

	lockdep_assert_held(&dt->lock);
	list_for_each_entry(req, &dt->pending_maps, pending) {
		if (req->map_flags & DMU_MAP_DISCARD)
			continue;
		if (write && !(req->map_flags & DMU_MAP_WRITE))
			continue;
		if (block >= req->block && block - req->block < req->nr_blocks)
			return req;
	}
	return NULL;
}

/*
 * Park a bio on the MAP request for [block, block + nr_blocks), creating
 * and sending one unless a pending request already covers the bio's block
 * (then the pieces of one large bio make one request).  A read or write bio
 * lies inside one block; nr_blocks is how many blocks the original bio
 * touched, a hint that lets the daemon answer a large bio with one extent.
 * A discard always gets a request of its own.
 */
void dmu_queue_request(struct dmu_target *dt, struct bio *bio, u64 block,
		       u64 nr_blocks, u32 map_flags, bool can_sleep)
{
	struct dmu_req *req = NULL, *fresh = NULL;
	unsigned long flags;

	for (;;) {
		spin_lock_irqsave(&dt->lock, flags);
		if (dmu_must_fail_now(dt)) {
			spin_unlock_irqrestore(&dt->lock, flags);
			if (fresh)
				dmu_req_free(fresh);
			bio_io_error(bio);
			return;
		}
		if (!(map_flags & DMU_MAP_DISCARD))
			req = dmu_find_pending(dt, block,
					       map_flags & DMU_MAP_WRITE);
		if (req || fresh)
			break;
		spin_unlock_irqrestore(&dt->lock, flags);

		fresh = dmu_req_alloc(dt, can_sleep ? GFP_NOIO : GFP_NOWAIT);
		if (!fresh) {
			/* map() must not sleep: let the worker allocate. */
			spin_lock_irqsave(&dt->lock, flags);
			bio_list_add(&dt->deferred, bio);
			spin_unlock_irqrestore(&dt->lock, flags);
			queue_work(dt->wq, &dt->deferred_work);
			return;
		}
	}
	if (!req) {
		req = fresh;
		fresh = NULL;
		req->kind = DMU_RQ_MAP;
		req->id = ++dt->next_id;
		req->block = block;
		req->nr_blocks = min(nr_blocks, dt->target_blocks - block);
		req->map_flags = map_flags;
		req->state = DMU_RS_QUEUED;
		hash_add(dt->ids, &req->hash, req->id);
		list_add(&req->pending, &dt->pending_maps);
		list_add_tail(&req->list, &dt->send_queue);
		dt->nr_pending++;
		req->queued_at = jiffies;
		atomic64_inc(&dt->c.requests);
		dmu_arm_timeout(dt);
		dmu_wake_daemon(dt);
	}
	bio_list_add(&req->bios, bio);
	spin_unlock_irqrestore(&dt->lock, flags);
	if (fresh)
		dmu_req_free(fresh);
}

/*
 * Route one bio through the cache.
 *
 * From map() (DMU_ROUTE_MAP, origin NULL): a hit is remapped and DM_MAPIO_REMAPPED
 * returned, after shortening the bio to the extent with
 * dm_accept_partial_bio(); a miss is shortened to its block and parked.
 *
 * Otherwise the bio lies inside one block and is submitted here.  origin
 * is the request whose answer (or fill) re-drives it: a write that hits is
 * tracked by origin when origin reports DONE, and with DMU_ROUTE_ANSWER a
 * bio in origin's first block that the answer did not cover fails (the
 * answer was bad).
 */
int dmu_map_bio(struct dmu_target *dt, struct bio *bio, enum dmu_route how,
		struct dmu_req *origin)
{
	bool in_map = how == DMU_ROUTE_MAP;
	struct dmu_cache *cache = &dt->cache;
	sector_t offset = dm_target_offset(dt->ti, bio->bi_iter.bi_sector);
	sector_t len = bio_sectors(bio);
	u64 block = dmu_block_of(dt, offset);
	u64 span = dmu_block_of(dt, offset + len - 1) - block + 1;
	bool write = op_is_write(bio_op(bio));
	struct block_device *bdev;
	struct dmu_extent *e;
	unsigned long flags;
	sector_t sector, limit;
	u32 dev;

	spin_lock_irqsave(&cache->lock, flags);
	e = dmu_cache_find(cache, block);
	if (e && !(e->state & DMU_EXTENT_BUSY) &&
	    (!write || (e->kind == DMU_EXT_REMAP &&
			(e->ext_flags & DMU_EXT_WRITABLE)))) {
		limit = dmu_block_start(dt, e->block + e->nr_blocks) - offset;
		if (in_map && len > limit)
			dm_accept_partial_bio(bio, limit);
		e->referenced = 1;
		if ((e->state & (DMU_EXTENT_PUSHED | DMU_EXTENT_USED)) ==
		    DMU_EXTENT_PUSHED)
			atomic64_inc(&dt->c.pushed_used);
		e->state |= DMU_EXTENT_USED;
		if (e->kind == DMU_EXT_ZERO) {
			spin_unlock_irqrestore(&cache->lock, flags);
			if (in_map)
				atomic64_inc(&dt->c.hits);
			atomic64_inc(&dt->c.zero_reads);
			zero_fill_bio(bio);
			bio_endio(bio);
			return DM_MAPIO_SUBMITTED;
		}
		dev = e->dev;
		sector = e->sector + (offset - dmu_block_start(dt, e->block));
		spin_unlock_irqrestore(&cache->lock, flags);

		bdev = dt->devs[dev]->bdev;
		if (write)
			dmu_mark_dirty(dt, dev);
		bio_set_dev(bio, bdev);
		bio->bi_iter.bi_sector = sector;
		if (in_map) {
			atomic64_inc(&dt->c.hits);
			return DM_MAPIO_REMAPPED;
		}
		if (write && origin && origin->needs_done) {
			dmu_pb(bio)->tracker = origin;
			atomic_inc(&origin->io_pending);
		}
		dm_submit_bio_remap(bio, NULL);
		return DM_MAPIO_SUBMITTED;
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

	if (how == DMU_ROUTE_ANSWER && block == origin->block) {
		if (!origin->error) {
			atomic64_inc(&dt->c.bad);
			DMERR_LIMIT("%s: answer to request %llu does not cover its first block %llu for %s",
				    dt->key, origin->id, block, write ? "writing" : "reading");
			origin->error = -EIO;
		}
		bio_io_error(bio);
		return DM_MAPIO_SUBMITTED;
	}
	atomic64_inc(&dt->c.misses);
	/*
	 * Only the deferral worker may sleep for a request: the daemon's
	 * write() holds dt->mutex, and the pool refills when it answers.
	 */
	dmu_queue_request(dt, bio, block, span, write ? DMU_MAP_WRITE : 0,
			  how == DMU_ROUTE_DEFERRED);
	return DM_MAPIO_SUBMITTED;
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
	while ((bio = bio_list_pop(&bios)))
		dmu_map_bio(dt, bio, DMU_ROUTE_DEFERRED, NULL);
}

void dmu_set_error(struct dmu_req *req, int error)
{
	if (error)
		cmpxchg(&req->error, 0, error);
}

/*
 * An answered request that must report DONE becomes a tracker: it is
 * ordered against flushes by seq and reports once io_pending drops to 0.
 * The caller holds the initial reference and drops it with
 * dmu_tracker_put() when it has started everything.
 */
void dmu_tracker_start(struct dmu_req *req)
{
	struct dmu_target *dt = req->dt;

	lockdep_assert_held(&dt->mutex);
	req->state = DMU_RS_TRACKING;
	atomic_set(&req->io_pending, 1);
	spin_lock_irq(&dt->lock);
	req->seq = dt->next_seq++;
	list_add_tail(&req->tracker, &dt->trackers);
	dt->nr_trackers++;
	if (req->kind == DMU_RQ_PUSH)
		dt->nr_push_trackers++;
	spin_unlock_irq(&dt->lock);
	set_bit(DMU_DIRTY, &dt->flags);
}

/* Drop a tracker reference; the last one queues the DONE message. */
void dmu_tracker_put(struct dmu_req *req, int error)
{
	struct dmu_target *dt = req->dt;
	unsigned long flags;

	dmu_set_error(req, error);
	if (!atomic_dec_and_test(&req->io_pending))
		return;

	spin_lock_irqsave(&dt->lock, flags);
	list_del_init(&req->tracker);
	dt->nr_trackers--;
	if (req->kind == DMU_RQ_PUSH)
		dt->nr_push_trackers--;
	if (dt->dying || dt->state == DMU_DAEMON_TIMED_OUT) {
		dmu_req_free(req);
	} else {
		req->kind = DMU_RQ_DONE;
		req->state = DMU_RS_QUEUED;
		list_add_tail(&req->list, &dt->send_queue);
		dmu_wake_daemon(dt);
	}
	/* A commit may be waiting for older trackers. */
	if (dt->commit_stage == DMU_CS_WAIT)
		queue_work(dt->wq, &dt->flush_work);
	wake_up(&dt->drain_wait);
	spin_unlock_irqrestore(&dt->lock, flags);
}

/*
 * Fail an unlinked MAP request's bios.  A write request that was answered
 * (needs_done) still reports DONE with the error, so that the daemon can
 * forget what it allocated for it.
 */
void dmu_req_fail(struct dmu_req *req, int error)
{
	lockdep_assert_held(&req->dt->mutex);
	dmu_end_bio_list(&req->bios, error);
	if (req->needs_done) {
		dmu_tracker_start(req);
		dmu_tracker_put(req, error);
	} else {
		dmu_req_free(req);
	}
}

/*
 * Fail every MAP request and every flush that waits for a daemon.  DONE
 * messages stay queued for the next daemon unless nobody can read them.
 */
void dmu_fail_all(struct dmu_target *dt, blk_status_t status)
{
	int error = blk_status_to_errno(status);
	struct dmu_req *req, *tmp;
	struct bio_list deferred;
	LIST_HEAD(victims);
	LIST_HEAD(dones);

	lockdep_assert_held(&dt->mutex);
	spin_lock_irq(&dt->lock);
	list_splice_tail_init(&dt->sent, &dt->send_queue);
	list_for_each_entry_safe(req, tmp, &dt->send_queue, list) {
		if (req->kind == DMU_RQ_MAP) {
			dmu_req_unlink(req);
			list_add_tail(&req->list, &victims);
		} else if (req->kind == DMU_RQ_DONE &&
			   (dt->dying || dt->state == DMU_DAEMON_TIMED_OUT)) {
			list_move_tail(&req->list, &dones);
		}
	}
	deferred = dt->deferred;
	bio_list_init(&dt->deferred);
	spin_unlock_irq(&dt->lock);

	list_for_each_entry_safe(req, tmp, &victims, list) {
		list_del_init(&req->list);
		req->needs_done = false;
		dmu_req_fail(req, error);
	}
	list_for_each_entry_safe(req, tmp, &dones, list) {
		list_del_init(&req->list);
		dmu_req_free(req);
	}
	dmu_end_bio_list(&deferred, error);
	dmu_flush_fail_all(dt, status);
}

/*
 * The bound daemon closed its file (or died).  What it read but did not
 * answer goes back to the front of the queue for the next daemon; I/O
 * waits for one up to daemon_timeout.
 */
void dmu_daemon_gone(struct dmu_target *dt)
{
	struct dmu_req *req;
	bool fail_now;

	lockdep_assert_held(&dt->mutex);
	spin_lock_irq(&dt->lock);
	dt->channel = NULL;
	dt->features = 0;
	list_for_each_entry(req, &dt->sent, list) {
		req->state = DMU_RS_QUEUED;
		req->resent = true;
		req->nr_msgs = 0;
		atomic64_inc(&dt->c.resent);
	}
	list_splice_init(&dt->sent, &dt->send_queue);
	dt->state = DMU_DAEMON_WAITING;
	fail_now = dt->suspending || dt->dying || !dt->daemon_timeout;
	spin_unlock_irq(&dt->lock);
	dmu_drop_pushes(dt);

	if (fail_now) {
		if (!dt->suspending && !dt->dying) {
			spin_lock_irq(&dt->lock);
			dt->state = DMU_DAEMON_TIMED_OUT;
			spin_unlock_irq(&dt->lock);
		}
		dmu_fail_all(dt, BLK_STS_IOERR);
	} else {
		mod_delayed_work(dt->wq, &dt->timeout_work,
				 (unsigned long)dt->daemon_timeout * HZ);
	}
}

/* Start the timeout clock unless it runs already (0: no timeout). */
void dmu_arm_timeout(struct dmu_target *dt)
{
	if (dt->daemon_timeout)
		queue_delayed_work(dt->wq, &dt->timeout_work,
				   (unsigned long)dt->daemon_timeout * HZ);
}

/*
 * A bound daemon must answer each request within daemon_timeout: fail the
 * I/O of those it left unanswered for longer (the daemon stays bound and a
 * late answer counts as bad).  Re-arm for the oldest remaining request.
 */
static void dmu_expire_requests(struct dmu_target *dt)
{
	unsigned long limit = (unsigned long)dt->daemon_timeout * HZ;
	unsigned long now = jiffies, next = 0;
	struct dmu_req *req, *tmp;
	bool commit = false;
	LIST_HEAD(victims);
	struct list_head *queues[] = { &dt->sent, &dt->send_queue };
	unsigned int i, n = 0;

	lockdep_assert_held(&dt->mutex);
	spin_lock_irq(&dt->lock);
	for (i = 0; i < ARRAY_SIZE(queues); i++) {
		list_for_each_entry_safe(req, tmp, queues[i], list) {
			if (req->kind == DMU_RQ_DONE)
				continue;
			if (time_before(now, req->queued_at + limit)) {
				if (!next || time_before(req->queued_at + limit, next))
					next = req->queued_at + limit;
				continue;
			}
			dmu_req_unlink(req);
			n++;
			if (req->kind == DMU_RQ_COMMIT)
				commit = true;
			else
				list_add_tail(&req->list, &victims);
		}
	}
	spin_unlock_irq(&dt->lock);

	if (n) {
		atomic64_inc(&dt->c.timeouts);
		DMWARN("%s: daemon left %u requests unanswered for %u s; failing their I/O",
		       dt->key, n, dt->daemon_timeout);
	}
	list_for_each_entry_safe(req, tmp, &victims, list) {
		list_del_init(&req->list);
		dmu_req_fail(req, -EIO);
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
 * misses at once.  Bound: fail requests the daemon sits on for too long.
 */
void dmu_timeout_work(struct work_struct *work)
{
	struct dmu_target *dt = container_of(to_delayed_work(work),
					     struct dmu_target, timeout_work);
	bool expire = false, bound;

	mutex_lock(&dt->mutex);
	spin_lock_irq(&dt->lock);
	bound = dt->state == DMU_DAEMON_BOUND;
	if (!dt->dying && !bound) {
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
		       dt->key, dt->daemon_timeout);
		dmu_fail_all(dt, BLK_STS_IOERR);
	} else if (bound && !dt->dying) {
		dmu_expire_requests(dt);
	}
	mutex_unlock(&dt->mutex);
}
