// SPDX-License-Identifier: GPL-2.0
/*
 * dm-userspace fills: preparing freshly allocated (DMU_EXT_NEW) extents.
 *
 * A NEW extent enters the cache BUSY, so no bio can use it yet.  Stage 1
 * (FILL): kcopyd writes every sector of it that the answer's own waiting
 * writes do not cover, copying from the answer's COPY sources and zeroing
 * where none is given.  Stage 2 (WRITE): those waiting writes are issued.
 * Only then does the extent become usable, so no reader ever sees sectors
 * that hold neither the old contents nor the new data.  If anything fails
 * the extents are dropped from the cache instead, the answer's writes fail,
 * and bios that waited for the fill ask the daemon again.  The tracker's
 * DONE follows all of it.
 */
#include <linux/slab.h>
#include <linux/sort.h>

#include "dmu.h"

enum {
	DMU_STAGE_FILL,
	DMU_STAGE_WRITE,
};

struct dmu_range {
	sector_t start;
	sector_t end;
};

static int dmu_range_cmp(const void *a, const void *b)
{
	const struct dmu_range *x = a, *y = b;

	if (x->start != y->start)
		return x->start < y->start ? -1 : 1;
	return 0;
}

static void dmu_stage_put(struct dmu_req *req)
{
	if (atomic_dec_and_test(&req->stage_pending))
		queue_work(req->dt->wq, &req->stage_work);
}

void dmu_direct_write_done(struct dmu_req *req)
{
	dmu_stage_put(req);
}

static void dmu_fill_done(int read_err, unsigned long write_err, void *context)
{
	struct dmu_req *req = context;

	if (read_err || write_err)
		dmu_set_error(req, -EIO);
	dmu_stage_put(req);
}

static sector_t dmu_ext_vstart(struct dmu_target *dt, struct dmu_extent *e)
{
	return dmu_block_start(dt, e->block);
}

static sector_t dmu_ext_vend(struct dmu_target *dt, struct dmu_extent *e)
{
	return min_t(u64, dt->ti->len, dmu_block_start(dt, e->block + e->nr_blocks));
}

/* Write zeros (src NULL) or the COPY source src to virtual [from, to) of e. */
static void dmu_fill_piece(struct dmu_req *req, struct dmu_extent *e,
			   const struct dmu_response *src, sector_t from,
			   sector_t to)
{
	struct dmu_target *dt = req->dt;
	struct dm_io_region dest = {
		.bdev = dt->devs[e->dev]->bdev,
		.sector = e->sector + (from - dmu_ext_vstart(dt, e)),
		.count = to - from,
	};

	atomic_inc(&req->stage_pending);
	atomic64_inc(&dt->c.fills);
	if (src) {
		struct dm_io_region from_region = {
			.bdev = dt->devs[src->dev]->bdev,
			.sector = src->sector + (from - src->block),
			.count = to - from,
		};

		dm_kcopyd_copy(dt->kc, &from_region, 1, &dest, 0,
			       dmu_fill_done, req);
	} else {
		dm_kcopyd_zero(dt->kc, 1, &dest, 0, dmu_fill_done, req);
	}
}

/* Fill the hole [from, to) of e from the sorted COPY messages. */
static void dmu_fill_hole(struct dmu_req *req, struct dmu_extent *e,
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
			dmu_fill_piece(req, e, NULL, from, cs);
		from = max(from, cs);
		dmu_fill_piece(req, e, copies[i], from, min(to, ce));
		from = min(to, ce);
	}
	if (from < to)
		dmu_fill_piece(req, e, NULL, from, to);
}

static int dmu_copy_cmp(const void *a, const void *b)
{
	const struct dmu_response *x = *(const struct dmu_response **)a;
	const struct dmu_response *y = *(const struct dmu_response **)b;

	if (x->block != y->block)
		return x->block < y->block ? -1 : 1;
	return 0;
}

static void dmu_fill_extents(struct dmu_req *req, struct dmu_range *writes,
			     unsigned int nr_writes,
			     const struct dmu_response **copies,
			     unsigned int nr_copies)
{
	struct dmu_target *dt = req->dt;
	unsigned int i, j;

	for (i = 0; i < req->nr_new; i++) {
		struct dmu_extent *e = req->new_ext[i];
		sector_t pos = dmu_ext_vstart(dt, e), end = dmu_ext_vend(dt, e);

		for (j = 0; j < nr_writes && pos < end; j++) {
			if (writes[j].end <= pos || writes[j].start >= end)
				continue;
			if (writes[j].start > pos)
				dmu_fill_hole(req, e, copies, nr_copies, pos,
					      writes[j].start);
			pos = max(pos, writes[j].end);
		}
		if (pos < end)
			dmu_fill_hole(req, e, copies, nr_copies, pos, end);
	}
}

