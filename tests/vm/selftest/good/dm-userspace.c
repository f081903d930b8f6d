// SPDX-License-Identifier: GPL-2.0
/*
 * Harness self-test only: a module named dm-userspace that loads and does
 * nothing, so the self-test can tell harness failures from module failures.
 */
#include <linux/module.h>

static int __init selftest_init(void)
{
	return 0;
}

static void __exit selftest_exit(void)
{
}

module_init(selftest_init);
module_exit(selftest_exit);
MODULE_DESCRIPTION("dmu VM harness self-test: a module that loads");
MODULE_LICENSE("GPL");
