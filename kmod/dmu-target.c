// SPDX-License-Identifier: GPL-2.0
/*
 * dm-userspace target "userspace": the table line, the life cycle
 * (ctr/dtr/suspend/resume), map() and end_io, status and messages.
 *
 * Table: <key> <block_sectors> <nr_devs> <dev>... [<#opt> <opt>...]
 * with options daemon_timeout <s> and max_extents <n>; see
 * include/uapi/linux/dm-userspace.h and README.md.
 */
#include <linux/blkdev.h>
#include <linux/module.h>
#include <linux/slab.h>

#include "dmu.h"

static unsigned int dmu_default_timeout = 30;
module_param_named(daemon_timeout, dmu_default_timeout, uint, 0644);
MODULE_PARM_DESC(daemon_timeout, "Default seconds I/O waits for a daemon to bind");

static unsigned int dmu_default_max_extents = 65536;
module_param_named(max_extents, dmu_default_max_extents, uint, 0644);
MODULE_PARM_DESC(max_extents, "Default bound on cached extents per target");

struct kmem_cache *dmu_extent_slab;
struct kmem_cache *dmu_req_slab;

static void dmu_put_devs(struct dmu_target *dt)
{
	u32 i;

	for (i = 0; i < dt->nr_devs; i++)
		dm_put_device(dt->ti, dt->devs[i]);
	dt->nr_devs = 0;
}

static int dmu_parse_options(struct dmu_target *dt, struct dm_arg_set *as)
{
	static const struct dm_arg opt_count = {0, 4, "Invalid number of optional arguments"};
	static const struct dm_arg timeout = {0, 86400, "Invalid daemon_timeout (0..86400 seconds)"};
	static const struct dm_arg extents = {16, 1U << 30, "Invalid max_extents (16..2^30)"};
	struct dm_target *ti = dt->ti;
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
		if (!argc) {
			ti->error = "Optional argument is missing its value";
			return -EINVAL;
		}
		argc--;
		if (!strcasecmp(name, "daemon_timeout"))
			r = dm_read_arg(&timeout, as, &dt->daemon_timeout, &ti->error);
		else if (!strcasecmp(name, "max_extents"))
			r = dm_read_arg(&extents, as, &dt->max_extents, &ti->error);
		else {
			ti->error = "Unknown optional argument (daemon_timeout, max_extents)";
			r = -EINVAL;
		}
		if (r)
			return r;
	}
	return 0;
}

/* Allocate what the target needs beyond the table arguments. */
static int dmu_setup(struct dmu_target *dt)
{
	struct dm_target *ti = dt->ti;
	int r;

	kref_init(&dt->kref);
	INIT_LIST_HEAD(&dt->registry);
	mutex_init(&dt->mutex);
	spin_lock_init(&dt->lock);
	INIT_LIST_HEAD(&dt->send_queue);
	INIT_LIST_HEAD(&dt->sent);
	INIT_LIST_HEAD(&dt->pending_maps);
	hash_init(dt->ids);
	INIT_LIST_HEAD(&dt->trackers);
	init_waitqueue_head(&dt->drain_wait);
	INIT_LIST_HEAD(&dt->pushes);
	bio_list_init(&dt->deferred);
	bio_list_init(&dt->flush_bios);
	bio_list_init(&dt->commit_bios);
	INIT_LIST_HEAD(&dt->commit.list);
	INIT_LIST_HEAD(&dt->commit.pending);
	INIT_LIST_HEAD(&dt->commit.tracker);
	INIT_HLIST_NODE(&dt->commit.hash);
	dt->commit.dt = dt;
	dt->commit.kind = DMU_RQ_COMMIT;
	INIT_WORK(&dt->flush_work, dmu_flush_work);
	INIT_WORK(&dt->deferred_work, dmu_deferred_work);
	INIT_DELAYED_WORK(&dt->timeout_work, dmu_timeout_work);
	dt->state = DMU_DAEMON_ABSENT;
	dt->block_shift = ilog2(dt->block_sectors);
	dt->target_blocks = DIV_ROUND_UP_SECTOR_T(ti->len, dt->block_sectors);

	dt->wq = alloc_workqueue("kdmu", WQ_MEM_RECLAIM, 0);
	if (!dt->wq) {
		ti->error = "Cannot allocate workqueue";
		return -ENOMEM;
	}
	dt->kc = dm_kcopyd_client_create(NULL);
	if (IS_ERR(dt->kc)) {
		r = PTR_ERR(dt->kc);
		dt->kc = NULL;
		ti->error = "Cannot create kcopyd client";
		return r;
	}
	r = mempool_init_slab_pool(&dt->req_pool, 16, dmu_req_slab);
	if (r) {
		ti->error = "Cannot allocate request pool";
		return r;
	}
	return dmu_cache_init(&dt->cache, dt->max_extents);
}

