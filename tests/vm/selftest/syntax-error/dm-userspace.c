// SPDX-License-Identifier: GPL-2.0
/* Harness self-test only: a module that does not compile. */
#include <linux/module.h>

static int __init selftest_init(void)
{
	return 0 /* missing semicolon: the build must fail loudly */
}

module_init(selftest_init);
MODULE_LICENSE("GPL");
