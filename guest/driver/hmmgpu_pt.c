// SPDX-License-Identifier: GPL-2.0
/*
 * hmmgpu: the device page tables of one mirror.
 */

/**
 * DOC: page tables
 *
 * The device walks a 4-level radix tree in system memory (docs/hardware.md).
 * Each table is a coherent DMA page the device reads; next to it the driver
 * keeps the CPU pointers of the child tables. Leaf PTEs that point at system
 * memory hold addresses from dma_map_page(). Tables stay allocated until the
 * mirror goes away. All of this is protected by hmmgpu_mirror.mutex.
 *
 * A PTE that is cleared or overwritten is retired, not unmapped: the device
 * may still hold it in its TLB and reach the page until TLB_INVALIDATE has
 * completed, and the kernel reuses the page (and, behind an IOMMU, the bus
 * address) as soon as the notifier returns. hmmgpu_pt_sync() invalidates the
 * device TLB and only then unmaps what was retired. The order: clear,
 * invalidate and wait, unmap - a bus address is the device's to use until
 * dma_unmap_page() (Documentation/core-api/dma-api.rst:285).
 *
 * That mutex is also taken by the mmu_interval_notifier, which reclaim can
 * call, so nothing may allocate with reclaim while holding it: lockdep knows
 * reclaim as a taker of every invalidate_range_start (mm/page_alloc.c:4395,
 * mm/mmu_notifier.c:28), and test_hmm.c allocates GFP_ATOMIC there for the
 * same reason. Tables are therefore reserved beforehand with GFP_KERNEL,
 * outside the mutex (hmmgpu_pt_reserve()); under it only the reserve and
 * GFP_NOWAIT are used, and -ENOMEM tells the caller to reserve and retry.
 */
#include <linux/dma-mapping.h>
#include <linux/slab.h>

#include "hmmgpu.h"

#define PT_LARGE_SIZE	(1UL << HMMGPU_LARGE_PAGE_SHIFT)

struct hmmgpu_pt {
	u64 *cpu;			/* HMMGPU_PT_ENTRIES entries, read by the device */
	dma_addr_t dma;
	struct hmmgpu_pt *child[HMMGPU_PT_ENTRIES];
	struct list_head spare;		/* on hmmgpu_mirror.spare_pts until used */
};

static unsigned int pt_index(unsigned long va, unsigned int level)
{
	return HMMGPU_PT_INDEX(va, level);
}

static struct hmmgpu_pt *pt_alloc(struct hmmgpu *gpu, gfp_t gfp)
{
	struct hmmgpu_pt *pt = kzalloc(sizeof(*pt), gfp);

	if (!pt)
		return NULL;
	pt->cpu = dma_alloc_coherent(&gpu->pdev->dev, PAGE_SIZE, &pt->dma, gfp);
	if (!pt->cpu) {
		kfree(pt);
		return NULL;
	}
	return pt;
}

/* A table while holding mirror->mutex: from the reserve, else without reclaim. */
static struct hmmgpu_pt *pt_alloc_locked(struct hmmgpu_mirror *mirror)
{
	struct hmmgpu_pt *pt;

	lockdep_assert_held(&mirror->mutex);
	pt = list_first_entry_or_null(&mirror->spare_pts, struct hmmgpu_pt, spare);
	if (pt) {
		list_del(&pt->spare);
		mirror->nr_spare--;
		return pt;
	}
	return pt_alloc(mirror->gpu, GFP_NOWAIT | __GFP_NOWARN);
}

/*
 * Make sure @n tables are in reserve for the next mappings. Called without
 * mirror->mutex: this is where the page tables' memory may enter reclaim.
 */
int hmmgpu_pt_reserve(struct hmmgpu_mirror *mirror, unsigned int n)
{
	struct hmmgpu_pt *pt;
	LIST_HEAD(fresh);
	unsigned int have, added = 0;

	/*
	 * Enough already (the usual fault, on a range whose tables exist): no
	 * mutex. Others may take spares before the caller maps, as they may
	 * after the locked read below: pt_alloc_locked() then tries GFP_NOWAIT.
	 */
	if (READ_ONCE(mirror->nr_spare) >= n)
		return 0;
	mutex_lock(&mirror->mutex);
	have = mirror->nr_spare;
	mutex_unlock(&mirror->mutex);
	while (have + added < n) {
		pt = pt_alloc(mirror->gpu, GFP_KERNEL);
		if (!pt)
			break;
		list_add(&pt->spare, &fresh);
		added++;
	}
	mutex_lock(&mirror->mutex);
	list_splice(&fresh, &mirror->spare_pts);
	mirror->nr_spare += added;
	mutex_unlock(&mirror->mutex);
	return have + added < n ? -ENOMEM : 0;
}

