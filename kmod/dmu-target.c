// SPDX-License-Identifier: GPL-2.0
/*
 * dm-userspace target "userspace": the table line, the life cycle
 * (ctr/dtr/suspend/resume), map() and end_io, status and messages.
 *
 * Table: <key> <block_sectors> <nr_devs> <dev>... [<#opt> <opt>...]
 * with options daemon_timeout <s>, max_extents <n>, writable_devs <n> and
 * discard_passdown; see include/uapi/linux/dm-userspace.h and README.md.
 */
#include <linux/blkdev.h>
#include <linux/module.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>

#include "dmu.h"

static unsigned int dmu_default_timeout = 30;
module_param_named(daemon_timeout, dmu_default_timeout, uint, 0644);
MODULE_PARM_DESC(daemon_timeout, "Default seconds I/O waits for a daemon to bind");

static unsigned int dmu_default_max_extents = 65536;
module_param_named(max_extents, dmu_default_max_extents, uint, 0644);
MODULE_PARM_DESC(max_extents, "Default bound on cached extents per target");

unsigned int dmu_max_unpublished = 16384;
module_param_named(max_unpublished, dmu_max_unpublished, uint, 0644);
MODULE_PARM_DESC(max_unpublished, "Unpublished answers per target past which new requests wait");

struct kmem_cache *dmu_extent_slab;
struct kmem_cache *dmu_req_slab;
struct kmem_cache *dmu_tracker_slab;

static void dmu_put_devs(struct dmu_tc *tc)
{
	u32 i;

	for (i = 0; i < tc->nr_devs; i++)
		dm_put_device(tc->ti, tc->devs[i]);
	tc->nr_devs = 0;
}

static int dmu_parse_options(struct dmu_tc *tc, struct dm_arg_set *as,
			     u32 nr_devs)
{
	static const struct dm_arg opt_count = {0, 7, "Invalid number of optional arguments"};
	static const struct dm_arg timeout = {0, 86400, "Invalid daemon_timeout (0..86400 seconds)"};
	static const struct dm_arg extents = {16, 1U << 30, "Invalid max_extents (16..2^30)"};
	struct dm_arg writable = {0, nr_devs, "Invalid writable_devs (0..nr_devs)"};
	struct dm_target *ti = tc->ti;
	unsigned int argc;
	int r;

	if (!as->argc)
		return 0;
	r = dm_read_arg_group(&opt_count, as, &argc, &ti->error);
	if (r)
		return r;
	while (argc) {
		const char *name = dm_shift_arg(as);

		argc--;
		if (!strcasecmp(name, "discard_passdown")) {
			tc->opt.discard_passdown = true;
			continue;
		}
		if (!argc) {
			ti->error = "Optional argument is missing its value";
			return -EINVAL;
		}
		argc--;
		if (!strcasecmp(name, "daemon_timeout"))
			r = dm_read_arg(&timeout, as, &tc->opt.daemon_timeout, &ti->error);
		else if (!strcasecmp(name, "max_extents"))
			r = dm_read_arg(&extents, as, &tc->opt.max_extents, &ti->error);
		else if (!strcasecmp(name, "writable_devs"))
			r = dm_read_arg(&writable, as, &tc->opt.writable_devs, &ti->error);
		else {
			ti->error = "Unknown optional argument (daemon_timeout, max_extents, writable_devs, discard_passdown)";
			r = -EINVAL;
		}
		if (r)
			return r;
	}
	return 0;
}

static int dmu_check_key(struct dm_target *ti, const char *key)
{
	unsigned int i;

	if (!*key || strlen(key) >= DMU_KEY_LEN) {
		ti->error = "Key must have 1 to 63 characters";
		return -EINVAL;
	}
	for (i = 0; key[i]; i++) {
		if (key[i] <= ' ' || key[i] > '~') {
			ti->error = "Key must be printable ASCII without spaces";
			return -EINVAL;
		}
	}
	return 0;
}

