// SPDX-License-Identifier: GPL-2.0
/*
 * dm-userspace responses, the checks: each message a daemon write()s is
 * checked field by field (dmu_check_fields) and each complete answer across
 * its messages (dmu_check_answer) before dmu-response.c lets it touch the
 * cache or any bio.  A non-NULL return is the reason the message is bad.
 */
#include <linux/blkdev.h>

#include "dmu.h"

static const char *dmu_check_extent(struct dmu_target *dt,
				    const struct dmu_response *r)
{
	sector_t mapped, dev_size;

	if (r->status)
		return "EXTENT with a status";
	if (!r->nr_blocks)
		return "EXTENT of zero blocks";
	if (r->block >= dt->target_blocks ||
	    r->nr_blocks > dt->target_blocks - r->block)
		return "EXTENT beyond the end of the target";
	if (r->ext_flags & ~(DMU_EXT_WRITABLE | DMU_EXT_NEW))
		return "EXTENT with unknown flags";
	if (r->kind == DMU_EXT_ZERO) {
		if (r->dev || r->sector || r->ext_flags)
			return "ZERO extent with a device, sector or flags";
		return NULL;
	}
	if (r->kind != DMU_EXT_REMAP)
		return "EXTENT of unknown kind";
	if (r->dev >= dt->nr_devs)
		return "EXTENT names a device index past nr_devs";
	/* Only the part inside the target must exist on the device. */
	mapped = min_t(u64, r->nr_blocks << dt->block_shift,
		       dt->len - dmu_block_start(dt, r->block));
	dev_size = bdev_nr_sectors(dt->bdev[r->dev]);
	if (r->sector > dev_size || mapped > dev_size - r->sector)
		return "EXTENT past the end of its device";
	if ((r->ext_flags & DMU_EXT_NEW) && !(r->ext_flags & DMU_EXT_WRITABLE))
		return "NEW extent that is not writable";
	if ((r->ext_flags & DMU_EXT_WRITABLE) &&
	    r->dev >= dt->opt.writable_devs)
		return "writable extent on a read-only device";
	/*
	 * A daemon bound before a reload --readonly still answers reads with
	 * writable extents: they are cached read-only (dmu_insert_piece), but
	 * a NEW one would be filled, which writes its device.
	 */
	if ((r->ext_flags & DMU_EXT_NEW) && r->dev >= dmu_writable_devs(dt))
		return "NEW extent while the table is read-only";
	if ((r->ext_flags & DMU_EXT_NEW) && !(dt->features & DMU_FEATURE_COPY))
		return "NEW extent without DMU_FEATURE_COPY";
	return NULL;
}

static const char *dmu_check_copy(struct dmu_target *dt,
				  const struct dmu_response *r)
{
	sector_t dev_size;

	if (!(dt->features & DMU_FEATURE_COPY))
		return "COPY without DMU_FEATURE_COPY";
	if (r->kind || r->ext_flags || r->status)
		return "COPY with kind, extent flags or status set";
	if (!r->nr_blocks)
		return "COPY of zero sectors";
	if (r->block >= dt->len || r->nr_blocks > dt->len - r->block)
		return "COPY beyond the end of the target";
	if (r->dev >= dt->nr_devs)
		return "COPY names a device index past nr_devs";
	dev_size = bdev_nr_sectors(dt->bdev[r->dev]);
	if (r->sector > dev_size || r->nr_blocks > dev_size - r->sector)
		return "COPY source past the end of its device";
	return NULL;
}

static bool dmu_only_status(const struct dmu_response *r)
{
	return !r->block && !r->nr_blocks && !r->kind && !r->ext_flags &&
	       !r->dev && !r->sector;
}

/* Checks that need no state: every field of one message. */
const char *dmu_check_fields(struct dmu_target *dt,
			     const struct dmu_response *r)
{
	if (r->reserved)
		return "reserved field set";
	if (r->flags & ~DMU_RSP_FINAL)
		return "unknown response flags";
	switch (r->type) {
	case DMU_RSP_EXTENT:
		return dmu_check_extent(dt, r);
	case DMU_RSP_COPY:
		return dmu_check_copy(dt, r);
	case DMU_RSP_COMPLETE:
	case DMU_RSP_COMMITTED:
		if (!dmu_only_status(r))
			return "unused field set";
		if (r->status > 0 || r->status < -MAX_ERRNO)
			return "status is not 0 or a negative errno";
		if (r->id & DMU_PUSH_ID)
			return "push id where a request id is needed";
		return NULL;
	case DMU_RSP_INVALIDATE:
		if (r->id || r->flags)
			return "INVALIDATE with an id or flags";
		if (r->kind || r->ext_flags || r->dev || r->sector || r->status)
			return "unused field set";
		if (!r->nr_blocks)
			return "INVALIDATE of zero blocks";
		if (r->block >= dt->target_blocks ||
		    r->nr_blocks > dt->target_blocks - r->block)
			return "INVALIDATE beyond the end of the target";
		return NULL;
	default:
		return "unknown response type";
	}
}

static bool dmu_ranges_overlap(u64 a, u64 an, u64 b, u64 bn)
{
	return a < b + bn && b < a + an;
}

/*
 * Checks across the messages of one answer, at its FINAL.  Each message
 * was checked against the table live when it arrived; a reload since (to
 * a read-only or a shorter table) may have made it bad, so every field is
 * checked again against the table live now.  dt->mutex, held here and by
 * dmu_pool_activate, keeps that table until the answer is applied.
 */
const char *dmu_check_answer(struct dmu_target *dt, struct dmu_req *req)
{
	const struct dmu_response *m = req->msgs, *a, *b;
	const char *why;
	unsigned int i, j;

	lockdep_assert_held(&dt->mutex);
	for (i = 0; i < req->nr_msgs; i++) {
		a = &m[i];
		why = dmu_check_fields(dt, a);
		if (why) {
			/* dmu_bad logs the FINAL; say which message it was. */
			DMERR_LIMIT("%s: message %u of the answer to id %#llx, checked again at its FINAL: %s",
				    dt->key, i, req->id, why);
			return why;
		}
		for (j = i + 1; j < req->nr_msgs; j++) {
			b = &m[j];
			if (a->type != b->type)
				continue;
			if (dmu_ranges_overlap(a->block, a->nr_blocks,
					       b->block, b->nr_blocks))
				return a->type == DMU_RSP_EXTENT ?
					"extents of one answer overlap" :
					"COPY ranges of one answer overlap";
		}
		if (dmu_is_new(a) && (req->map_flags & DMU_MAP_DISCARD))
			return "NEW extent in the answer to a discard";
		if (a->type != DMU_RSP_COPY)
			continue;
		for (j = 0; j < req->nr_msgs; j++) {
			sector_t start, end;

			b = &m[j];
			if (!dmu_is_new(b))
				continue;
			start = dmu_block_start(dt, b->block);
			end = min_t(u64, dt->len,
				    dmu_block_start(dt, b->block + b->nr_blocks));
			if (a->block >= start && a->block + a->nr_blocks <= end)
				break;
		}
		if (j == req->nr_msgs)
			return "COPY outside every NEW extent of its answer";
	}
	return NULL;
}
