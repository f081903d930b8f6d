// SPDX-License-Identifier: GPL-2.0
/*
 * Debug-lane self-test only: takes two mutexes in one order, then in the
 * other. No deadlock happens (one task), but lockdep must report a possible
 * circular locking dependency.
 */
#include <linux/module.h>
#include <linux/mutex.h>

static DEFINE_MUTEX(selftest_a);
static DEFINE_MUTEX(selftest_b);

static int __init selftest_init(void)
{
	mutex_lock(&selftest_a);
	mutex_lock(&selftest_b);
	mutex_unlock(&selftest_b);
	mutex_unlock(&selftest_a);

	mutex_lock(&selftest_b);
	mutex_lock(&selftest_a);
	mutex_unlock(&selftest_a);
	mutex_unlock(&selftest_b);
	return 0;
}

static void __exit selftest_exit(void)
{
}

module_init(selftest_init);
module_exit(selftest_exit);
MODULE_DESCRIPTION("dmu debug-lane self-test: inverted lock order");
MODULE_LICENSE("GPL");
