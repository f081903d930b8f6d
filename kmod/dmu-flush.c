// SPDX-License-Identifier: GPL-2.0
/*
 * dm-userspace flush and FUA: a guest flush (empty REQ_PREFLUSH bio; dm
 * core sends the data of a flush with data separately) or a FUA write
 * completes only after
 *   1. every DONE for writes that completed before it has been queued to
 *      the daemon (trackers older than the cycle's barrier have retired),
 *   2. every data device that a write or fill *completed* on since that
 *      device's last flush was flushed, and
 *   3. if any DONE was queued since the last COMMIT, the daemon answered a
 *      COMMIT with COMMITTED status 0 (an error fails them with EIO).
 * A device is marked dirty when a write to it completes (end_io, the end
 * of a fill), never when it is submitted: a write submitted before a cycle
 * and completed after that cycle's device flush marks its device again,
 * so the next flush covers it, whatever runs concurrently.
 *
 * FUA writes are issued without REQ_FUA (step 2 makes them durable) and
 * their completion is held in end_io (DM_ENDIO_INCOMPLETE) until then.
 *
 * As in dm-thin, flushes are batched: everything that arrives while a
 * cycle is under way waits for the next cycle, which the end of the
 * current one starts.  The kernel also starts a cycle of its own when too
 * many allocation records wait to be published (a checkpoint).
 */
#include <linux/blkdev.h>

#include "dmu.h"

/*
 * Queue a flush (from map()) or a written FUA write for the next cycle.
 * Returns false, without queueing, when dm core should requeue it; the
 * caller completes it then, as callers in end_io must not complete their
 * own bio.  A cycle that needs no COMMIT completes without a daemon; one
 * that does waits for one as any request does.
 */
static bool dmu_commit_defer(struct dmu_target *dt, struct bio *bio,
			     bool written)
{
	unsigned long flags;
	bool requeue, kick;

	spin_lock_irqsave(&dt->lock, flags);
	requeue = written ? dmu_must_requeue(dt) : dmu_handing_back(dt);
	if (requeue) {
		spin_unlock_irqrestore(&dt->lock, flags);
		return false;
	}
	bio_list_add(&dt->flush_bios, bio);
	kick = dt->commit_stage == DMU_CS_IDLE;
	if (dt->state == DMU_DAEMON_ABSENT)
		dmu_arm_timeout(dt);
	spin_unlock_irqrestore(&dt->lock, flags);
	if (kick)
		queue_work(dt->wq, &dt->flush_work);
	return true;
}

/*
 * A flush from map().  During a noflush suspend it goes back to dm core:
 * its COMMIT may never come, from a daemon that is gone or cannot commit.
 * dm core decides on a requeue from map() before the suspend waits, so
 * always while it is noflush suspending.
 */
bool dmu_flush_defer(struct dmu_target *dt, struct bio *bio)
{
	return dmu_commit_defer(dt, bio, false);
}

/*
 * A FUA write, written, waits for the next cycle.  dm core decides on a
 * requeue from completion, which may be after an interrupted suspend
 * stopped noflush suspending (a split bio's second stage runs later still),
 * and the requeue turns into EIO, which a journal would not survive.  So
 * one goes back only with no daemon (waiting would end in EIO after
 * daemon_timeout anyway); with a daemon bound it waits like a MAP the
 * daemon has, failing only if the daemon does not answer.  presuspend
 * hands back the FUA writes already waiting (dm core drains their second
 * stage before it waits), and map() those not yet written
 * (dmu_fua_must_requeue).
 */
bool dmu_fua_defer(struct dmu_target *dt, struct bio *bio)
{
	return dmu_commit_defer(dt, bio, true);
}

/* map(): whether a FUA write goes back to dm core before it is written. */
bool dmu_fua_must_requeue(struct dmu_target *dt)
{
	unsigned long flags;
	bool requeue;

	spin_lock_irqsave(&dt->lock, flags);
	requeue = dmu_handing_back(dt);
	spin_unlock_irqrestore(&dt->lock, flags);
	return requeue;
}

/*
 * End the cycle under way: complete its bios, release held MAPs there is
 * room for, start the next cycle.  MAPs still held may need one more
 * COMMIT: at once after a cycle that worked, a second later after one that
 * failed (a daemon that cannot commit would otherwise be asked in a tight
 * loop).
 */
