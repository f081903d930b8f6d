// SPDX-License-Identifier: GPL-2.0
/*
 * dm-userspace target "userspace" (skeleton): parses the table line and
 * registers the target; I/O is refused until the request path lands.
 */
#include <linux/module.h>
#include <linux/slab.h>

#include "dmu.h"

static unsigned int dmu_default_timeout = 30;
module_param_named(daemon_timeout, dmu_default_timeout, uint, 0644);
MODULE_PARM_DESC(daemon_timeout, "Default seconds I/O waits for a daemon to bind");

static unsigned int dmu_default_max_extents = 65536;
module_param_named(max_extents, dmu_default_max_extents, uint, 0644);
MODULE_PARM_DESC(max_extents, "Default bound on cached extents per target");

static void dmu_put_devs(struct dmu_target *dt)
{
	u32 i;

	for (i = 0; i < dt->nr_devs; i++)
		if (dt->devs[i])
			dm_put_device(dt->ti, dt->devs[i]);
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

/*
 * <key> <block_sectors> <nr_devs> <dev>... [<#opt_args> <opt_arg>...]
 */
static int dmu_ctr(struct dm_target *ti, unsigned int argc, char **argv)
{
	static const struct dm_arg nr_devs_arg = {1, 64, "Invalid number of devices (1..64)"};
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
	if (strlen(key) >= DMU_KEY_LEN) {
		ti->error = "Key too long (at most 63 characters)";
		return -EINVAL;
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
	dt->max_extents = dmu_default_max_extents;
	dt->devs = kcalloc(nr_devs, sizeof(*dt->devs), GFP_KERNEL);
	if (!dt->devs) {
		ti->error = "Cannot allocate device array";
		r = -ENOMEM;
		goto bad;
	}
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
	ti->private = dt;
	return 0;
bad:
	dmu_put_devs(dt);
	kfree(dt->devs);
	kfree(dt);
	return r;
}

static void dmu_dtr(struct dm_target *ti)
{
	struct dmu_target *dt = ti->private;

	dmu_put_devs(dt);
	kfree(dt->devs);
	kfree(dt);
}

static int dmu_map(struct dm_target *ti, struct bio *bio)
{
	return DM_MAPIO_KILL;
}

static void dmu_status(struct dm_target *ti, status_type_t type,
		       unsigned int status_flags, char *result, unsigned int maxlen)
{
	struct dmu_target *dt = ti->private;
	unsigned int sz = 0;
	u32 i;

	switch (type) {
	case STATUSTYPE_INFO:
		DMEMIT("daemon=absent");
		break;
	case STATUSTYPE_TABLE:
		DMEMIT("%s %u %u", dt->key, dt->block_sectors, dt->nr_devs);
		for (i = 0; i < dt->nr_devs; i++)
			DMEMIT(" %s", dt->devs[i]->name);
		DMEMIT(" 4 daemon_timeout %u max_extents %u",
		       dt->daemon_timeout, dt->max_extents);
		break;
	default:
		break;
	}
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

static struct target_type dmu_target_type = {
	.name = DMU_TARGET_NAME,
	.version = {DMU_VERSION_MAJOR, DMU_VERSION_MINOR, DMU_VERSION_PATCH},
	.module = THIS_MODULE,
	.ctr = dmu_ctr,
	.dtr = dmu_dtr,
	.map = dmu_map,
	.status = dmu_status,
	.iterate_devices = dmu_iterate_devices,
};

static int __init dmu_init(void)
{
	int r;

	r = dmu_control_init();
	if (r)
		return r;
	r = dm_register_target(&dmu_target_type);
	if (r) {
		DMERR("cannot register target: %d", r);
		dmu_control_exit();
	}
	return r;
}

static void __exit dmu_exit(void)
{
	dm_unregister_target(&dmu_target_type);
	dmu_control_exit();
}

module_init(dmu_init);
module_exit(dmu_exit);

MODULE_DESCRIPTION(DM_NAME " target whose block map lives in a userspace daemon");
MODULE_AUTHOR("dmu project");
MODULE_LICENSE("GPL");
MODULE_SOFTDEP("pre: dm-mod");
