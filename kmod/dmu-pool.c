// SPDX-License-Identifier: GPL-2.0
/*
 * dm-userspace per-key state: one struct dmu_target per key, shared by the
 * tables of one dm device, found by key in a registry.
 *
 * The first table naming a key creates the state; a reload's new table of
 * the same device shares it (the key is refused for any other device, and
 * the reload must name the same data devices and block size), so the
 * cache, pending requests, unpublished DONEs and the bound daemon survive
 * the swap.  A table's options take effect at its resume.  The state dies
 * when the last table is destroyed (the device goes away); memory lives on
 * while a channel still holds a reference.
 */
#include <linux/sched/mm.h>
#include <linux/slab.h>

#include "dmu.h"

DEFINE_MUTEX(dmu_registry_lock);
static LIST_HEAD(dmu_registry);

struct dmu_target *dmu_registry_find(const char *key)
{
	struct dmu_target *dt;

	lockdep_assert_held(&dmu_registry_lock);
	list_for_each_entry(dt, &dmu_registry, registry)
		if (!strcmp(dt->key, key))
			return dt;
	return NULL;
}

static void dmu_target_release(struct kref *kref)
{
	kfree(container_of(kref, struct dmu_target, kref));
}

void dmu_target_put(struct dmu_target *dt)
{
	kref_put(&dt->kref, dmu_target_release);
}

/* Free what dmu_pool_setup() allocated. */
static void dmu_pool_teardown(struct dmu_target *dt)
{
	dmu_drain_exit(&dt->drain);
	if (dt->wq)
		destroy_workqueue(dt->wq);
	dt->wq = NULL;
	if (dt->kc)
		dm_kcopyd_client_destroy(dt->kc);
	dt->kc = NULL;
	bioset_exit(&dt->zero_bs);
	dmu_cache_exit(&dt->cache);
	mempool_exit(&dt->req_pool);
	free_percpu(dt->hc);
	dt->hc = NULL;
}

static int dmu_pool_setup(struct dmu_target *dt, char **error)
{
	int r;

	kref_init(&dt->kref);
	INIT_LIST_HEAD(&dt->registry);
	INIT_LIST_HEAD(&dt->tables);
	mutex_init(&dt->mutex);
	spin_lock_init(&dt->lock);
	INIT_LIST_HEAD(&dt->send_queue);
	INIT_LIST_HEAD(&dt->held_maps);
	INIT_LIST_HEAD(&dt->sent);
	dt->pending_maps = RB_ROOT_CACHED;
	hash_init(dt->ids);
	INIT_LIST_HEAD(&dt->pushes);
	bio_list_init(&dt->deferred);
	INIT_LIST_HEAD(&dt->inflight);
	INIT_LIST_HEAD(&dt->records);
	INIT_LIST_HEAD(&dt->done_read);
	INIT_LIST_HEAD(&dt->done_covered);
	INIT_LIST_HEAD(&dt->done_held);
	init_waitqueue_head(&dt->drain_wait);
	bio_list_init(&dt->flush_bios);
	bio_list_init(&dt->commit_bios);
	INIT_LIST_HEAD(&dt->commit.msg.list);
	RB_CLEAR_NODE(&dt->commit.pending);
	INIT_HLIST_NODE(&dt->commit.hash);
	dt->commit.dt = dt;
	dt->commit.msg.kind = DMU_MSG_COMMIT;
	INIT_WORK(&dt->flush_work, dmu_flush_work);
	INIT_WORK(&dt->deferred_work, dmu_deferred_work);
	INIT_DELAYED_WORK(&dt->timeout_work, dmu_timeout_work);
	INIT_DELAYED_WORK(&dt->retry_work, dmu_retry_work);
	dt->state = DMU_DAEMON_ABSENT;
	dt->block_shift = ilog2(dt->block_sectors);

	dt->wq = alloc_workqueue("kdmu-%s", WQ_MEM_RECLAIM, 0, dt->key);
	if (!dt->wq) {
		*error = "Cannot allocate workqueue";
		return -ENOMEM;
	}
	dt->kc = dm_kcopyd_client_create(NULL);
	if (IS_ERR(dt->kc)) {
		r = PTR_ERR(dt->kc);
		dt->kc = NULL;
		*error = "Cannot create kcopyd client";
		return r;
	}
	/*
	 * Its own pool: zero writes are allocated under dt->mutex, which
	 * bios of a shared pool may need to complete (their daemon's answers).
	 */
	r = bioset_init(&dt->zero_bs, 16, 0, BIOSET_NEED_BVECS);
	if (r) {
		*error = "Cannot allocate bio set";
		return r;
	}
	r = mempool_init_slab_pool(&dt->req_pool, 16, dmu_req_slab);
	if (r) {
		*error = "Cannot allocate request pool";
		return r;
	}
	dt->hc = alloc_percpu(struct dmu_hit_counters);
	if (!dt->hc) {
		*error = "Cannot allocate counters";
		return -ENOMEM;
	}
	r = dmu_drain_init(&dt->drain, dt->wq);
	if (r) {
		dt->drain.wq = NULL;
		*error = "Cannot allocate I/O generations";
		return r;
	}
	return dmu_cache_init(&dt->cache, dt->opt.max_extents);
}

