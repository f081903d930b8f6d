// SPDX-License-Identifier: GPL-2.0
/*
 * dm-userspace fills: preparing freshly allocated (DMU_EXT_NEW) extents.
 *
 * A NEW extent enters the cache BUSY, so no bio can use it yet.  Stage 0
 * (only when the answer replaced cached writable extents or copies from a
 * writable device): a drain waits for writes in flight through the old
 * mappings, so the copy reads what the guest wrote.  Stage 1 (FILL):
 * kcopyd writes every sector of the extents that the answer's own waiting
 * writes do not cover, copying from the answer's COPY sources and zeroing
 * where none is given.  Stage 2 (WRITE): those waiting writes are issued.
 * Only then does the extent become usable, so no reader ever sees sectors
 * that hold neither the old contents nor the new data.  If anything fails
 * the extents are dropped from the cache instead, the answer's writes
 * fail, and bios that waited for the fill ask the daemon again; a discard
 * that covered the extent meanwhile (DMU_EXT_DOOMED) drops it too.  The
 * tracker's DONE follows all of it.
 */
#include <linux/slab.h>
#include <linux/sort.h>

#include "dmu.h"

enum {
	DMU_STAGE_FILL,
	DMU_STAGE_WRITE,
};

struct dmu_sectors {
	sector_t start;
	sector_t end;
};

static int dmu_sectors_cmp(const void *a, const void *b)
{
	const struct dmu_sectors *x = a, *y = b;

	if (x->start != y->start)
		return x->start < y->start ? -1 : 1;
	return 0;
}

static void dmu_stage_put(struct dmu_tracker *tk)
{
	if (atomic_dec_and_test(&tk->stage_pending))
		queue_work(tk->dt->wq, &tk->stage_work);
}

/* end_io of a direct write: held until dmu_stage_work() completes it. */
void dmu_direct_write_done(struct dmu_tracker *tk, struct bio *bio)
{
	struct dmu_target *dt = tk->dt;
	unsigned long flags;

	spin_lock_irqsave(&dt->lock, flags);
	bio_list_add(&tk->direct_done, bio);
	spin_unlock_irqrestore(&dt->lock, flags);
	dmu_stage_put(tk);
}

/* The fill is over: complete its direct writes with its final status. */
static void dmu_end_direct(struct dmu_tracker *tk)
{
	struct dmu_target *dt = tk->dt;
	struct bio_list done;
	struct bio *bio;

	spin_lock_irq(&dt->lock);
	done = tk->direct_done;
	bio_list_init(&tk->direct_done);
	spin_unlock_irq(&dt->lock);
	while ((bio = bio_list_pop(&done))) {
		struct dmu_bio *pb = dmu_pb(bio);

		pb->flags |= DMU_BIO_HELD;
		/* Each held a tracker reference until now. */
		atomic_dec(&tk->io_pending);
		if (!tk->error && (pb->flags & DMU_BIO_FUA)) {
			if (!dmu_fua_defer(dt, bio))
				dmu_requeue_bio(dt, bio);
			continue;
		}
		dmu_end_bio(bio, tk->error);
	}
}

static void dmu_fill_done(int read_err, unsigned long write_err, void *context)
{
	struct dmu_tracker *tk = context;

	if (read_err || write_err)
		dmu_set_error(tk, -EIO);
	dmu_stage_put(tk);
}

static sector_t dmu_ext_vstart(struct dmu_target *dt, struct dmu_extent *e)
{
	return dmu_block_start(dt, e->block);
}

static sector_t dmu_ext_vend(struct dmu_target *dt, struct dmu_extent *e)
{
	return min_t(u64, READ_ONCE(dt->len),
		     dmu_block_start(dt, e->block + e->nr_blocks));
}

static void dmu_fill_zero_end_io(struct bio *bio)
{
	struct dmu_tracker *tk = bio->bi_private;

	if (bio->bi_status)
		dmu_set_error(tk, blk_status_to_errno(bio->bi_status));
	bio_put(bio);
	dmu_stage_put(tk);
}

/* Zero count (< one zeroing unit) sectors at sector of bdev with writes. */
static void dmu_fill_zero_write(struct dmu_tracker *tk,
				struct block_device *bdev, sector_t sector,
				unsigned int count)
{
	unsigned int bytes = count << SECTOR_SHIFT;
	struct bio *bio = bio_alloc_bioset(bdev, DIV_ROUND_UP(bytes, PAGE_SIZE),
					   REQ_OP_WRITE | REQ_SYNC,
					   GFP_NOIO, &tk->dt->zero_bs);

	bio->bi_iter.bi_sector = sector;
	while (bytes) {
		unsigned int len = min_t(unsigned int, bytes, PAGE_SIZE);

		__bio_add_page(bio, ZERO_PAGE(0), len, 0);
		bytes -= len;
	}
	bio->bi_end_io = dmu_fill_zero_end_io;
	bio->bi_private = tk;
	atomic_inc(&tk->stage_pending);
	atomic64_inc(&tk->dt->c.fills);
	submit_bio(bio);
}

