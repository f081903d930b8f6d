// SPDX-License-Identifier: GPL-2.0
/*
 * dm-userspace: what happens to I/O waiting for the daemon when the daemon
 * goes away, when it leaves a request unanswered for daemon_timeout, and
 * when a noflush suspend comes while no daemon is bound.  A daemon's death
 * loses nothing: what it read and did not answer is sent to the next one.
 */
#include <linux/blkdev.h>

#include "dmu.h"

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
		/* The next daemon answers it whole, in room of its own. */
		dmu_req_drop_answer(req);
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

/*
 * Start the timeout clock unless it runs already (0: no timeout).  Called
 * with dt->lock or dt->mutex held, under which dying is set: once it is,
 * teardown has cancelled the clock and it must stay so.
 */
void dmu_arm_timeout(struct dmu_target *dt)
{
	if (dt->opt.daemon_timeout && !dt->dying)
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
