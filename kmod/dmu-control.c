// SPDX-License-Identifier: GPL-2.0
/*
 * dm-userspace control device /dev/dm-userspace (skeleton): root-only misc
 * device a daemon will bind to a target through.
 */
#include <linux/fs.h>
#include <linux/miscdevice.h>
#include <linux/module.h>

#include "dmu.h"

static int dmu_control_open(struct inode *inode, struct file *file)
{
	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;
	return 0;
}

static long dmu_control_ioctl(struct file *file, unsigned int cmd,
			      unsigned long arg)
{
	return -ENOTTY;
}

static const struct file_operations dmu_control_fops = {
	.owner = THIS_MODULE,
	.open = dmu_control_open,
	.unlocked_ioctl = dmu_control_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.llseek = noop_llseek,
};

static struct miscdevice dmu_control_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = DMU_CONTROL_NAME,
	.fops = &dmu_control_fops,
	.mode = 0600,
};

int dmu_control_init(void)
{
	return misc_register(&dmu_control_misc);
}

void dmu_control_exit(void)
{
	misc_deregister(&dmu_control_misc);
}
