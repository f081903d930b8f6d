// SPDX-License-Identifier: GPL-2.0
/*
 * dm-userspace discards: what happens once the daemon answered a discard.
 *
 * The daemon frees the space behind the discarded blocks when it reads
 * the discard's DONE, so that DONE must wait until nothing can still
 * write there:
 *   1. the cached extents of the range are dropped (extents still being
 *      filled are doomed: dropped when their fill ends), so no new I/O
 *      maps through them;
 *   2. a drain (dmu-drain.c) waits for every bio that was remapped
 *      through them before;
 *   3. with discard_passdown, the data ranges of the dropped writable
 *      extents are discarded on their devices;
 *   4. the tracker retires after every tracker applied before it
 *      (dmu-tracker.c), which completes the guest's discard and queues the
 *      DONE.
 */
#include <linux/blkdev.h>
#include <linux/slab.h>

#include "dmu.h"

/* Passed down or nothing to pass: the record does not need the ranges. */
static void dmu_discard_free_ranges(struct dmu_tracker *tk)
{
	kfree(tk->passdown);
	tk->passdown = NULL;
	tk->nr_passdown = 0;
}

static void dmu_discard_passdown(struct work_struct *work)
{
	struct dmu_tracker *tk = container_of(work, struct dmu_tracker,
					      stage_work);
	struct dmu_target *dt = tk->dt;
	unsigned int i;

	/*
	 * Advisory, like the discard itself: errors are not reported, and
	 * only whole zeroing units are passed down.  A loop device punches a
	 * hole in its file for a discard, and the file system zeroes the
	 * parts of blocks at the ends through the page cache, dirtying pages
	 * that hold data written beside them with direct I/O (see
	 * dmu_fill_zero()).
	 */
	for (i = 0; i < tk->nr_passdown; i++) {
		struct block_device *bdev = dt->bdev[tk->passdown[i].dev];
		sector_t unit, start, end;

		/* Planned before a reload --readonly: write nothing now. */
		if (tk->passdown[i].dev >= dmu_writable_devs(dt))
			continue;
		unit = dmu_zero_unit(bdev);
		start = round_up(tk->passdown[i].sector, unit);
		end = round_down(tk->passdown[i].sector +
				 tk->passdown[i].nr_sectors, unit);
		if (start < end)
			blkdev_issue_discard(bdev, start, end - start,
					     GFP_NOIO);
	}
	dmu_discard_free_ranges(tk);
	dmu_tracker_put(tk, 0);
}

static void dmu_discard_drained(struct dmu_drain_waiter *w)
{
	struct dmu_tracker *tk = container_of(w, struct dmu_tracker,
					      drain_waiter);

	if (tk->nr_passdown) {
		INIT_WORK(&tk->stage_work, dmu_discard_passdown);
		queue_work(tk->dt->wq, &tk->stage_work);
		return;
	}
	dmu_discard_free_ranges(tk);
	dmu_tracker_put(tk, 0);
}

/*
 * tk is the tracker of an applied discard, its bios in tk->discard_bios.
 * Called under dt->mutex before the answer's own extents are inserted;
 * *spare is a node for splitting an extent that sticks out on both sides
 * (set to NULL when used).
 */
void dmu_discard_answered(struct dmu_target *dt, struct dmu_tracker *tk,
			  struct dmu_extent **spare)
{
	struct dmu_cache *cache = &dt->cache;
	unsigned long dropped;

	lockdep_assert_held(&dt->mutex);
	set_bit(DMU_NEEDS_COMMIT, &dt->flags);
	dmu_cache_write_lock(cache);
	if (tk->passdown)
		tk->nr_passdown = dmu_cache_writable_ranges(dt, tk->block,
							    tk->nr_blocks,
							    tk->passdown,
							    DMU_MAX_PASSDOWN);
	dropped = dmu_cache_invalidate(dt, tk->block, tk->nr_blocks, spare);
	dmu_cache_doom_busy(cache, tk->block, tk->nr_blocks);
	dmu_cache_write_unlock(cache);
	atomic64_add(dropped, &dt->c.invalidated);

	dmu_tracker_start(tk);
	atomic_inc(&tk->io_pending);
	atomic64_inc(&dt->c.drains);
	tk->drain_waiter.fn = dmu_discard_drained;
	dmu_drain_async(&dt->drain, &tk->drain_waiter);
}
