// SPDX-License-Identifier: GPL-2.0
/*
 * dm-userspace trackers: applied answers that report DONE, and the
 * allocation records a restarted daemon rebuilds its state from.
 *
 * Life of a tracker:
 *   started  (dmu_tracker_start, under dt->mutex while the answer is
 *            applied): gets the next seq, joins dt->inflight, and, if it
 *            carries NEW extents or is a discard, dt->records;
 *   retired  (its last io_pending reference is dropped: fills, its writes,
 *            a discard's drain): leaves dt->inflight and queues its DONE.
 *            A discard retires only after every older tracker did, so a
 *            daemon sees DONEs of allocations made before a discard first;
 *   read     (the daemon read the DONE): dt->done_read;
 *   covered  (a COMMIT was read after it): dt->done_covered;
 *   published (that COMMIT was answered COMMITTED 0): freed.
 * A failed or unanswered COMMIT puts covered DONEs back on done_read; a
 * daemon that goes away puts read and covered DONEs back at the head of
 * send_queue, in their order, for the next daemon (dmu_done_requeue).
 * So nothing the old daemon was told, or should have been told, is lost.
 * Past a quarter of dmu_unpublished_limit() unpublished trackers the kernel
 * asks for a COMMIT of its own; new MAPs wait once those and the MAPs out
 * with the daemon reach the limit (dmu_must_hold).
 *
 * All lists are under dt->lock; io_pending is atomic.
 */
#include <linux/slab.h>

#include "dmu.h"

struct dmu_tracker *dmu_tracker_alloc(struct dmu_target *dt,
				      enum dmu_tracker_kind kind, u64 id,
				      unsigned int nr_allocs)
{
	struct dmu_tracker *tk = kmem_cache_zalloc(dmu_tracker_slab, GFP_NOIO);

	if (!tk)
		return NULL;
	if (nr_allocs) {
		tk->allocs = kcalloc(nr_allocs, sizeof(*tk->allocs), GFP_NOIO);
		if (!tk->allocs) {
			kmem_cache_free(dmu_tracker_slab, tk);
			return NULL;
		}
	}
	INIT_LIST_HEAD(&tk->msg.list);
	INIT_LIST_HEAD(&tk->inflight);
	INIT_LIST_HEAD(&tk->record);
	tk->msg.kind = DMU_MSG_DONE;
	tk->dt = dt;
	tk->kind = kind;
	tk->id = id;
	return tk;
}

void dmu_tracker_free(struct dmu_tracker *tk)
{
	kfree(tk->allocs);
	kfree(tk->new_ext);
	kfree(tk->copies);
	kfree(tk->passdown);
	kmem_cache_free(dmu_tracker_slab, tk);
}

/*
 * The caller holds the initial io_pending reference and drops it with
 * dmu_tracker_put() once it has started everything.
 */
void dmu_tracker_start(struct dmu_tracker *tk)
{
	struct dmu_target *dt = tk->dt;

	lockdep_assert_held(&dt->mutex);
	atomic_set(&tk->io_pending, 1);
	spin_lock_irq(&dt->lock);
	tk->seq = dt->next_seq++;
	list_add_tail(&tk->inflight, &dt->inflight);
	dt->nr_inflight++;
	dt->nr_unpublished++;
	if (tk->kind == DMU_TK_PUSH)
		dt->nr_push_inflight++;
	/* A failed discard changed nothing: no record. */
	if (tk->nr_allocs || (tk->kind == DMU_TK_DISCARD && !tk->error)) {
		list_add_tail(&tk->record, &dt->records);
		dt->nr_records++;
	}
	spin_unlock_irq(&dt->lock);
}

void dmu_set_error(struct dmu_tracker *tk, int error)
{
	if (error)
		cmpxchg(&tk->error, 0, error);
}

/* Queue tk's DONE; its discard bios go to *ended. */
static void dmu_retire(struct dmu_target *dt, struct dmu_tracker *tk,
		       struct bio_list *ended)
{
	struct bio *bio;