/* Undo the DMA mapping of a leaf PTE that points at system memory. */
static void pt_unmap_leaf(struct hmmgpu *gpu, u64 pte)
{
	size_t size = (pte & HMMGPU_PTE_LARGE) ? 1UL << HMMGPU_LARGE_PAGE_SHIFT : PAGE_SIZE;

	if ((pte & HMMGPU_PTE_VALID) && !(pte & HMMGPU_PTE_VRAM))
		dma_unmap_page(&gpu->pdev->dev, pte & HMMGPU_PTE_ADDR_MASK, size,
			       DMA_BIDIRECTIONAL);
}

static void pt_free(struct hmmgpu *gpu, struct hmmgpu_pt *pt, unsigned int level)
{
	unsigned int i;

	for (i = 0; i < HMMGPU_PT_ENTRIES; i++) {
		if (pt->child[i])
			pt_free(gpu, pt->child[i], level - 1);
		else if (level <= 1)
			pt_unmap_leaf(gpu, pt->cpu[i]);
	}
	dma_free_coherent(&gpu->pdev->dev, PAGE_SIZE, pt->cpu, pt->dma);
	kfree(pt);
}

int hmmgpu_pt_create(struct hmmgpu_mirror *mirror)
{
	INIT_LIST_HEAD(&mirror->spare_pts);
	mirror->nr_spare = 0;
	mirror->nr_retired = 0;
	mirror->tlb_stale = false;
	mirror->stale_start = ULONG_MAX;
	mirror->stale_end = 0;
	mirror->retired = kmalloc_array(HMMGPU_PT_RETIRE_MAX, sizeof(u64), GFP_KERNEL);
	if (!mirror->retired)
		return -ENOMEM;
	mirror->root = pt_alloc(mirror->gpu, GFP_KERNEL);
	if (!mirror->root) {
		kfree(mirror->retired);
		mirror->retired = NULL;
		return -ENOMEM;
	}
	return 0;
}

static void pt_unmap_retired(struct hmmgpu_mirror *mirror)
{
	unsigned int i;

	for (i = 0; i < mirror->nr_retired; i++)
		pt_unmap_leaf(mirror->gpu, mirror->retired[i]);
	mirror->nr_retired = 0;
}

/*
 * The TLB_INVALIDATE flags of a sync of @len bytes (0: the whole context).
 * While a mirror lives only its leaf PTEs change: tables are freed by
 * hmmgpu_pt_destroy() alone, after PT_BASE is cleared and the whole context
 * invalidated. So a range sync is LEAF, and the device keeps its cached paths
 * to the level-0 tables (a fault after a munmap then reads one PTE); a
 * whole-context one drops them (docs/hardware.md, TLB).
 */
static u32 pt_invalidate_flags(unsigned long len)
{
	return len ? HMMGPU_CMD_LEAF : 0;
}

/* After the TLB invalidation that covers the retired PTEs, with its result. */
static int pt_synced(struct hmmgpu_mirror *mirror, int ret)
{
	if (ret == -ENODEV) {
		/* a device that is gone reaches no memory: the pages may go */
		ret = 0;
	} else if (ret) {
		/* the device may still reach them: better leaked than reused under it */
		dev_err(&mirror->gpu->pdev->dev, "ctx %u: TLB invalidation failed (%d)\n",
			mirror->ctx, ret);
		return ret;
	}
	mirror->tlb_stale = false;
	mirror->stale_start = ULONG_MAX;
	mirror->stale_end = 0;
	pt_unmap_retired(mirror);
	return 0;
}

/*
 * The device forgets every PTE cleared or replaced since the last sync, then
 * the retired pages are unmapped. The TLB_INVALIDATE covers [start, start +
 * len) (len 0: the whole context) and every VA retired since the last sync:
 * those may lie outside the caller's range (a notifier's sync must not
 * unmap, nor forget, what an unfinished fault-in replaced elsewhere). Called
 * with mirror->mutex held; sleeps.
 */