/*
 * Zero dest.  kcopyd zeroes with WRITE_ZEROES, which a loop device turns
 * into fallocate() on its file; the file system zeroes the parts of its
 * blocks at either end of that range through the page cache, dirtying a
 * page that also holds data written beside it with direct I/O (clusters
 * below the page or block size).  Such a page makes the loop's next direct
 * write fail its page cache invalidation, and the next flush fail with EIO.
 * So the parts of zeroing units (dmu_zero_unit()) at the ends are written
 * with zeros, and only whole units are left to kcopyd.
 */
static void dmu_fill_zero(struct dmu_tracker *tk, struct dm_io_region *dest)
{
	sector_t unit = dmu_zero_unit(dest->bdev);
	sector_t start = dest->sector, end = dest->sector + dest->count;
	sector_t head = min_t(sector_t, end, round_up(start, unit));
	sector_t tail = max_t(sector_t, head, round_down(end, unit));

	if (head > start)
		dmu_fill_zero_write(tk, dest->bdev, start, head - start);
	if (tail > head) {
		dest->sector = head;
		dest->count = tail - head;
		atomic_inc(&tk->stage_pending);
		atomic64_inc(&tk->dt->c.fills);
		dm_kcopyd_zero(tk->dt->kc, 1, dest, 0, dmu_fill_done, tk);
	}
	if (end > tail)
		dmu_fill_zero_write(tk, dest->bdev, tail, end - tail);
}

/* Write zeros (src NULL) or the COPY source src to virtual [from, to) of e. */
static void dmu_fill_piece(struct dmu_tracker *tk, struct dmu_extent *e,
			   const struct dmu_response *src, sector_t from,
			   sector_t to)
{
	struct dmu_target *dt = tk->dt;
	struct dm_io_region dest = {
		.bdev = dt->bdev[e->dev],
		.sector = e->sector + (from - dmu_ext_vstart(dt, e)),
		.count = to - from,
	};

	if (src) {
		struct dm_io_region from_region = {
			.bdev = dt->bdev[src->dev],
			.sector = src->sector + (from - src->block),
			.count = to - from,
		};

		atomic_inc(&tk->stage_pending);
		atomic64_inc(&dt->c.fills);
		dm_kcopyd_copy(dt->kc, &from_region, 1, &dest, 0,
			       dmu_fill_done, tk);
	} else {
		dmu_fill_zero(tk, &dest);
	}
}

/* Fill the hole [from, to) of e from the sorted COPY messages. */
static void dmu_fill_hole(struct dmu_tracker *tk, struct dmu_extent *e,
			  const struct dmu_response **copies, unsigned int nr,
			  sector_t from, sector_t to)
{
	unsigned int i;

	for (i = 0; i < nr && from < to; i++) {
		sector_t cs = copies[i]->block;
		sector_t ce = cs + copies[i]->nr_blocks;

		if (ce <= from || cs >= to)
			continue;
		if (cs > from)
			dmu_fill_piece(tk, e, NULL, from, cs);
		from = max(from, cs);
		dmu_fill_piece(tk, e, copies[i], from, min(to, ce));
		from = min(to, ce);
	}
	if (from < to)
		dmu_fill_piece(tk, e, NULL, from, to);
}

static int dmu_copy_cmp(const void *a, const void *b)
{
	const struct dmu_response *x = *(const struct dmu_response **)a;
	const struct dmu_response *y = *(const struct dmu_response **)b;

	if (x->block != y->block)
		return x->block < y->block ? -1 : 1;
	return 0;
}

static void dmu_fill_extents(struct dmu_tracker *tk, struct dmu_sectors *writes,
			     unsigned int nr_writes,
			     const struct dmu_response **copies,
			     unsigned int nr_copies)
{
	struct dmu_target *dt = tk->dt;
	unsigned int i, j;

	for (i = 0; i < tk->nr_new; i++) {
		struct dmu_extent *e = tk->new_ext[i];
		sector_t pos = dmu_ext_vstart(dt, e), end = dmu_ext_vend(dt, e);

		for (j = 0; j < nr_writes && pos < end; j++) {
			if (writes[j].end <= pos || writes[j].start >= end)
				continue;
			if (writes[j].start > pos)
				dmu_fill_hole(tk, e, copies, nr_copies, pos,
					      writes[j].start);
			pos = max(pos, writes[j].end);
		}
		if (pos < end)
			dmu_fill_hole(tk, e, copies, nr_copies, pos, end);
	}
}