	lockdep_assert_held(&dt->lock);
	list_del_init(&tk->inflight);
	dt->nr_inflight--;
	if (tk->kind == DMU_TK_PUSH)
		dt->nr_push_inflight--;
	while ((bio = bio_list_pop(&tk->discard_bios))) {
		bio->bi_status = errno_to_blk_status(tk->error);
		bio_list_add(ended, bio);
	}
	set_bit(DMU_NEEDS_COMMIT, &dt->flags);
	/* Not before the COMMIT of a flush that may not cover its data. */
	if (dt->commit_stage == DMU_CS_FLUSHING) {
		list_add_tail(&tk->msg.list, &dt->done_held);
		return;
	}
	list_add_tail(&tk->msg.list, &dt->send_queue);
	dmu_wake_daemon(dt);
}

static bool dmu_waits_for_older(struct dmu_tracker *tk)
{
	return tk->kind == DMU_TK_DISCARD;
}

/* Drop a reference; the last one retires the tracker (maybe later). */
void dmu_tracker_put(struct dmu_tracker *tk, int error)
{
	struct dmu_target *dt = tk->dt;
	struct bio_list ended = BIO_EMPTY_LIST;
	struct dmu_tracker *first;
	unsigned long flags;
	struct bio *bio;

	dmu_set_error(tk, error);
	if (!atomic_dec_and_test(&tk->io_pending))
		return;

	spin_lock_irqsave(&dt->lock, flags);
	tk->io_done = true;
	if (!dmu_waits_for_older(tk))
		dmu_retire(dt, tk, &ended);
	/* Discards wait until everything applied before them has retired. */
	while (!list_empty(&dt->inflight)) {
		first = list_first_entry(&dt->inflight, struct dmu_tracker,
					 inflight);
		if (!first->io_done)
			break;
		dmu_retire(dt, first, &ended);
	}
	/* A commit cycle may wait for older trackers. */
	if (dt->commit_stage == DMU_CS_WAIT)
		queue_work(dt->wq, &dt->flush_work);
	/* While MAPs are held, each retirement may be what frees room. */
	if ((dt->nr_unpublished >= dmu_unpublished_limit() / 4 ||
	     dt->nr_held) && dt->commit_stage == DMU_CS_IDLE)
		dmu_want_checkpoint(dt);
	wake_up(&dt->drain_wait);
	spin_unlock_irqrestore(&dt->lock, flags);

	while ((bio = bio_list_pop(&ended)))
		bio_endio(bio);
}

/*
 * A commit cycle of the kernel's own (a checkpoint), now or, if a cycle is
 * under way, right after it (dmu_commit_done).  Not while suspending, unless
 * MAPs are held: the writes of the suspend's own file system sync may be
 * among them, and only a COMMIT releases them.
 */
void dmu_want_checkpoint(struct dmu_target *dt)
{
	lockdep_assert_held(&dt->lock);
	if (dt->suspending && !dt->nr_held)
		return;
	/* Queued even if asked for before: that cycle may never have run. */
	dt->checkpoint = true;
	if (dt->commit_stage == DMU_CS_IDLE)
		queue_work(dt->wq, &dt->flush_work);
}

/*
 * MAP requests out with the daemon, queued or read (not held): each
 * answer may start a tracker.  nr_pending counts them, the held ones and
 * the COMMIT under way.
 */
static unsigned int dmu_maps_out(struct dmu_target *dt)
{
	return dt->nr_pending - dt->nr_held -
	       (dt->commit.state != DMU_RS_IDLE ? 1 : 0);
}

/*
 * How many more trackers may start: dmu_unpublished_limit() less the
 * trackers no COMMITTED covered yet and those the MAPs out may start.
 */
unsigned int dmu_tracker_room(struct dmu_target *dt)
{
	unsigned int used, limit = dmu_unpublished_limit();

	lockdep_assert_held(&dt->lock);
	used = dt->nr_unpublished + dmu_maps_out(dt);
	return used < limit ? limit - used : 0;
}