/* Devices past writable_devs are opened read-only; nr_devs counts those got. */
static int dmu_get_devs(struct dmu_tc *tc, char **paths, u32 nr_devs)
{
	struct dm_target *ti = tc->ti;
	u32 i;
	int r;

	for (i = 0; i < nr_devs; i++) {
		r = dm_get_device(ti, paths[i],
				  i < tc->opt.writable_devs ?
				  dm_table_get_mode(ti->table) :
				  dm_table_get_mode(ti->table) & ~DMU_MODE_WRITE,
				  &tc->devs[i]);
		if (r) {
			ti->error = "Data device lookup failed";
			return r;
		}
		tc->nr_devs = i + 1;
	}
	return 0;
}

/*
 * <key> <block_sectors> <nr_devs> <dev>... [<#opt_args> <opt_arg>...]
 */
static int dmu_ctr(struct dm_target *ti, unsigned int argc, char **argv)
{
	static const struct dm_arg nr_devs_arg = {1, DMU_MAX_DEVS,
		"Invalid number of devices (1..64)"};
	struct dm_arg_set as = { .argc = argc, .argv = argv };
	unsigned int block_sectors, nr_devs;
	struct dmu_tc *tc;
	const char *key;
	char **paths;
	int r;

	if (argc < 4) {
		ti->error = "Not enough arguments: <key> <block_sectors> <nr_devs> <dev>...";
		return -EINVAL;
	}
	key = dm_shift_arg(&as);
	r = dmu_check_key(ti, key);
	if (r)
		return r;
	if (kstrtouint(dm_shift_arg(&as), 10, &block_sectors) ||
	    block_sectors < 8 || block_sectors > (1U << 20) ||
	    !is_power_of_2(block_sectors)) {
		ti->error = "Invalid block_sectors (power of two, 8..2^20)";
		return -EINVAL;
	}
	r = dm_read_arg(&nr_devs_arg, &as, &nr_devs, &ti->error);
	if (r)
		return r;
	if (as.argc < nr_devs) {
		ti->error = "Fewer devices than nr_devs";
		return -EINVAL;
	}

	tc = kzalloc(sizeof(*tc), GFP_KERNEL);
	if (!tc) {
		ti->error = "Cannot allocate table context";
		return -ENOMEM;
	}
	tc->ti = ti;
	tc->block_sectors = block_sectors;
	tc->opt.daemon_timeout = dmu_default_timeout;
	tc->opt.max_extents = max(dmu_default_max_extents, 16U);
	tc->opt.writable_devs = nr_devs;
	paths = as.argv;
	as.argc -= nr_devs;
	as.argv += nr_devs;
	r = dmu_parse_options(tc, &as, nr_devs);
	if (r)
		goto bad;
	if (as.argc) {
		ti->error = "Unexpected arguments after the options";
		r = -EINVAL;
		goto bad;
	}
	r = dmu_get_devs(tc, paths, nr_devs);
	if (r)
		goto bad;
	r = dmu_pool_get(tc, key, &ti->error);
	if (r)
		goto bad;

	ti->private = tc;
	ti->num_flush_bios = 1;
	ti->flush_supported = true;
	ti->num_discard_bios = 1;
	ti->discards_supported = true;
	ti->per_io_data_size = sizeof(struct dmu_bio);
	ti->accounts_remapped_io = true;	/* dm_submit_bio_remap() */
	return 0;
bad:
	dmu_put_devs(tc);
	kfree(tc);
	return r;
}

static void dmu_dtr(struct dm_target *ti)
{
	struct dmu_tc *tc = ti->private;

	dmu_pool_put(tc);
	dmu_put_devs(tc);
	kfree(tc);
}

