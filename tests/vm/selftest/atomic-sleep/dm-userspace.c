// SPDX-License-Identifier: GPL-2.0
/*
 * Debug-lane self-test only: allocates with GFP_KERNEL, which may sleep,
 * while holding a spinlock. DEBUG_ATOMIC_SLEEP must report a sleeping
 * function called from an invalid context.
 */
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/spinlock.h>

static DEFINE_SPINLOCK(selftest_lock);

static int __init selftest_init(void)
{
	void *p;

	spin_lock(&selftest_lock);
	p = kmalloc(64, GFP_KERNEL);	/* must be GFP_ATOMIC here */
	spin_unlock(&selftest_lock);
	kfree(p);
	return 0;
}

static void __exit selftest_exit(void)
{
}

module_init(selftest_init);
module_exit(selftest_exit);
MODULE_DESCRIPTION("dmu debug-lane self-test: sleeps in atomic context");
MODULE_LICENSE("GPL");