/* Free what dmu_setup() and the table arguments took; dt itself is put. */
static void dmu_teardown(struct dmu_target *dt)
{
	if (dt->wq)
		destroy_workqueue(dt->wq);
	if (dt->kc)
		dm_kcopyd_client_destroy(dt->kc);
	dmu_cache_exit(&dt->cache);
	mempool_exit(&dt->req_pool);
	dmu_put_devs(dt);
}

/*
 * <key> <block_sectors> <nr_devs> <dev>... [<#opt_args> <opt_arg>...]
 */
static int dmu_ctr(struct dm_target *ti, unsigned int argc, char **argv)
{
	static const struct dm_arg nr_devs_arg = {1, DMU_MAX_DEVS,
		"Invalid number of devices (1..64)"};
	struct dm_arg_set as = { .argc = argc, .argv = argv };
	struct dmu_target *dt;
	const char *key;
	unsigned int block_sectors, nr_devs, i;
	int r;

	if (argc < 4) {
		ti->error = "Not enough arguments: <key> <block_sectors> <nr_devs> <dev>...";
		return -EINVAL;
	}
	key = dm_shift_arg(&as);
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

	dt = kzalloc(sizeof(*dt), GFP_KERNEL);
	if (!dt) {
		ti->error = "Cannot allocate target context";
		return -ENOMEM;
	}
	dt->ti = ti;
	strscpy(dt->key, key, sizeof(dt->key));
	dt->block_sectors = block_sectors;
	dt->daemon_timeout = dmu_default_timeout;
	dt->max_extents = max(dmu_default_max_extents, 16U);
	for (i = 0; i < nr_devs; i++) {
		r = dm_get_device(ti, dm_shift_arg(&as), dm_table_get_mode(ti->table),
				  &dt->devs[i]);
		if (r) {
			ti->error = "Data device lookup failed";
			goto bad;
		}
		dt->nr_devs = i + 1;
	}
	r = dmu_parse_options(dt, &as);
	if (r)
		goto bad;
	if (as.argc) {
		ti->error = "Unexpected arguments after the options";
		r = -EINVAL;
		goto bad;
	}
	r = dmu_setup(dt);
	if (r)
		goto bad;

	ti->private = dt;
	ti->num_flush_bios = 1;
	ti->flush_supported = true;
	ti->num_discard_bios = 1;
	ti->discards_supported = true;
	ti->per_io_data_size = sizeof(struct dmu_bio);
	dmu_registry_add(dt);
	return 0;
bad:
	dmu_teardown(dt);
	kfree(dt);
	return r;
}

static bool dmu_drained(struct dmu_target *dt)
{
	bool drained;

	spin_lock_irq(&dt->lock);
	drained = !dt->nr_trackers;
	spin_unlock_irq(&dt->lock);
	return drained;
}

/*
 * Never waits for the daemon: everything that waits for it fails, a bound
 * daemon is detached (its file then answers -ENODEV), and only fills and
 * writes already on their way to the data devices are waited for.
 */
static void dmu_dtr(struct dm_target *ti)
{
	struct dmu_target *dt = ti->private;

	dmu_registry_del(dt);
	mutex_lock(&dt->mutex);
	spin_lock_irq(&dt->lock);
	dt->dying = true;
	spin_unlock_irq(&dt->lock);
	dmu_channel_detach(dt);
	dmu_drop_pushes(dt);
	dmu_fail_all(dt, BLK_STS_IOERR);
	mutex_unlock(&dt->mutex);

	cancel_delayed_work_sync(&dt->timeout_work);
	flush_workqueue(dt->wq);
	wait_event(dt->drain_wait, dmu_drained(dt));
	flush_workqueue(dt->wq);
	dmu_teardown(dt);
	dmu_target_put(dt);
}

static int dmu_map_discard(struct dmu_target *dt, struct bio *bio)
{
	sector_t offset = dm_target_offset(dt->ti, bio->bi_iter.bi_sector);
	u64 first = dmu_block_of(dt, offset + dt->block_sectors - 1);
	u64 end = dmu_block_of(dt, offset + bio_sectors(bio));

	if (offset + bio_sectors(bio) == dt->ti->len)
		end = dt->target_blocks;
	/* Discard is advisory: partial blocks are simply kept. */
	if (first >= end) {
		bio_endio(bio);
		return DM_MAPIO_SUBMITTED;
	}
	dmu_queue_request(dt, bio, first, end - first, DMU_MAP_DISCARD, false);
	return DM_MAPIO_SUBMITTED;
}