static int dmu_map(struct dm_target *ti, struct bio *bio)
{
	struct dmu_tc *tc = ti->private;
	struct dmu_target *dt = tc->dt;
	struct dmu_bio *pb = dmu_pb(bio);

	pb->tracker = NULL;
	pb->io_ref = NULL;
	pb->flags = 0;
	if (unlikely(bio->bi_opf & REQ_PREFLUSH)) {
		/* dm core sends the data of a flush separately */
		if (likely(!bio_sectors(bio))) {
			if (dmu_flush_defer(dt, bio))
				return DM_MAPIO_SUBMITTED;
			atomic64_inc(&dt->c.requeued);
			return DM_MAPIO_REQUEUE;
		}
		bio->bi_opf &= ~REQ_PREFLUSH;
		bio->bi_opf |= REQ_FUA;
	}
	/*
	 * A read-only table writes no device.  The block layer only warns
	 * when a writer that opened the device before a reload --readonly
	 * goes on, and cached writable extents would take its writes.
	 */
	if (unlikely(op_is_write(bio_op(bio)) && READ_ONCE(dt->read_only)))
		return DM_MAPIO_KILL;
	switch (bio_op(bio)) {
	case REQ_OP_READ:
	case REQ_OP_WRITE:
		break;
	case REQ_OP_DISCARD:
		return dmu_queue_discard(dt, bio, DMU_ROUTE_MAP);
	default:
		return DM_MAPIO_KILL;
	}
	if (unlikely(!bio_sectors(bio))) {
		bio_endio(bio);
		return DM_MAPIO_SUBMITTED;
	}
	if ((bio->bi_opf & REQ_FUA) && op_is_write(bio_op(bio))) {
		/*
		 * A noflush suspend takes a FUA write back before it is
		 * written: written, it would wait for a COMMIT the daemon may
		 * never give (dmu_fua_defer says why it is not handed back
		 * then).  Those presuspend handed back come here again until
		 * dm core blocks I/O for the suspend.
		 */
		if (dmu_fua_must_requeue(dt)) {
			atomic64_inc(&dt->c.requeued);
			return DM_MAPIO_REQUEUE;
		}
		pb->flags |= DMU_BIO_FUA;
		bio->bi_opf &= ~REQ_FUA;
	}
	return dmu_map_bio(dt, bio, DMU_ROUTE_MAP, NULL, NULL);
}

static int dmu_end_io(struct dm_target *ti, struct bio *bio,
		      blk_status_t *error)
{
	struct dmu_tc *tc = ti->private;
	struct dmu_target *dt = tc->dt;
	struct dmu_bio *pb = dmu_pb(bio);
	struct dmu_tracker *tk = pb->tracker;

	if (pb->flags & DMU_BIO_HELD)
		return DM_ENDIO_DONE;
	if (pb->io_ref) {
		/* Completed: the next flush must cover it (dmu-flush.c). */
		if (op_is_write(bio_op(bio)) && !*error)
			dmu_mark_dirty(dt, pb->dev);
		dmu_io_end(pb->io_ref);
		pb->io_ref = NULL;
	}
	if (tk && (pb->flags & DMU_BIO_DIRECT)) {
		/*
		 * One failed write of a fill drops the whole answer's extents:
		 * hold every write of it until the fill's end decides.
		 */
		pb->tracker = NULL;
		if (*error)
			dmu_set_error(tk, blk_status_to_errno(*error));
		dmu_direct_write_done(tk, bio);
		return DM_ENDIO_INCOMPLETE;
	}
	if (tk) {
		pb->tracker = NULL;
		dmu_tracker_put(tk, 0);
	}
	if ((pb->flags & DMU_BIO_FUA) && !*error) {
		/* Complete it after the next commit (dmu-flush.c). */
		pb->flags |= DMU_BIO_HELD;
		if (dmu_fua_defer(dt, bio))
			return DM_ENDIO_INCOMPLETE;
		pb->flags &= ~DMU_BIO_HELD;
		atomic64_inc(&dt->c.requeued);
		return DM_ENDIO_REQUEUE;
	}
	return DM_ENDIO_DONE;
}

/*
 * A suspend must not fail I/O that waits for a daemon.  With a daemon
 * bound, it answers (within daemon_timeout); a noflush suspend (a table
 * reload) hands back what waits for a COMMIT, which a daemon that cannot
 * commit never gives: the bios of MAPs held for room, flushes and held
 * FUA writes.  Without a daemon, a noflush suspend hands every waiting bio
 * back to dm core, which issues them again after resume; a suspend that
 * must flush waits up to daemon_timeout for a daemon, then fails them.
 */
