// SPDX-License-Identifier: GPL-2.0
/*
 * Debug-lane self-test only: a module that loses the only pointers to four
 * kmalloc'ed buffers at load time. kmemleak must report them after the case.
 */
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/string.h>

static noinline int selftest_leak(void)
{
	void *p;
	int i;

	for (i = 0; i < 4; i++) {
		p = kmalloc(192, GFP_KERNEL);
		if (!p)
			return -ENOMEM;
		memset(p, 0x5a, 192);	/* no pointer-like values inside */
	}
	return 0;
}

static int __init selftest_init(void)
{
	return selftest_leak();
}

static void __exit selftest_exit(void)
{
}

module_init(selftest_init);
module_exit(selftest_exit);
MODULE_DESCRIPTION("dmu debug-lane self-test: leaks memory");
MODULE_LICENSE("GPL");
