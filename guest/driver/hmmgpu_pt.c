// SPDX-License-Identifier: GPL-2.0
/*
 * hmmgpu: the device page tables of one mirror.
 *
 * DOC: page tables
 * The device walks a 4-level radix tree in system memory (docs/hardware.md).
 * Each table is a coherent DMA page the device reads; next to it the driver
 * keeps the CPU pointers of the child tables. Leaf PTEs that point at system
 * memory hold addresses from dma_map_page(), which are unmapped when the PTE
 * is cleared. Tables stay allocated until the mirror goes away. All of this is
 * protected by hmmgpu_mirror.mutex.
 */
#include <linux/dma-mapping.h>
#include <linux/slab.h>

#include "hmmgpu.h"

struct hmmgpu_pt {
	u64 *cpu;			/* HMMGPU_PT_ENTRIES entries, read by the device */
	dma_addr_t dma;
	struct hmmgpu_pt *child[HMMGPU_PT_ENTRIES];
};

static unsigned int pt_index(unsigned long va, unsigned int level)
{
	return (va >> (HMMGPU_PAGE_SHIFT + 9 * level)) & (HMMGPU_PT_ENTRIES - 1);
}

static struct hmmgpu_pt *pt_alloc(struct hmmgpu *gpu)
{
	struct hmmgpu_pt *pt = kzalloc_obj(*pt);

	if (!pt)
		return NULL;
	pt->cpu = dma_alloc_coherent(&gpu->pdev->dev, PAGE_SIZE, &pt->dma, GFP_KERNEL);
	if (!pt->cpu) {
		kfree(pt);
		return NULL;
	}
	return pt;
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
	mirror->root = pt_alloc(mirror->gpu);
	return mirror->root ? 0 : -ENOMEM;
}

dma_addr_t hmmgpu_pt_root_dma(struct hmmgpu_mirror *mirror)
{
	return mirror->root->dma;
}

void hmmgpu_pt_destroy(struct hmmgpu_mirror *mirror)
{
	if (mirror->root)
		pt_free(mirror->gpu, mirror->root, HMMGPU_PT_LEVELS - 1);
	mirror->root = NULL;
}

/*
 * Install @pte (address and flags, VALID implied) for the 4 KiB (order 0) or
 * 2 MiB (order 9) page at @va. A 2 MiB mapping is only made where no 4 KiB
 * table exists yet; otherwise -EEXIST tells the caller to map small pages.
 * *replaced is set when a valid entry was overwritten (the TLB may hold it).
 */
int hmmgpu_pt_map(struct hmmgpu_mirror *mirror, unsigned long va, u64 pte,
		  unsigned int order, bool *replaced)
{
	unsigned int leaf_level = order ? 1 : 0;
	struct hmmgpu_pt *pt = mirror->root;
	unsigned int level, i;
	u64 old;

	for (level = HMMGPU_PT_LEVELS - 1; level > leaf_level; level--) {
		i = pt_index(va, level);
		if (!pt->child[i]) {
			if (level == 1 && (pt->cpu[i] & HMMGPU_PTE_VALID)) {
				/* a 2 MiB page is here: replace it by a table */
				pt_unmap_leaf(mirror->gpu, pt->cpu[i]);
				WRITE_ONCE(pt->cpu[i], 0);
				*replaced = true;
			}
			pt->child[i] = pt_alloc(mirror->gpu);
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
	if (old & HMMGPU_PTE_VALID) {
		pt_unmap_leaf(mirror->gpu, old);
		*replaced = true;
	}
	WRITE_ONCE(pt->cpu[i], pte | HMMGPU_PTE_VALID | (order ? HMMGPU_PTE_LARGE : 0));
	return 0;
}

static bool pt_clear(struct hmmgpu *gpu, struct hmmgpu_pt *pt, unsigned int level,
		     unsigned long base, unsigned long start, unsigned long end)
{
	unsigned long span = 1UL << (HMMGPU_PAGE_SHIFT + 9 * level);
	bool cleared = false;
	unsigned int i;

	for (i = 0; i < HMMGPU_PT_ENTRIES; i++) {
		unsigned long lo = base + i * span, hi = lo + span;

		if (hi <= start || lo >= end)
			continue;
		if (pt->child[i]) {
			cleared |= pt_clear(gpu, pt->child[i], level - 1, lo, start, end);
		} else if (pt->cpu[i] & HMMGPU_PTE_VALID) {
			/* a leaf; a 2 MiB page partly in range goes whole */
			pt_unmap_leaf(gpu, pt->cpu[i]);
			WRITE_ONCE(pt->cpu[i], 0);
			cleared = true;
		}
	}
	return cleared;
}

/* Clear every leaf mapping in [start, end); true if any was valid. */
bool hmmgpu_pt_clear(struct hmmgpu_mirror *mirror, unsigned long start, unsigned long end)
{
	if (!mirror->root)
		return false;
	return pt_clear(mirror->gpu, mirror->root, HMMGPU_PT_LEVELS - 1, 0, start, end);
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