/* Stage 1: start the kcopyd jobs; drops the stage reference it was given. */
static void dmu_fill_issue(struct dmu_tracker *tk)
{
	struct dmu_target *dt = tk->dt;
	const struct dmu_response **copies = NULL;
	struct dmu_sectors *writes = NULL;
	unsigned int nr_writes = 0, i;
	struct bio *bio;

	writes = kmalloc_array(max(bio_list_size(&tk->direct), 1U),
			       sizeof(*writes), GFP_NOIO);
	copies = kmalloc_array(max(tk->nr_copies, 1U), sizeof(*copies),
			       GFP_NOIO);
	if (!writes || !copies) {
		dmu_set_error(tk, -ENOMEM);
		goto out;
	}
	for (i = 0; i < tk->nr_copies; i++)
		copies[i] = &tk->copies[i];
	sort(copies, tk->nr_copies, sizeof(*copies), dmu_copy_cmp, NULL);
	bio_list_for_each(bio, &tk->direct) {
		sector_t start = dmu_offset(dt, bio);

		writes[nr_writes].start = start;
		writes[nr_writes].end = start + bio_sectors(bio);
		nr_writes++;
	}
	sort(writes, nr_writes, sizeof(*writes), dmu_sectors_cmp, NULL);
	dmu_fill_extents(tk, writes, nr_writes, copies, tk->nr_copies);
out:
	kfree(writes);
	kfree(copies);
	/* Issued: a retired tracker keeps only what LIST_ALLOCATIONS lists. */
	kfree(tk->copies);
	tk->copies = NULL;
	tk->nr_copies = 0;
	dmu_stage_put(tk);
}

static void dmu_fill_drained(struct dmu_drain_waiter *w)
{
	dmu_fill_issue(container_of(w, struct dmu_tracker, drain_waiter));
}

/*
 * Start filling tk's NEW extents.  Needs tk->copies (the answer's COPY
 * messages) and tk->direct (the answer's writes inside NEW extents).
 */
void dmu_fill_start(struct dmu_tracker *tk)
{
	struct dmu_target *dt = tk->dt;

	lockdep_assert_held(&dt->mutex);
	INIT_WORK(&tk->stage_work, dmu_stage_work);
	atomic_inc(&tk->io_pending);
	tk->stage = DMU_STAGE_FILL;
	atomic_set(&tk->stage_pending, 1);
	if (tk->needs_drain) {
		atomic64_inc(&dt->c.drains);
		tk->drain_waiter.fn = dmu_fill_drained;
		dmu_drain_async(&dt->drain, &tk->drain_waiter);
		return;
	}
	dmu_fill_issue(tk);
}

static struct dmu_extent *dmu_new_extent_of(struct dmu_tracker *tk, u64 block)
{
	unsigned int i;

	for (i = 0; i < tk->nr_new; i++)
		if (block >= tk->new_ext[i]->block &&
		    block - tk->new_ext[i]->block < tk->new_ext[i]->nr_blocks)
			return tk->new_ext[i];
	return NULL;
}

/* Stage 2: issue the answer's own writes into the filled extents. */
static void dmu_issue_direct(struct dmu_tracker *tk)
{
	struct dmu_target *dt = tk->dt;
	struct bio *bio;

	tk->stage = DMU_STAGE_WRITE;
	atomic_set(&tk->stage_pending, 1);
	while ((bio = bio_list_pop(&tk->direct))) {
		sector_t offset = dmu_offset(dt, bio);
		struct dmu_extent *e = dmu_new_extent_of(tk, dmu_block_of(dt, offset));
		struct dmu_bio *pb = dmu_pb(bio);

		pb->tracker = tk;
		pb->flags |= DMU_BIO_DIRECT;
		pb->dev = e->dev;
		pb->io_ref = dmu_io_begin(&dt->drain);
		atomic_inc(&tk->io_pending);
		atomic_inc(&tk->stage_pending);
		bio_set_dev(bio, dt->bdev[e->dev]);
		bio->bi_iter.bi_sector = e->sector + (offset - dmu_ext_vstart(dt, e));
		dm_submit_bio_remap(bio, NULL);
	}
	dmu_stage_put(tk);
}

void dmu_stage_work(struct work_struct *work)
{
	struct dmu_tracker *tk = container_of(work, struct dmu_tracker,
					      stage_work);
	struct dmu_target *dt = tk->dt;
	struct bio_list waiting = BIO_EMPTY_LIST;
	struct bio *bio;
	unsigned int i;

	if (tk->stage == DMU_STAGE_FILL && !tk->error) {
		/* The fill landed: the next flush must flush it. */
		for (i = 0; i < tk->nr_new; i++)
			dmu_mark_dirty(dt, tk->new_ext[i]->dev);
		if (!bio_list_empty(&tk->direct)) {
			dmu_issue_direct(tk);
			return;
		}
	}
	while ((bio = bio_list_pop(&tk->direct)))
		dmu_end_bio(bio, tk->error);
	dmu_end_direct(tk);

	dmu_cache_write_lock(&dt->cache);
	for (i = 0; i < tk->nr_new; i++) {
		struct dmu_extent *e = tk->new_ext[i];

		if (tk->error || (e->state & DMU_EXT_DOOMED)) {
			dmu_cache_remove(dt, e);
		} else {
			e->state &= ~DMU_EXTENT_BUSY;
			e->owner = NULL;
		}
	}
	bio_list_merge(&waiting, &tk->busy_bios);
	bio_list_init(&tk->busy_bios);
	dmu_cache_write_unlock(&dt->cache);
	kfree(tk->new_ext);
	tk->new_ext = NULL;
	tk->nr_new = 0;

	while ((bio = bio_list_pop(&waiting)))
		dmu_map_bio(dt, bio, DMU_ROUTE_RETRY, tk, NULL);
	dmu_tracker_put(tk, 0);
}