/* The live table's geometry and options become the target's. */
static void dmu_pool_take_table(struct dmu_target *dt, struct dmu_tc *tc)
{
	struct dm_target *ti = tc->ti;

	lockdep_assert_held(&dt->lock);
	dt->ti = ti;
	WRITE_ONCE(dt->read_only,
		   !(dm_table_get_mode(ti->table) & DMU_MODE_WRITE));
	WRITE_ONCE(dt->begin, ti->begin);
	WRITE_ONCE(dt->len, ti->len);
	dt->target_blocks = DIV_ROUND_UP_SECTOR_T(ti->len, dt->block_sectors);
	dt->opt = tc->opt;
}

static int dmu_pool_create(struct dmu_tc *tc, const char *key, char **error)
{
	struct dmu_target *dt;
	u32 i;
	int r;

	dt = kzalloc(sizeof(*dt), GFP_KERNEL);
	if (!dt) {
		*error = "Cannot allocate target context";
		return -ENOMEM;
	}
	strscpy(dt->key, key, sizeof(dt->key));
	dt->md = dm_table_get_md(tc->ti->table);
	dt->block_sectors = tc->block_sectors;
	dt->nr_devs = tc->nr_devs;
	for (i = 0; i < tc->nr_devs; i++)
		dt->bdev[i] = tc->devs[i]->bdev;
	dt->opt = tc->opt;
	r = dmu_pool_setup(dt, error);
	if (r) {
		dmu_pool_teardown(dt);
		kfree(dt);
		return r;
	}
	spin_lock_irq(&dt->lock);
	dmu_pool_take_table(dt, tc);
	spin_unlock_irq(&dt->lock);
	dt->nr_tables = 1;
	list_add(&tc->list, &dt->tables);
	list_add(&dt->registry, &dmu_registry);
	tc->dt = dt;
	return 0;
}

/* A reload's table must describe the same target. */
static char *dmu_pool_mismatch(struct dmu_target *dt, struct dmu_tc *tc)
{
	struct dmu_tc *other;
	u32 i;

	lockdep_assert_held(&dmu_registry_lock);
	if (dt->dying)
		return "Key belongs to a device that is going away";
	list_for_each_entry(other, &dt->tables, list)
		if (other->ti->table == tc->ti->table)
			return "Key is used by another target of this table";
	if (tc->block_sectors != dt->block_sectors)
		return "A reload must keep block_sectors";
	if (tc->nr_devs != dt->nr_devs)
		return "A reload must name the same data devices";
	if (tc->opt.writable_devs != dt->opt.writable_devs)
		return "A reload must keep writable_devs";
	for (i = 0; i < tc->nr_devs; i++)
		if (tc->devs[i]->bdev != dt->bdev[i])
			return "A reload must name the same data devices in the same order";
	/*
	 * A partial last block's tail lies outside the target: no fill wrote
	 * it and no answer was checked against it, so nothing the daemon
	 * answered for the block holds there.  (dt->len is the live table's:
	 * only a resume racing this load can change it before this table is
	 * resumed, and dmu_pool_activate covers that.)
	 */
	lockdep_assert_held(&dt->mutex);
	if (tc->ti->len > dt->len && (dt->len & (dt->block_sectors - 1)))
		return "A reload may grow the target only from a whole number of blocks";
	return NULL;
}

/* ctr: find or create the state for key; tc->dt is set on success. */
int dmu_pool_get(struct dmu_tc *tc, const char *key, char **error)
{
	struct mapped_device *md = dm_table_get_md(tc->ti->table);
	struct dmu_target *dt;
	char *why;
	int r = 0;

	mutex_lock(&dmu_registry_lock);
	dt = dmu_registry_find(key);
	if (!dt) {
		r = dmu_pool_create(tc, key, error);
	} else if (dt->md != md) {
		*error = "Key is in use by another device";
		r = -EBUSY;
	} else {
		mutex_lock(&dt->mutex);
		why = dmu_pool_mismatch(dt, tc);
		mutex_unlock(&dt->mutex);
		if (why) {
			*error = why;
			r = -EINVAL;
		} else {
			dt->nr_tables++;
			list_add(&tc->list, &dt->tables);
			kref_get(&dt->kref);
			tc->dt = dt;
		}
	}
	mutex_unlock(&dmu_registry_lock);
	return r;
}

