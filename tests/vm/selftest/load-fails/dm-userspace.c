// SPDX-License-Identifier: GPL-2.0
/*
 * Harness self-test only: a module whose init fails, as a broken target's
 * would. Every VM case must then fail before it runs.
 */
#include <linux/module.h>

static int __init selftest_init(void)
{
	pr_err("dm-userspace self-test: refusing to load\n");
	return -ENODEV;
}

module_init(selftest_init);
MODULE_DESCRIPTION("dmu VM harness self-test: a module that fails to load");
MODULE_LICENSE("GPL");
