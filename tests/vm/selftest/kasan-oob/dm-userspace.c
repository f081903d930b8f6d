// SPDX-License-Identifier: GPL-2.0
/*
 * Debug-lane self-test only: reads one byte past the end of a kmalloc'ed
 * buffer. KASAN must report a slab-out-of-bounds read.
 */
#include <linux/module.h>
#include <linux/slab.h>

static int __init selftest_init(void)
{
	char *p = kmalloc(40, GFP_KERNEL);
	volatile char *v = p;
	char c;

	if (!p)
		return -ENOMEM;
	c = v[40];	/* one past the end: KASAN's redzone */
	pr_info("dm-userspace self-test: read %d past the end\n", c);
	kfree(p);
	return 0;
}

static void __exit selftest_exit(void)
{
}

module_init(selftest_init);
module_exit(selftest_exit);
MODULE_DESCRIPTION("dmu debug-lane self-test: out-of-bounds read");
MODULE_LICENSE("GPL");