static void dmu_commit_done(struct dmu_target *dt, int error)
{
	struct bio_list bios;
	bool more, retry = false;
	struct bio *bio;

	spin_lock_irq(&dt->lock);
	bios = dt->commit_bios;
	bio_list_init(&dt->commit_bios);
	dt->commit_stage = DMU_CS_IDLE;
	dmu_release_held_maps(dt);
	/*
	 * No retry when nobody can commit (dmu_fail_all comes) or when a
	 * daemon must bind first (its BIND asks).  Queued under dt->lock,
	 * where dying is read: teardown cancels it after setting dying.
	 * After a cycle that worked, the next only if it has something to
	 * publish (trackers retired or still to retire since this one
	 * began); room the daemon's answers make releases MAPs by itself.
	 */
	if (dt->nr_held && error && !dt->dying && !dmu_must_fail_now(dt)) {
		retry = true;
		queue_delayed_work(dt->wq, &dt->retry_work, HZ);
	} else if (dt->nr_held && !error && !dt->dying &&
		   (test_bit(DMU_NEEDS_COMMIT, &dt->flags) ||
		    !list_empty(&dt->inflight))) {
		dt->checkpoint = true;
	}
	more = !bio_list_empty(&dt->flush_bios) || (dt->checkpoint && !retry);
	spin_unlock_irq(&dt->lock);
	while ((bio = bio_list_pop(&bios)))
		dmu_end_bio(bio, error ? -EIO : 0);
	if (more)
		queue_work(dt->wq, &dt->flush_work);
}

/* A cycle failed while MAPs are held: ask for a commit again. */
void dmu_retry_work(struct work_struct *work)
{
	struct dmu_target *dt = container_of(to_delayed_work(work),
					     struct dmu_target, retry_work);

	spin_lock_irq(&dt->lock);
	if (dt->nr_held && !dt->dying) {
		dt->checkpoint = true;
		if (dt->commit_stage == DMU_CS_IDLE)
			queue_work(dt->wq, &dt->flush_work);
	}
	spin_unlock_irq(&dt->lock);
}

/* The daemon answered the COMMIT (already unlinked). */
void dmu_commit_answered(struct dmu_target *dt, int status)
{
	lockdep_assert_held(&dt->mutex);
	if (status)
		DMERR_LIMIT("%s: daemon could not commit its metadata: %d; failing flushes",
			    dt->key, status);
	dmu_commit_outcome(dt, !status);
	dmu_commit_done(dt, status);
}

static bool dmu_barrier_passed(struct dmu_target *dt)
{
	struct dmu_tracker *oldest;

	lockdep_assert_held(&dt->lock);
	if (list_empty(&dt->inflight))
		return true;
	oldest = list_first_entry(&dt->inflight, struct dmu_tracker, inflight);
	return oldest->seq >= dt->commit_barrier;
}

static int dmu_flush_devices(struct dmu_target *dt)
{
	int error = 0, r;
	u32 i;

	for (i = 0; i < dt->nr_devs; i++) {
		if (!test_and_clear_bit(i, dt->dirty_devs))
			continue;
		r = blkdev_issue_flush(dt->bdev[i]);
		if (r) {
			set_bit(i, dt->dirty_devs);
			if (!error)
				error = r;
		}
	}
	return error;
}

/* DONEs held back during the device flush join the queue (dt->lock). */
static void dmu_release_held(struct dmu_target *dt)
{
	lockdep_assert_held(&dt->lock);
	if (list_empty(&dt->done_held))
		return;
	list_splice_tail_init(&dt->done_held, &dt->send_queue);
	dmu_wake_daemon(dt);
}

/*
 * The cycle: wait for the barrier, flush the dirty devices, then ask for
 * a COMMIT.  DONEs of trackers that retire once the devices are being
 * flushed may describe data this flush does not cover: they are held back
 * (dt->done_held) and queued behind the COMMIT, so the daemon never reads
 * them before it, and the next cycle commits them.
 */