/*
 * Must a new MAP request (not yet counted) wait before the daemon sees it?
 * Yes when there is no room for the tracker its answer may start (a
 * daemon whose COMMITs fail or go unanswered), or when others wait: it
 * waits on held_maps behind them, asking for a checkpoint if a COMMIT
 * could make room.  Held MAPs go to the daemon as room appears
 * (dmu_release_held_maps: the end of a commit cycle, answers, expiries,
 * discards read() completes); daemon_timeout fails them like any
 * unanswered request; a noflush suspend hands their bios back to dm core.
 * Reads wait too: their answers may carry NEW extents.  So unpublished
 * trackers never pass the limit by more than the answer being applied.
 */
bool dmu_must_hold(struct dmu_target *dt)
{
	lockdep_assert_held(&dt->lock);
	return dt->nr_held || !dmu_tracker_room(dt);
}

/*
 * Room appeared, or may have: held MAPs go to the daemon, oldest first, as
 * many as there is room for; their answer clock starts now.  Those left
 * wait for more room.
 */
void dmu_release_held_maps(struct dmu_target *dt)
{
	unsigned int room, n = 0;
	struct dmu_req *req;

	lockdep_assert_held(&dt->lock);
	if (!dt->nr_held)
		return;
	for (room = dmu_tracker_room(dt); room && dt->nr_held; room--, n++) {
		req = list_first_entry(&dt->held_maps, struct dmu_req, msg.list);
		req->state = DMU_RS_QUEUED;
		req->queued_at = jiffies;
		list_move_tail(&req->msg.list, &dt->send_queue);
		dt->nr_held--;
	}
	if (n)
		dmu_wake_daemon(dt);
}

/*
 * A noflush suspend (a table reload) must not wait for held MAPs: only
 * room releases them, and a daemon that cannot commit may never make
 * any.  They were never sent: hand their bios back to dm core, which
 * issues them again after resume, and drop the requests.
 */
void dmu_requeue_held(struct dmu_target *dt)
{
	struct bio_list bios = BIO_EMPTY_LIST;
	struct dmu_req *req, *tmp;
	LIST_HEAD(dropped);
	struct bio *bio;

	lockdep_assert_held(&dt->mutex);
	spin_lock_irq(&dt->lock);
	list_for_each_entry_safe(req, tmp, &dt->held_maps, msg.list) {
		bio_list_merge(&bios, &req->bios);
		bio_list_init(&req->bios);
		dmu_req_unlink(req);
		list_add_tail(&req->msg.list, &dropped);
	}
	spin_unlock_irq(&dt->lock);
	list_for_each_entry_safe(req, tmp, &dropped, msg.list) {
		list_del_init(&req->msg.list);
		dmu_req_free(req);
	}
	while ((bio = bio_list_pop(&bios)))
		dmu_requeue_bio(dt, bio);
}

/* The daemon read tk's DONE. */
void dmu_done_read(struct dmu_target *dt, struct dmu_tracker *tk)
{
	lockdep_assert_held(&dt->lock);
	list_move_tail(&tk->msg.list, &dt->done_read);
}

/* The daemon read a COMMIT: it covers every DONE it read before. */
void dmu_commit_read(struct dmu_target *dt)
{
	lockdep_assert_held(&dt->lock);
	list_splice_tail_init(&dt->done_read, &dt->done_covered);
}

/* The COMMIT was answered (published: with status 0), failed or expired. */
void dmu_commit_outcome(struct dmu_target *dt, bool published)
{
	struct dmu_tracker *tk, *tmp;
	LIST_HEAD(freed);

	spin_lock_irq(&dt->lock);
	if (published) {
		list_splice_init(&dt->done_covered, &freed);
		list_for_each_entry(tk, &freed, msg.list) {
			dt->nr_unpublished--;
			if (!list_empty(&tk->record)) {
				list_del_init(&tk->record);
				dt->nr_records--;
			}
		}
	} else {
		list_splice_init(&dt->done_covered, &dt->done_read);
		set_bit(DMU_NEEDS_COMMIT, &dt->flags);
	}
	spin_unlock_irq(&dt->lock);
	list_for_each_entry_safe(tk, tmp, &freed, msg.list)
		dmu_tracker_free(tk);
}