static void dmu_presuspend(struct dm_target *ti)
{
	struct dmu_tc *tc = ti->private;
	struct dmu_target *dt = tc->dt;
	bool bound;

	mutex_lock(&dt->mutex);
	spin_lock_irq(&dt->lock);
	dt->suspending = true;
	/*
	 * dm core clears its noflush flag once the device is suspended, but
	 * the requeued I/O waits until resume however long that takes.
	 */
	dt->parked = dm_noflush_suspending(ti);
	bound = dt->state == DMU_DAEMON_BOUND;
	spin_unlock_irq(&dt->lock);
	if (!bound) {
		if (dm_noflush_suspending(ti))
			dmu_requeue_parked(dt);
		else if (!dt->opt.daemon_timeout)
			dmu_fail_all(dt, BLK_STS_IOERR);
		else
			dmu_arm_timeout(dt);
	} else if (dm_noflush_suspending(ti)) {
		dmu_requeue_held(dt);
		dmu_flush_requeue(dt);
	}
	mutex_unlock(&dt->mutex);
}

static bool dmu_fills_done(struct dmu_target *dt)
{
	bool done;

	spin_lock_irq(&dt->lock);
	done = !dt->nr_push_inflight;
	spin_unlock_irq(&dt->lock);
	return done;
}

/*
 * dm waited for our bios; pushes' fills are not bios.  Let them land (new
 * pushes with NEW extents are refused until resume; fills don't need the
 * daemon, so this ends).  Not covered: an answer, during the suspend, to a
 * request whose bios were requeued still fills its NEW extents.
 */
static void dmu_postsuspend(struct dm_target *ti)
{
	struct dmu_tc *tc = ti->private;
	struct dmu_target *dt = tc->dt;

	wait_event(dt->drain_wait, dmu_fills_done(dt));
	flush_workqueue(dt->wq);
}

static void dmu_resume_common(struct dmu_target *dt)
{
	bool kick, parked;

	mutex_lock(&dt->mutex);
	spin_lock_irq(&dt->lock);
	dt->suspending = false;
	parked = dt->parked;
	dt->parked = false;
	kick = !bio_list_empty(&dt->flush_bios) || dt->checkpoint;
	/*
	 * I/O requeued by a noflush suspend waits for a daemon again: a whole
	 * daemon_timeout from now.  After any other suspend the clock runs on.
	 */
	if (dt->state != DMU_DAEMON_BOUND && parked && dt->opt.daemon_timeout)
		mod_delayed_work(dt->wq, &dt->timeout_work,
				 (unsigned long)dt->opt.daemon_timeout * HZ);
	else if (dt->state != DMU_DAEMON_BOUND)
		dmu_arm_timeout(dt);
	/* Held MAPs need a COMMIT: a suspend may have left none asked for. */
	if (dt->nr_held)
		dmu_want_checkpoint(dt);
	spin_unlock_irq(&dt->lock);
	mutex_unlock(&dt->mutex);
	if (kick)
		queue_work(dt->wq, &dt->flush_work);
}

static void dmu_presuspend_undo(struct dm_target *ti)
{
	struct dmu_tc *tc = ti->private;

	dmu_resume_common(tc->dt);
}

static void dmu_resume(struct dm_target *ti)
{
	struct dmu_tc *tc = ti->private;

	dmu_pool_activate(tc);
	dmu_resume_common(tc->dt);
}

static const char *dmu_daemon_state_name(enum dmu_daemon_state state)
{
	switch (state) {
	case DMU_DAEMON_BOUND:
		return "bound";
	case DMU_DAEMON_WAITING:
		return "waiting";
	case DMU_DAEMON_TIMED_OUT:
		return "timed_out";
	default:
		return "absent";
	}
}

#define DMU_C(name) ((unsigned long long)atomic64_read(&dt->c.name))

static void dmu_hit_counters_sum(struct dmu_target *dt,
				 struct dmu_hit_counters *sum)
{
	int cpu;

	sum->hits = 0;
	sum->zero_reads = 0;
	for_each_possible_cpu(cpu) {
		const struct dmu_hit_counters *hc = per_cpu_ptr(dt->hc, cpu);

		sum->hits += READ_ONCE(hc->hits);
		sum->zero_reads += READ_ONCE(hc->zero_reads);
	}
}

static u64 dmu_since_base(u64 sum, u64 base)
{
	return sum > base ? sum - base : 0;
}