static int dmu_map(struct dm_target *ti, struct bio *bio)
{
	struct dmu_target *dt = ti->private;
	struct dmu_bio *pb = dmu_pb(bio);

	pb->tracker = NULL;
	pb->flags = 0;
	if (unlikely(bio->bi_opf & REQ_PREFLUSH)) {
		/* dm core sends the data of a flush separately */
		if (likely(!bio_sectors(bio))) {
			dmu_flush_defer(dt, bio);
			return DM_MAPIO_SUBMITTED;
		}
		bio->bi_opf &= ~REQ_PREFLUSH;
		bio->bi_opf |= REQ_FUA;
	}
	switch (bio_op(bio)) {
	case REQ_OP_READ:
	case REQ_OP_WRITE:
		break;
	case REQ_OP_DISCARD:
		return dmu_map_discard(dt, bio);
	default:
		return DM_MAPIO_KILL;
	}
	if (unlikely(!bio_sectors(bio))) {
		bio_endio(bio);
		return DM_MAPIO_SUBMITTED;
	}
	if (bio->bi_opf & REQ_FUA) {
		pb->flags |= DMU_BIO_FUA;
		bio->bi_opf &= ~REQ_FUA;
	}
	return dmu_map_bio(dt, bio, DMU_ROUTE_MAP, NULL);
}

static int dmu_end_io(struct dm_target *ti, struct bio *bio,
		      blk_status_t *error)
{
	struct dmu_target *dt = ti->private;
	struct dmu_bio *pb = dmu_pb(bio);
	struct dmu_req *req = pb->tracker;

	if (pb->flags & DMU_BIO_HELD)
		return DM_ENDIO_DONE;
	if (req) {
		pb->tracker = NULL;
		if (*error)
			dmu_set_error(req, blk_status_to_errno(*error));
		if (pb->flags & DMU_BIO_DIRECT)
			dmu_direct_write_done(req);
		dmu_tracker_put(req, 0);
	}
	if ((pb->flags & DMU_BIO_FUA) && !*error) {
		/* Complete it after the next commit (dmu-flush.c). */
		pb->flags |= DMU_BIO_HELD;
		dmu_flush_defer(dt, bio);
		return DM_ENDIO_INCOMPLETE;
	}
	return DM_ENDIO_DONE;
}

static void dmu_presuspend(struct dm_target *ti)
{
	struct dmu_target *dt = ti->private;
	bool bound;

	mutex_lock(&dt->mutex);
	spin_lock_irq(&dt->lock);
	dt->suspending = true;
	bound = dt->state == DMU_DAEMON_BOUND;
	spin_unlock_irq(&dt->lock);
	/* A bound daemon answers within daemon_timeout or its I/O fails. */
	if (!bound)	/* nobody can answer: suspend must not hang */
		dmu_fail_all(dt, BLK_STS_IOERR);
	mutex_unlock(&dt->mutex);
}

