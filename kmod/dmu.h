/* SPDX-License-Identifier: GPL-2.0 */
/*
 * dm-userspace: internal definitions shared by the target's source files.
 * (Skeleton: the target registers, parses its table and exposes the control
 * device; the request path follows.)
 */
#ifndef DMU_H
#define DMU_H

#include <linux/device-mapper.h>
#include <linux/dm-userspace.h>

#define DM_MSG_PREFIX "userspace"

struct dmu_target {
	struct dm_target *ti;
	char key[DMU_KEY_LEN];
	u32 block_sectors;
	u32 nr_devs;
	unsigned int daemon_timeout;	/* seconds */
	unsigned int max_extents;
	struct dm_dev **devs;
};

int dmu_control_init(void);
void dmu_control_exit(void);

#endif /* DMU_H */
