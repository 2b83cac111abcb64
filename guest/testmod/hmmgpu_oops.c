// SPDX-License-Identifier: GPL-2.0
/*
 * hmmgpu_oops: a deliberately faulty module. The harness loads it to prove
 * that a guest kernel Oops or WARNING fails the test that caused it.
 *
 *   insmod hmmgpu_oops.ko mode=warn   -> WARN_ON(1)
 *   insmod hmmgpu_oops.ko mode=oops   -> NULL pointer dereference
 *   insmod hmmgpu_oops.ko mode=hang   -> insmod sleeps uninterruptibly for an
 *                                        hour: the hung task detector's case
 */
#include <linux/module.h>
#include <linux/string.h>
#include <linux/bug.h>
#include <linux/compiler.h>
#include <linux/delay.h>

static char *mode = "warn";
/* Never assigned; not static, so the compiler cannot prove it is NULL. */
int *hmmgpu_oops_target;
module_param(mode, charp, 0444);
MODULE_PARM_DESC(mode, "warn, oops or hang");

static int __init hmmgpu_oops_init(void)
{
	if (!strcmp(mode, "warn")) {
		WARN(1, "hmmgpu_oops: deliberate warning\n");
	} else if (!strcmp(mode, "oops")) {
		pr_info("hmmgpu_oops: dereferencing NULL on purpose\n");
		WRITE_ONCE(*hmmgpu_oops_target, 1);
	} else if (!strcmp(mode, "hang")) {
		pr_info("hmmgpu_oops: sleeping uninterruptibly on purpose\n");
		msleep(3600 * 1000);	/* TASK_UNINTERRUPTIBLE, no wakeup */
	} else {
		return -EINVAL;
	}
	return 0;
}

static void __exit hmmgpu_oops_exit(void)
{
}

module_init(hmmgpu_oops_init);
module_exit(hmmgpu_oops_exit);
MODULE_DESCRIPTION("hmmgpu harness self-test: deliberate WARN, Oops or hang");
MODULE_LICENSE("GPL");