int hmmgpu_pt_sync(struct hmmgpu_mirror *mirror, unsigned long start, unsigned long len)
{
	int ret;

	lockdep_assert_held(&mirror->mutex);
	if (!mirror->tlb_stale)
		return 0;
	if (len && mirror->stale_start < mirror->stale_end) {
		unsigned long end = max(start + len, mirror->stale_end);

		start = min(start, mirror->stale_start);
		len = end - start;
	}
	ret = hmmgpu_tlb_invalidate(mirror->gpu, mirror->ctx, start, len,
				    pt_invalidate_flags(len));
	return pt_synced(mirror, ret);
}

/*
 * The TLB flush @mirror owes, as @cmd: the first command of a kernel-queue
 * batch the caller runs next (a migration's copy, hmmgpu_devmem.c). True,
 * with mirror->mutex held, when it owes one; then hmmgpu_pt_sync_end() with
 * the batch's result.
 */
bool hmmgpu_pt_sync_begin(struct hmmgpu_mirror *mirror, struct hmmgpu_command *cmd)
{
	bool range;

	mutex_lock(&mirror->mutex);
	if (!mirror->tlb_stale) {
		mutex_unlock(&mirror->mutex);
		return false;
	}
	range = mirror->stale_start < mirror->stale_end;
	hmmgpu_cmd(cmd, HMMGPU_OP_TLB_INVALIDATE, pt_invalidate_flags(range), mirror->ctx,
		   range ? mirror->stale_start : 0,
		   range ? mirror->stale_end - mirror->stale_start : 0, 0);
	return true;
}

void hmmgpu_pt_sync_end(struct hmmgpu_mirror *mirror, int ret)
{
	lockdep_assert_held(&mirror->mutex);
	pt_synced(mirror, ret);
	mutex_unlock(&mirror->mutex);
}

/* hmmgpu_pt_sync() of [start, end), taking mirror->mutex for it. */
int hmmgpu_pt_flush(struct hmmgpu_mirror *mirror, unsigned long start, unsigned long end)
{
	int ret;

	mutex_lock(&mirror->mutex);
	ret = hmmgpu_pt_sync(mirror, start, end - start);
	mutex_unlock(&mirror->mutex);
	return ret;
}

/* The leaf PTE of [va, va + size) leaves the table: unmapped at the next hmmgpu_pt_sync(). */
static void pt_retire(struct hmmgpu_mirror *mirror, unsigned long va, unsigned long size, u64 pte)
{
	mirror->tlb_stale = true;
	mirror->stale_start = min(mirror->stale_start, va);
	mirror->stale_end = max(mirror->stale_end, va + size);
	if ((pte & HMMGPU_PTE_VRAM) || !(pte & HMMGPU_PTE_VALID))
		return;
	if (mirror->nr_retired == HMMGPU_PT_RETIRE_MAX)
		hmmgpu_pt_sync(mirror, 0, 0);
	if (mirror->nr_retired < HMMGPU_PT_RETIRE_MAX)
		mirror->retired[mirror->nr_retired++] = pte;
	else	/* the device failed to invalidate: it may still reach the page */
		dev_err_ratelimited(&mirror->gpu->pdev->dev,
				    "ctx %u: DMA mapping leaked, the TLB could not be invalidated\n",
				    mirror->ctx);
}

dma_addr_t hmmgpu_pt_root_dma(struct hmmgpu_mirror *mirror)
{
	return mirror->root->dma;
}

void hmmgpu_pt_destroy(struct hmmgpu_mirror *mirror)
{
	struct hmmgpu_pt *pt, *next;

	if (mirror->root)
		pt_free(mirror->gpu, mirror->root, HMMGPU_PT_LEVELS - 1);
	mirror->root = NULL;
	/* the device no longer walks these tables (PT_BASE cleared, TLB invalidated) */
	if (mirror->retired)
		pt_unmap_retired(mirror);
	kfree(mirror->retired);
	mirror->retired = NULL;
	list_for_each_entry_safe(pt, next, &mirror->spare_pts, spare) {
		list_del(&pt->spare);
		dma_free_coherent(&mirror->gpu->pdev->dev, PAGE_SIZE, pt->cpu, pt->dma);
		kfree(pt);
	}
	mirror->nr_spare = 0;
}

/*
 * Install @pte (address and flags, VALID implied) for the 4 KiB (order 0) or
 * 2 MiB (order 9) page at @va. A 2 MiB mapping is only made where no 4 KiB
 * table exists yet; otherwise -EEXIST tells the caller to map small pages.
 * A valid entry overwritten is retired: call hmmgpu_pt_sync() before the
 * device may use the range again.
 */
