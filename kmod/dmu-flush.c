// SPDX-License-Identifier: GPL-2.0
/*
 * dm-userspace flush and FUA: a guest flush (empty REQ_PREFLUSH bio; dm
 * core sends the data of a flush with data separately) or a FUA write
 * completes only after
 *   1. every DONE for writes that completed before it has been queued to
 *      the daemon (trackers older than the cycle's barrier have finished),
 *   2. the data devices written since their last flush were flushed, and
 *   3. the daemon answered a COMMIT with COMMITTED status 0.
 * FUA writes are issued without REQ_FUA (step 2 makes them durable) and
 * their completion is held in end_io (DM_ENDIO_INCOMPLETE) until then.
 *
 * As in dm-thin, flushes are batched: everything that arrives while a
 * cycle is under way waits for the next cycle, which the end of the
 * current one starts.  If nothing was written since the last commit, a
 * cycle completes at once without asking the daemon.
 */
#include <linux/blkdev.h>

#include "dmu.h"

void dmu_flush_defer(struct dmu_target *dt, struct bio *bio)
{
	unsigned long flags;
	bool kick;

	spin_lock_irqsave(&dt->lock, flags);
	if (dmu_must_fail_now(dt)) {
		spin_unlock_irqrestore(&dt->lock, flags);
		bio_io_error(bio);
		return;
	}
	bio_list_add(&dt->flush_bios, bio);
	kick = dt->commit_stage == DMU_CS_IDLE;
	if (dt->state == DMU_DAEMON_ABSENT)
		dmu_arm_timeout(dt);
	spin_unlock_irqrestore(&dt->lock, flags);
	if (kick)
		queue_work(dt->wq, &dt->flush_work);
}

/* End the cycle under way: complete its bios, start the next one. */
static void dmu_commit_done(struct dmu_target *dt, int error)
{
	struct bio_list bios;
	struct bio *bio;
	bool more;

	spin_lock_irq(&dt->lock);
	bios = dt->commit_bios;
	bio_list_init(&dt->commit_bios);
	dt->commit_stage = DMU_CS_IDLE;
	more = !bio_list_empty(&dt->flush_bios);
	spin_unlock_irq(&dt->lock);
	while ((bio = bio_list_pop(&bios)))
		dmu_end_bio(bio, error ? -EIO : 0);
	if (more)
		queue_work(dt->wq, &dt->flush_work);
}

/* The daemon answered the COMMIT (already unlinked). */
void dmu_commit_answered(struct dmu_target *dt, int status)
{
	lockdep_assert_held(&dt->mutex);
	if (status) {
		DMERR_LIMIT("%s: daemon could not commit its metadata: %d; failing flushes",
			    dt->key, status);
		set_bit(DMU_DIRTY, &dt->flags);
	}
	dmu_commit_done(dt, status);
}

static bool dmu_barrier_passed(struct dmu_target *dt)
{
	struct dmu_req *oldest;

	lockdep_assert_held(&dt->lock);
	if (list_empty(&dt->trackers))
		return true;
	oldest = list_first_entry(&dt->trackers, struct dmu_req, tracker);
	return oldest->seq >= dt->commit_barrier;
}

static int dmu_flush_devices(struct dmu_target *dt)
{
	int error = 0, r;
	u32 i;

	for (i = 0; i < dt->nr_devs; i++) {
		if (!test_and_clear_bit(i, &dt->dirty_devs))
			continue;
		r = blkdev_issue_flush(dt->devs[i]->bdev);
		if (r) {
			set_bit(i, &dt->dirty_devs);
			if (!error)
				error = r;
		}
	}
	return error;
}

void dmu_flush_work(struct work_struct *work)
{
	struct dmu_target *dt = container_of(work, struct dmu_target, flush_work);
	struct dmu_req *req = &dt->commit;
	int error;

	spin_lock_irq(&dt->lock);
	if (dt->commit_stage == DMU_CS_IDLE) {
		if (bio_list_empty(&dt->flush_bios))
			goto unlock;
		bio_list_merge(&dt->commit_bios, &dt->flush_bios);
		bio_list_init(&dt->flush_bios);
		dt->commit_barrier = dt->next_seq;
		dt->commit_stage = DMU_CS_WAIT;
	}
	if (dt->commit_stage != DMU_CS_WAIT || !dmu_barrier_passed(dt))
		goto unlock;
	dt->commit_stage = DMU_CS_FLUSHING;
	spin_unlock_irq(&dt->lock);

	if (!test_and_clear_bit(DMU_DIRTY, &dt->flags)) {
		dmu_commit_done(dt, 0);
		return;
	}
	error = dmu_flush_devices(dt);
	if (error) {
		DMERR_LIMIT("%s: flushing a data device failed: %d", dt->key, error);
		set_bit(DMU_DIRTY, &dt->flags);
		dmu_commit_done(dt, error);
		return;
	}

	spin_lock_irq(&dt->lock);
	if (dt->commit_stage != DMU_CS_FLUSHING)
		goto unlock;	/* failed meanwhile by dmu_flush_fail_all() */
	if (dmu_must_fail_now(dt)) {
		spin_unlock_irq(&dt->lock);
		set_bit(DMU_DIRTY, &dt->flags);
		dmu_commit_done(dt, -EIO);
		return;
	}
	req->kind = DMU_RQ_COMMIT;
	req->id = ++dt->next_id;
	req->state = DMU_RS_QUEUED;
	req->resent = false;
	req->queued_at = jiffies;
	dmu_arm_timeout(dt);
	hash_add(dt->ids, &req->hash, req->id);
	list_add_tail(&req->list, &dt->send_queue);
	dt->nr_pending++;
	dt->commit_stage = DMU_CS_SENT;
	dmu_wake_daemon(dt);
unlock:
	spin_unlock_irq(&dt->lock);
}

/* The daemon did not answer the COMMIT in time: fail this cycle. */
void dmu_commit_expired(struct dmu_target *dt)
{
	lockdep_assert_held(&dt->mutex);
	set_bit(DMU_DIRTY, &dt->flags);
	dmu_commit_done(dt, -ETIMEDOUT);
}

/* Fail every waiting flush and the cycle under way (no daemon to commit). */
void dmu_flush_fail_all(struct dmu_target *dt, blk_status_t status)
{
	struct bio_list bios = BIO_EMPTY_LIST;
	struct bio *bio;

	spin_lock_irq(&dt->lock);
	if (dt->commit.state != DMU_RS_IDLE) {
		dmu_req_unlink(&dt->commit);
		set_bit(DMU_DIRTY, &dt->flags);
	}
	bio_list_merge(&bios, &dt->commit_bios);
	bio_list_merge(&bios, &dt->flush_bios);
	bio_list_init(&dt->commit_bios);
	bio_list_init(&dt->flush_bios);
	dt->commit_stage = DMU_CS_IDLE;
	spin_unlock_irq(&dt->lock);
	while ((bio = bio_list_pop(&bios))) {
		bio->bi_status = status;
		bio_endio(bio);
	}
}