static void dmu_status(struct dm_target *ti, status_type_t type,
		       unsigned int status_flags, char *result, unsigned int maxlen)
{
	struct dmu_tc *tc = ti->private;
	struct dmu_target *dt = tc->dt;
	unsigned int sz = 0, pending, records, held;
	struct dmu_hit_counters hc;
	enum dmu_daemon_state state;
	u32 i;

	switch (type) {
	case STATUSTYPE_INFO:
		dmu_hit_counters_sum(dt, &hc);
		/*
		 * reset_counters may store a newer base than this sum saw:
		 * clamp rather than print a wrapped count for one read.
		 */
		hc.hits = dmu_since_base(hc.hits, READ_ONCE(dt->hc_base.hits));
		hc.zero_reads = dmu_since_base(hc.zero_reads,
					       READ_ONCE(dt->hc_base.zero_reads));
		spin_lock_irq(&dt->lock);
		state = dt->state;
		pending = dt->nr_pending;
		records = dt->nr_records;
		held = dt->nr_held;
		spin_unlock_irq(&dt->lock);
		DMEMIT("requests=%llu hits=%llu misses=%llu pushed=%llu pushed_used=%llu extents=%lu pending=%u daemon=%s",
		       DMU_C(requests), hc.hits, DMU_C(misses), DMU_C(pushed),
		       DMU_C(pushed_used), READ_ONCE(dt->cache.nr), pending,
		       dmu_daemon_state_name(state));
		DMEMIT(" bad=%llu zero_reads=%llu fills=%llu commits=%llu timeouts=%llu resent=%llu evicted=%llu invalidated=%llu",
		       DMU_C(bad), hc.zero_reads, DMU_C(fills), DMU_C(commits),
		       DMU_C(timeouts), DMU_C(resent), DMU_C(evicted),
		       DMU_C(invalidated));
		DMEMIT(" unpublished=%u requeued=%llu drains=%llu held=%u cycles=%llu",
		       records, DMU_C(requeued), DMU_C(drains), held,
		       DMU_C(cycles));
		break;
	case STATUSTYPE_TABLE:
		DMEMIT("%s %u %u", dt->key, tc->block_sectors, tc->nr_devs);
		for (i = 0; i < tc->nr_devs; i++)
			DMEMIT(" %s", tc->devs[i]->name);
		DMEMIT(" %u daemon_timeout %u max_extents %u writable_devs %u",
		       tc->opt.discard_passdown ? 7 : 6, tc->opt.daemon_timeout,
		       tc->opt.max_extents, tc->opt.writable_devs);
		if (tc->opt.discard_passdown)
			DMEMIT(" discard_passdown");
		break;
	case STATUSTYPE_IMA:
		DMEMIT_TARGET_NAME_VERSION(ti->type);
		DMEMIT(",key=%s,block_sectors=%u,nr_devs=%u;", dt->key,
		       tc->block_sectors, tc->nr_devs);
		break;
	}
}

static void dmu_reset_counters(struct dmu_target *dt)
{
	atomic64_t *c = (atomic64_t *)&dt->c;
	struct dmu_hit_counters hc;
	size_t i;

	/* struct dmu_counters is nothing but atomic64_t fields. */
	BUILD_BUG_ON(sizeof(dt->c) % sizeof(*c));

	for (i = 0; i < sizeof(dt->c) / sizeof(*c); i++)
		atomic64_set(&c[i], 0);
	dmu_hit_counters_sum(dt, &hc);
	WRITE_ONCE(dt->hc_base.hits, hc.hits);
	WRITE_ONCE(dt->hc_base.zero_reads, hc.zero_reads);
}

/*
 * invalidate [<block> <nr_blocks>]   drop cached extents (all by default)
 *                                    and wait for I/O that used them
 * reset_counters                     zero the counters of the status line
 */