static void dmu_resume(struct dm_target *ti)
{
	struct dmu_target *dt = ti->private;

	mutex_lock(&dt->mutex);
	spin_lock_irq(&dt->lock);
	dt->suspending = false;
	spin_unlock_irq(&dt->lock);
	mutex_unlock(&dt->mutex);
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

static void dmu_status(struct dm_target *ti, status_type_t type,
		       unsigned int status_flags, char *result, unsigned int maxlen)
{
	struct dmu_target *dt = ti->private;
	enum dmu_daemon_state state;
	unsigned int sz = 0, pending;
	u32 i;

	switch (type) {
	case STATUSTYPE_INFO:
		spin_lock_irq(&dt->lock);
		state = dt->state;
		pending = dt->nr_pending;
		spin_unlock_irq(&dt->lock);
		DMEMIT("requests=%llu hits=%llu misses=%llu pushed=%llu pushed_used=%llu extents=%lu pending=%u daemon=%s",
		       DMU_C(requests), DMU_C(hits), DMU_C(misses), DMU_C(pushed),
		       DMU_C(pushed_used), READ_ONCE(dt->cache.nr), pending,
		       dmu_daemon_state_name(state));
		DMEMIT(" bad=%llu zero_reads=%llu fills=%llu commits=%llu timeouts=%llu resent=%llu evicted=%llu invalidated=%llu",
		       DMU_C(bad), DMU_C(zero_reads), DMU_C(fills), DMU_C(commits),
		       DMU_C(timeouts), DMU_C(resent), DMU_C(evicted),
		       DMU_C(invalidated));
		break;
	case STATUSTYPE_TABLE:
		DMEMIT("%s %u %u", dt->key, dt->block_sectors, dt->nr_devs);
		for (i = 0; i < dt->nr_devs; i++)
			DMEMIT(" %s", dt->devs[i]->name);
		DMEMIT(" 4 daemon_timeout %u max_extents %u",
		       dt->daemon_timeout, dt->max_extents);
		break;
	case STATUSTYPE_IMA:
		DMEMIT_TARGET_NAME_VERSION(ti->type);
		DMEMIT(",key=%s,block_sectors=%u,nr_devs=%u;", dt->key,
		       dt->block_sectors, dt->nr_devs);
		break;
	}
}

static void dmu_reset_counters(struct dmu_target *dt)
{
	atomic64_t *c = (atomic64_t *)&dt->c;
	size_t i;

	for (i = 0; i < sizeof(dt->c) / sizeof(*c); i++)
		atomic64_set(&c[i], 0);
}

/*
 * invalidate [<block> <nr_blocks>]   drop cached extents (all by default)
 * reset_counters                     zero the counters of the status line
 */
static int dmu_message(struct dm_target *ti, unsigned int argc, char **argv,
		       char *result, unsigned int maxlen)
{
	struct dmu_target *dt = ti->private;
	u64 block = 0, nr = dt->target_blocks;
	int r;

	if (argc == 1 && !strcasecmp(argv[0], "reset_counters")) {
		dmu_reset_counters(dt);
		return 0;
	}
	if ((argc != 1 && argc != 3) || strcasecmp(argv[0], "invalidate")) {
		DMERR("%s: unknown message; use 'invalidate [<block> <nr_blocks>]' or 'reset_counters'",
		      dt->key);
		return -EINVAL;
	}
	if (argc == 3 && (kstrtou64(argv[1], 10, &block) ||
			  kstrtou64(argv[2], 10, &nr) || !nr ||
			  block >= dt->target_blocks ||
			  nr > dt->target_blocks - block)) {
		DMERR("%s: invalidate: range is not inside the target's %llu blocks",
		      dt->key, dt->target_blocks);
		return -EINVAL;
	}
	mutex_lock(&dt->mutex);
	r = dmu_invalidate(dt, block, nr);
	mutex_unlock(&dt->mutex);
	return r;
}

static int dmu_iterate_devices(struct dm_target *ti,
			       iterate_devices_callout_fn fn, void *data)
{
	struct dmu_target *dt = ti->private;
	int r = 0;
	u32 i;

	for (i = 0; i < dt->nr_devs && !r; i++)
		r = fn(ti, dt->devs[i], 0, bdev_nr_sectors(dt->devs[i]->bdev), data);
	return r;
}

static void dmu_io_hints(struct dm_target *ti, struct queue_limits *limits)
{
	struct dmu_target *dt = ti->private;

	/* Discards are answered by the daemon, whatever the devices do. */
	limits->discard_granularity = dt->block_sectors << SECTOR_SHIFT;
	limits->max_hw_discard_sectors = 1U << 23;
	limits->max_discard_sectors = 1U << 23;
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
	.presuspend_undo = dmu_resume,
	.resume = dmu_resume,
	.status = dmu_status,
	.message = dmu_message,
	.iterate_devices = dmu_iterate_devices,
	.io_hints = dmu_io_hints,
};

static int __init dmu_init(void)
{
	int r = -ENOMEM;

	dmu_extent_slab = KMEM_CACHE(dmu_extent, 0);
	dmu_req_slab = KMEM_CACHE(dmu_req, 0);
	if (!dmu_extent_slab || !dmu_req_slab)
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
	kmem_cache_destroy(dmu_req_slab);
	kmem_cache_destroy(dmu_extent_slab);
	return r;
}

static void __exit dmu_exit(void)
{
	dm_unregister_target(&dmu_target_type);
	dmu_control_exit();
	kmem_cache_destroy(dmu_req_slab);
	kmem_cache_destroy(dmu_extent_slab);
}

module_init(dmu_init);
module_exit(dmu_exit);

MODULE_DESCRIPTION(DM_NAME " target whose block map lives in a userspace daemon");
MODULE_AUTHOR("dmu project");
MODULE_LICENSE("GPL");
MODULE_SOFTDEP("pre: dm-mod");