int hmmgpu_pt_map(struct hmmgpu_mirror *mirror, unsigned long va, u64 pte,
		  unsigned int order)
{
	unsigned int leaf_level = order ? 1 : 0;
	struct hmmgpu_pt *pt = mirror->root;
	unsigned int level, i;
	u64 old;

	lockdep_assert_held(&mirror->mutex);
	if (!pt)
		return -ENODEV;	/* the GPU is gone (hmmgpu_mirror_detach()) */
	for (level = HMMGPU_PT_LEVELS - 1; level > leaf_level; level--) {
		i = pt_index(va, level);
		if (!pt->child[i]) {
			if (level == 1 && (pt->cpu[i] & HMMGPU_PTE_VALID)) {
				/* a 2 MiB page is here: replace it by a table */
				old = pt->cpu[i];
				WRITE_ONCE(pt->cpu[i], 0);
				pt_retire(mirror, va & ~(PT_LARGE_SIZE - 1), PT_LARGE_SIZE, old);
			}
			pt->child[i] = pt_alloc_locked(mirror);
			if (!pt->child[i])
				return -ENOMEM;
			WRITE_ONCE(pt->cpu[i], pt->child[i]->dma | HMMGPU_PTE_VALID);
		}
		pt = pt->child[i];
	}
	i = pt_index(va, leaf_level);
	if (leaf_level == 1 && pt->child[i])
		return -EEXIST;
	old = pt->cpu[i];
	WRITE_ONCE(pt->cpu[i], pte | HMMGPU_PTE_VALID | (order ? HMMGPU_PTE_LARGE : 0));
	if (old & HMMGPU_PTE_VALID)
		pt_retire(mirror, va & ~((PAGE_SIZE << order) - 1), PAGE_SIZE << order, old);
	return 0;
}

/*
 * Visit the valid leaves in [start, end): with @clear, clear and retire them
 * (a 2 MiB page partly in range goes whole), else stop at the first. True if
 * there was any.
 */
static bool pt_scan(struct hmmgpu_mirror *mirror, struct hmmgpu_pt *pt, unsigned int level,
		    unsigned long base, unsigned long start, unsigned long end, bool clear)
{
	unsigned long span = 1UL << HMMGPU_PT_LEVEL_SHIFT(level);
	bool found = false;
	unsigned int i;

	for (i = 0; i < HMMGPU_PT_ENTRIES; i++) {
		unsigned long lo = base + i * span, hi = lo + span;
		u64 old = pt->cpu[i];

		if (hi <= start || lo >= end)
			continue;
		if (pt->child[i]) {
			found |= pt_scan(mirror, pt->child[i], level - 1, lo, start, end, clear);
		} else if (old & HMMGPU_PTE_VALID) {
			found = true;
			if (clear) {
				WRITE_ONCE(pt->cpu[i], 0);
				pt_retire(mirror, lo, span, old);
			}
		}
		if (found && !clear)
			break;
	}
	return found;
}

/* Clear every leaf mapping in [start, end); true if any was valid. */
bool hmmgpu_pt_clear(struct hmmgpu_mirror *mirror, unsigned long start, unsigned long end)
{
	lockdep_assert_held(&mirror->mutex);
	if (!mirror->root)
		return false;
	return pt_scan(mirror, mirror->root, HMMGPU_PT_LEVELS - 1, 0, start, end, true);
}

/* Whether anything in [start, end) is mapped for the device. */
bool hmmgpu_pt_mapped(struct hmmgpu_mirror *mirror, unsigned long start, unsigned long end)
{
	lockdep_assert_held(&mirror->mutex);
	if (!mirror->root)
		return false;
	return pt_scan(mirror, mirror->root, HMMGPU_PT_LEVELS - 1, 0, start, end, false);
}

/* The leaf PTE mapping @va, or 0. */
u64 hmmgpu_pt_lookup(struct hmmgpu_mirror *mirror, unsigned long va)
{
	struct hmmgpu_pt *pt = mirror->root;
	unsigned int level;

	for (level = HMMGPU_PT_LEVELS - 1; pt; level--) {
		u64 e = pt->cpu[pt_index(va, level)];

		if (!(e & HMMGPU_PTE_VALID))
			return 0;
		if (level == 0 || !pt->child[pt_index(va, level)])
			return e;
		pt = pt->child[pt_index(va, level)];
	}
	return 0;
}