static int dmu_message(struct dm_target *ti, unsigned int argc, char **argv,
		       char *result, unsigned int maxlen)
{
	struct dmu_tc *tc = ti->private;
	struct dmu_target *dt = tc->dt;
	u64 block = 0, nr = dt->target_blocks;
	unsigned int noio;
	int r;

	if (argc == 1 && !strcasecmp(argv[0], "reset_counters")) {
		dmu_reset_counters(dt);
		return 0;
	}
	if ((argc != 1 && argc != 3) || strcasecmp(argv[0], "invalidate")) {
		DMWARN("%s: unknown message; use 'invalidate [<block> <nr_blocks>]' or 'reset_counters'",
		      dt->key);
		return -EINVAL;
	}
	if (argc == 3 && (kstrtou64(argv[1], 10, &block) ||
			  kstrtou64(argv[2], 10, &nr) || !nr ||
			  block >= dt->target_blocks ||
			  nr > dt->target_blocks - block)) {
		DMWARN("%s: invalidate: range is not inside the target's %llu blocks",
		      dt->key, dt->target_blocks);
		return -EINVAL;
	}
	/*
	 * The split's spare extent is allocated under dt->mutex, which the
	 * answer path needs: reclaim must not wait on I/O to this device.
	 */
	noio = memalloc_noio_save();
	mutex_lock(&dt->mutex);
	r = dmu_invalidate(dt, block, nr);
	mutex_unlock(&dt->mutex);
	memalloc_noio_restore(noio);
	if (!r) {
		atomic64_inc(&dt->c.drains);
		r = dmu_drain_wait(&dt->drain);
	}
	return r;
}

static int dmu_iterate_devices(struct dm_target *ti,
			       iterate_devices_callout_fn fn, void *data)
{
	struct dmu_tc *tc = ti->private;
	int r = 0;
	u32 i;

	for (i = 0; i < tc->nr_devs && !r; i++)
		r = fn(ti, tc->devs[i], 0, bdev_nr_sectors(tc->devs[i]->bdev), data);
	return r;
}

static void dmu_io_hints(struct dm_target *ti, struct queue_limits *limits)
{
	struct dmu_tc *tc = ti->private;
	unsigned int block_bytes = tc->block_sectors << SECTOR_SHIFT;

	/* Discards are answered by the daemon, whatever the devices do. */
	limits->discard_granularity = block_bytes;
	limits->max_hw_discard_sectors = 1U << 23;
	limits->max_discard_sectors = 1U << 23;
	/* A write of a whole block never needs a fill. */
	limits->io_min = block_bytes;
	limits->io_opt = block_bytes;
}

static struct target_type dmu_target_type = {
	.name = DMU_TARGET_NAME,
	.version = {DMU_VERSION_MAJOR, DMU_VERSION_MINOR, DMU_VERSION_PATCH},
	.module = THIS_MODULE,
	.ctr = dmu_ctr,
	.dtr = dmu_dtr,
	.map = dmu_map,
	.end_io = dmu_end_io,
	.presuspend = dmu_presuspend,
	.presuspend_undo = dmu_presuspend_undo,
	.postsuspend = dmu_postsuspend,
	.resume = dmu_resume,
	.status = dmu_status,
	.message = dmu_message,
	.iterate_devices = dmu_iterate_devices,
	.io_hints = dmu_io_hints,
};

static void dmu_destroy_slabs(void)
{
	kmem_cache_destroy(dmu_tracker_slab);
	kmem_cache_destroy(dmu_req_slab);
	kmem_cache_destroy(dmu_extent_slab);
}

static int __init dmu_init(void)
{
	int r = -ENOMEM;

	dmu_extent_slab = KMEM_CACHE(dmu_extent, 0);
	dmu_req_slab = KMEM_CACHE(dmu_req, 0);
	dmu_tracker_slab = KMEM_CACHE(dmu_tracker, 0);
	if (!dmu_extent_slab || !dmu_req_slab || !dmu_tracker_slab)
		goto bad_slab;
	r = dmu_control_init();
	if (r)
		goto bad_slab;
	r = dm_register_target(&dmu_target_type);
	if (r) {
		DMERR("cannot register target: %d", r);
		goto bad_target;
	}
	return 0;
bad_target:
	dmu_control_exit();
bad_slab:
	dmu_destroy_slabs();
	return r;
}

static void __exit dmu_exit(void)
{
	dm_unregister_target(&dmu_target_type);
	dmu_control_exit();
	/* Extents retired with call_rcu() are freed into our slab. */
	rcu_barrier();
	dmu_destroy_slabs();
}

module_init(dmu_init);
module_exit(dmu_exit);

MODULE_DESCRIPTION(DM_NAME " target whose block map lives in a userspace daemon");
MODULE_AUTHOR("dmu project");
MODULE_LICENSE("GPL");
MODULE_SOFTDEP("pre: dm-mod");
