// SPDX-License-Identifier: GPL-2.0
/*
 * mm/gup_test.c, unmodified, as a loadable module, so that hmm-tests'
 * hmm_gup_test finds /sys/kernel/debug/gup_test on a stock kernel.
 *
 * The one symbol it reaches that modules cannot is get_pfnblock_migratetype(),
 * through the CMA check of folio_is_longterm_pinnable()
 * (include/linux/mm.h:2824 in the pinned linux-source), used only in a WARN
 * diagnostic of the longterm-pin path. The same check without the CMA part
 * stands in for it.
 */
#include <linux/debugfs.h>
#include <linux/memremap.h>
#include <linux/mm.h>
#include <linux/module.h>

static bool gup_test_longterm_pinnable(struct folio *folio)
{
	if (is_zero_folio(folio))
		return true;
	if (folio_is_device_coherent(folio) || folio_is_fsdax(folio))
		return false;
	return !folio_is_zone_movable(folio);
}

#define folio_is_longterm_pinnable gup_test_longterm_pinnable
#undef late_initcall
#define late_initcall module_init
#include "gup_test.c"

static void __exit gup_test_exit(void)
{
	debugfs_lookup_and_remove("gup_test", NULL);
}
module_exit(gup_test_exit);

MODULE_DESCRIPTION("mm/gup_test.c as a module, for hmm-tests' hmm_gup_test");
MODULE_LICENSE("GPL");