/*
 * Start stage 1 for req's NEW extents.  Needs req->msgs (the COPY
 * messages) and req->direct (the answer's writes inside NEW extents).
 */
void dmu_fill_start(struct dmu_req *req)
{
	struct dmu_target *dt = req->dt;
	const struct dmu_response **copies = NULL;
	struct dmu_range *writes = NULL;
	unsigned int nr_writes = 0, nr_copies = 0, i;
	struct bio *bio;

	lockdep_assert_held(&dt->mutex);
	INIT_WORK(&req->stage_work, dmu_stage_work);
	atomic_inc(&req->io_pending);
	req->stage = DMU_STAGE_FILL;
	atomic_set(&req->stage_pending, 1);

	for (i = 0; i < req->nr_msgs; i++)
		nr_copies += req->msgs[i].type == DMU_RSP_COPY;
	writes = kmalloc_array(max(bio_list_size(&req->direct), 1U),
			       sizeof(*writes), GFP_KERNEL);
	copies = kmalloc_array(max(nr_copies, 1U), sizeof(*copies), GFP_KERNEL);
	if (!writes || !copies) {
		dmu_set_error(req, -ENOMEM);
		goto out;
	}
	nr_copies = 0;
	for (i = 0; i < req->nr_msgs; i++)
		if (req->msgs[i].type == DMU_RSP_COPY)
			copies[nr_copies++] = &req->msgs[i];
	sort(copies, nr_copies, sizeof(*copies), dmu_copy_cmp, NULL);
	bio_list_for_each(bio, &req->direct) {
		sector_t start = dm_target_offset(dt->ti, bio->bi_iter.bi_sector);

		writes[nr_writes].start = start;
		writes[nr_writes].end = start + bio_sectors(bio);
		nr_writes++;
	}
	sort(writes, nr_writes, sizeof(*writes), dmu_range_cmp, NULL);
	dmu_fill_extents(req, writes, nr_writes, copies, nr_copies);
out:
	kfree(writes);
	kfree(copies);
	dmu_stage_put(req);
}

static struct dmu_extent *dmu_new_extent_of(struct dmu_req *req, u64 block)
{
	unsigned int i;

	for (i = 0; i < req->nr_new; i++)
		if (block >= req->new_ext[i]->block &&
		    block - req->new_ext[i]->block < req->new_ext[i]->nr_blocks)
			return req->new_ext[i];
	return NULL;
}

/* Stage 2: issue the answer's own writes into the filled extents. */
static void dmu_issue_direct(struct dmu_req *req)
{
	struct dmu_target *dt = req->dt;
	struct bio *bio;

	req->stage = DMU_STAGE_WRITE;
	atomic_set(&req->stage_pending, 1);
	while ((bio = bio_list_pop(&req->direct))) {
		sector_t offset = dm_target_offset(dt->ti, bio->bi_iter.bi_sector);
		struct dmu_extent *e = dmu_new_extent_of(req, dmu_block_of(dt, offset));
		struct dmu_bio *pb = dmu_pb(bio);

		pb->tracker = req;
		pb->flags |= DMU_BIO_DIRECT;
		atomic_inc(&req->io_pending);
		atomic_inc(&req->stage_pending);
		dmu_mark_dirty(dt, e->dev);
		bio_set_dev(bio, dt->devs[e->dev]->bdev);
		bio->bi_iter.bi_sector = e->sector + (offset - dmu_ext_vstart(dt, e));
		dm_submit_bio_remap(bio, NULL);
	}
	dmu_stage_put(req);
}

void dmu_stage_work(struct work_struct *work)
{
	struct dmu_req *req = container_of(work, struct dmu_req, stage_work);
	struct dmu_target *dt = req->dt;
	struct bio_list waiting = BIO_EMPTY_LIST;
	struct bio *bio;
	unsigned int i;

	if (req->stage == DMU_STAGE_FILL && !req->error &&
	    !bio_list_empty(&req->direct)) {
		dmu_issue_direct(req);
		return;
	}
	while ((bio = bio_list_pop(&req->direct)))
		dmu_end_bio(bio, req->error);

	spin_lock_irq(&dt->cache.lock);
	for (i = 0; i < req->nr_new; i++) {
		struct dmu_extent *e = req->new_ext[i];

		if (req->error) {
			dmu_cache_remove(dt, e);
		} else {
			e->state &= ~DMU_EXTENT_BUSY;
			e->owner = NULL;
		}
	}
	bio_list_merge(&waiting, &req->busy_bios);
	bio_list_init(&req->busy_bios);
	spin_unlock_irq(&dt->cache.lock);
	kfree(req->new_ext);
	req->new_ext = NULL;
	req->nr_new = 0;

	while ((bio = bio_list_pop(&waiting)))
		dmu_map_bio(dt, bio, DMU_ROUTE_RETRY, req);
	dmu_tracker_put(req, 0);
}