/* resume: this table is the live one now. */
void dmu_pool_activate(struct dmu_tc *tc)
{
	struct dmu_target *dt = tc->dt;
	sector_t old_len;

	mutex_lock(&dt->mutex);
	spin_lock_irq(&dt->lock);
	old_len = dt->len;
	dmu_pool_take_table(dt, tc);
	spin_unlock_irq(&dt->lock);
	spin_lock_irq(&dt->cache.lock);
	dt->cache.max = dt->opt.max_extents;
	spin_unlock_irq(&dt->cache.lock);
	/*
	 * A shorter target: nothing may map past its end.  A longer one grows
	 * from a whole number of blocks (dmu_pool_mismatch); should a load
	 * racing a resume of another table slip one past that check, the old
	 * partial last block is forgotten here all the same.
	 */
	if (dt->len != old_len) {
		unsigned int noio = memalloc_noio_save();
		u64 from = min(dt->len, old_len) >> dt->block_shift;

		dmu_invalidate(dt, from, U64_MAX - from);
		memalloc_noio_restore(noio);
	}
	mutex_unlock(&dt->mutex);
}

static bool dmu_inflight_done(struct dmu_target *dt)
{
	bool done;

	spin_lock_irq(&dt->lock);
	done = !dt->nr_inflight;
	spin_unlock_irq(&dt->lock);
	return done;
}

/*
 * The device goes away.  Never waits for the daemon: everything that waits
 * for it fails, a bound daemon is detached (its file then answers -ENODEV),
 * and only fills and writes already on their way to the data devices are
 * waited for.
 */
static void dmu_pool_kill(struct dmu_target *dt)
{
	mutex_lock(&dt->mutex);
	if (dt->dying) {
		mutex_unlock(&dt->mutex);
		return;
	}
	spin_lock_irq(&dt->lock);
	dt->dying = true;
	spin_unlock_irq(&dt->lock);
	dmu_channel_detach(dt);
	dmu_drop_pushes(dt);
	dmu_fail_all(dt, BLK_STS_IOERR);
	mutex_unlock(&dt->mutex);

	cancel_delayed_work_sync(&dt->timeout_work);
	cancel_delayed_work_sync(&dt->retry_work);
	flush_workqueue(dt->wq);
	wait_event(dt->drain_wait, dmu_inflight_done(dt));
	flush_workqueue(dt->wq);
	/*
	 * Nothing arms them once dying is set (dmu_arm_timeout and
	 * dmu_commit_done check it); cancelled again all the same, as work
	 * left queued here would outlive dt.
	 */
	cancel_delayed_work_sync(&dt->timeout_work);
	cancel_delayed_work_sync(&dt->retry_work);
	dmu_trackers_exit(dt);
	/* Every request and push is freed by now, and with it its answer. */
	WARN_ON_ONCE(atomic_read(&dt->open_msgs));
	dmu_pool_teardown(dt);
}

/*
 * dtr: drop the table's reference; the last table kills dt.  (dm destroys
 * a device's inactive table before its live one, and a table destroyed
 * without ever being live, or after a failed resume, must not take the
 * state with it.)
 */
void dmu_pool_put(struct dmu_tc *tc)
{
	struct dmu_target *dt = tc->dt;
	bool kill;

	mutex_lock(&dmu_registry_lock);
	list_del(&tc->list);
	dt->nr_tables--;
	kill = !dt->nr_tables;
	if (kill) {
		list_del_init(&dt->registry);
	} else if (dt->ti == tc->ti) {
		/*
		 * The live table went first (a failed resume after a swap): no
		 * I/O maps through it any more, but dt->ti must not dangle (it
		 * names the device to dm_noflush_suspending()).  Any table of
		 * the device will do until the next resume activates one.
		 */
		spin_lock_irq(&dt->lock);
		dt->ti = list_first_entry(&dt->tables, struct dmu_tc, list)->ti;
		spin_unlock_irq(&dt->lock);
	}
	mutex_unlock(&dmu_registry_lock);
	if (kill)
		dmu_pool_kill(dt);
	dmu_target_put(dt);
}