/* The daemon left: what it read but no COMMITTED covered goes first. */
void dmu_done_requeue(struct dmu_target *dt)
{
	struct dmu_tracker *tk;

	lockdep_assert_held(&dt->lock);
	list_for_each_entry(tk, &dt->done_read, msg.list)
		tk->resent = true;
	list_for_each_entry(tk, &dt->done_covered, msg.list)
		tk->resent = true;
	if (!list_empty(&dt->done_read) || !list_empty(&dt->done_covered))
		set_bit(DMU_NEEDS_COMMIT, &dt->flags);
	list_splice_init(&dt->done_read, &dt->send_queue);
	list_splice_init(&dt->done_covered, &dt->send_queue);
}

static void dmu_free_dones(struct list_head *list)
{
	struct dmu_msg *m, *tmp;

	list_for_each_entry_safe(m, tmp, list, list) {
		if (m->kind != DMU_MSG_DONE)
			continue;
		list_del_init(&m->list);
		dmu_tracker_free(container_of(m, struct dmu_tracker, msg));
	}
}

/* The target is torn down: nothing is in flight any more. */
void dmu_trackers_exit(struct dmu_target *dt)
{
	WARN_ON_ONCE(!list_empty(&dt->inflight));
	dmu_free_dones(&dt->send_queue);
	dmu_free_dones(&dt->done_read);
	dmu_free_dones(&dt->done_covered);
	dmu_free_dones(&dt->done_held);
	INIT_LIST_HEAD(&dt->records);
	dt->nr_records = 0;
	dt->nr_unpublished = 0;
}

/* The cursor of LIST_ALLOCATIONS: record index idx of the tracker seq. */
#define DMU_CURSOR_IDX_BITS	9
static_assert(DMU_MAX_ANSWER_MSGS < (1U << DMU_CURSOR_IDX_BITS));

static u64 dmu_cursor(u64 seq, unsigned int idx)
{
	return (seq << DMU_CURSOR_IDX_BITS) | idx;
}

/* Up to max records at or after the cursor start, in seq order. */
unsigned int dmu_list_allocations(struct dmu_target *dt, u64 start,
				  struct dmu_allocation *out, unsigned int max,
				  u64 *next)
{
	struct dmu_tracker *tk;
	unsigned int n = 0, i, nr;

	lockdep_assert_held(&dt->lock);
	*next = start;
	list_for_each_entry(tk, &dt->records, record) {
		nr = tk->kind == DMU_TK_DISCARD ? 1 : tk->nr_allocs;
		/* Listed by an earlier chunk: skip it whole. */
		if (!nr || dmu_cursor(tk->seq, nr - 1) < start)
			continue;
		for (i = 0; i < nr; i++) {
			struct dmu_allocation *a;

			if (dmu_cursor(tk->seq, i) < start)
				continue;
			if (n == max)
				return n;
			a = &out[n];
			memset(a, 0, sizeof(*a));
			a->id = tk->id;
			if (tk->kind == DMU_TK_DISCARD) {
				a->block = tk->block;
				a->nr_blocks = tk->nr_blocks;
				a->flags = DMU_ALLOC_DISCARD;
			} else {
				a->block = tk->allocs[i].block;
				a->nr_blocks = tk->allocs[i].nr_blocks;
				a->sector = tk->allocs[i].sector;
				a->dev = tk->allocs[i].dev;
				if (tk->kind == DMU_TK_PUSH)
					a->flags = DMU_ALLOC_PUSH;
			}
			if (!list_empty(&tk->msg.list))
				a->flags |= DMU_ALLOC_DONE |
					    (tk->error ? DMU_ALLOC_FAILED : 0);
			n++;
			*next = dmu_cursor(tk->seq, i + 1);
		}
	}
	return n;
}