void dmu_flush_work(struct work_struct *work)
{
	struct dmu_target *dt = container_of(work, struct dmu_target, flush_work);
	struct dmu_req *req = &dt->commit;
	bool commit;
	int error;

	spin_lock_irq(&dt->lock);
	if (dt->commit_stage == DMU_CS_IDLE) {
		if (bio_list_empty(&dt->flush_bios) && !dt->checkpoint)
			goto unlock;
		bio_list_merge(&dt->commit_bios, &dt->flush_bios);
		bio_list_init(&dt->flush_bios);
		dt->checkpoint = false;
		dt->commit_barrier = dt->next_seq;
		dt->commit_stage = DMU_CS_WAIT;
		atomic64_inc(&dt->c.cycles);
	}
	if (dt->commit_stage != DMU_CS_WAIT || !dmu_barrier_passed(dt))
		goto unlock;
	dt->commit_stage = DMU_CS_FLUSHING;
	commit = test_and_clear_bit(DMU_NEEDS_COMMIT, &dt->flags);
	spin_unlock_irq(&dt->lock);

	error = dmu_flush_devices(dt);

	spin_lock_irq(&dt->lock);
	if (dt->commit_stage != DMU_CS_FLUSHING) {
		/* failed meanwhile by dmu_flush_fail_all() */
		if (commit)
			set_bit(DMU_NEEDS_COMMIT, &dt->flags);
		dmu_release_held(dt);
		goto unlock;
	}
	if (error || !commit || dmu_must_fail_now(dt)) {
		if (commit)
			set_bit(DMU_NEEDS_COMMIT, &dt->flags);
		dmu_release_held(dt);
		spin_unlock_irq(&dt->lock);
		if (error)
			DMERR_LIMIT("%s: flushing a data device failed: %d",
				    dt->key, error);
		else if (commit)
			error = -EIO;	/* nobody can commit */
		dmu_commit_done(dt, error);
		return;
	}
	req->id = dmu_new_id();
	req->state = DMU_RS_QUEUED;
	req->resent = false;
	req->queued_at = jiffies;
	dmu_arm_timeout(dt);
	hash_add(dt->ids, &req->hash, req->id);
	list_add_tail(&req->msg.list, &dt->send_queue);
	dt->nr_pending++;
	dt->commit_stage = DMU_CS_SENT;
	dmu_wake_daemon(dt);
	dmu_release_held(dt);
unlock:
	spin_unlock_irq(&dt->lock);
}

/* The daemon did not answer the COMMIT in time: fail this cycle. */
void dmu_commit_expired(struct dmu_target *dt)
{
	lockdep_assert_held(&dt->mutex);
	dmu_commit_outcome(dt, false);
	dmu_commit_done(dt, -ETIMEDOUT);
}

/* Take every waiting flush and held FUA write off the lists. */
static void dmu_flush_take_all(struct dmu_target *dt, struct bio_list *bios)
{
	lockdep_assert_held(&dt->lock);
	bio_list_merge(bios, &dt->commit_bios);
	bio_list_merge(bios, &dt->flush_bios);
	bio_list_init(&dt->commit_bios);
	bio_list_init(&dt->flush_bios);
}

/* Fail every waiting flush and the cycle under way (no daemon to commit). */
void dmu_flush_fail_all(struct dmu_target *dt, blk_status_t status)
{
	struct bio_list bios = BIO_EMPTY_LIST;
	bool unlinked = false;
	struct bio *bio;

	spin_lock_irq(&dt->lock);
	if (dt->commit.state != DMU_RS_IDLE) {
		dmu_req_unlink(&dt->commit);
		unlinked = true;
	}
	dmu_release_held(dt);
	dmu_flush_take_all(dt, &bios);
	dt->commit_stage = DMU_CS_IDLE;
	dt->checkpoint = false;
	spin_unlock_irq(&dt->lock);
	if (unlinked)
		dmu_commit_outcome(dt, false);
	while ((bio = bio_list_pop(&bios))) {
		bio->bi_status = status;
		bio_endio(bio);
	}
}

/*
 * A noflush suspend: hand the flushes (and held FUA writes, which dm core
 * then writes again) back to dm core.  A cycle under way goes on without
 * them; they complete after resume, in a cycle that covers them.
 */
void dmu_flush_requeue(struct dmu_target *dt)
{
	struct bio_list bios = BIO_EMPTY_LIST;
	struct bio *bio;

	spin_lock_irq(&dt->lock);
	dmu_flush_take_all(dt, &bios);
	spin_unlock_irq(&dt->lock);
	while ((bio = bio_list_pop(&bios)))
		dmu_requeue_bio(dt, bio);
}
