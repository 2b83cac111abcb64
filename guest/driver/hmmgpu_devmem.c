// SPDX-License-Identifier: GPL-2.0
/*
 * hmmgpu: VRAM as DEVICE_PRIVATE and DEVICE_COHERENT memory, and migration
 * with the copy engine.
 */

/**
 * DOC: device memory
 *
 * The VRAM is split in two pools, each one dev_pagemap and one
 * /dev/hmm_dmirrorN. The first part is MEMORY_DEVICE_PRIVATE over a free
 * physical range (request_free_mem_region()): the CPU cannot reach it and a
 * CPU access migrates the page back (migrate_to_ram). The rest, when the
 * device has a usable VRAM BAR, is MEMORY_DEVICE_COHERENT over the BAR itself:
 * the kernel maps it write-back (memremap_pages(), never ioremap) and the CPU
 * reads and writes those pages in place. A pool's page N is VRAM offset
 * vram_base + N * PAGE_SIZE. A bitmap of free pages and a free count per
 * 2 MiB chunk, under devmem_lock, serve both sizes of device folio: a THP
 * takes a whole free chunk, a 4 KiB page comes from a partly used chunk
 * first, and folio_free() gives pages back. Chunks that held a THP serve only
 * THPs afterwards. The coherent pool hands out 4 KiB pages only: a
 * PMD-mapped device-coherent THP cannot be collected for migration back with
 * MIGRATE_VMA_SELECT_DEVICE_COHERENT on this kernel (mm/migrate_device.c:155,
 * a PMD is collected only with SELECT_SYSTEM), so the kernel splits THP
 * sources instead.
 */

/**
 * DOC: migration
 *
 * Every copy is done by the device's COPY engine on the kernel queue, never
 * by the CPU: system -> VRAM for MIGRATE_TO_DEV, VRAM -> system for
 * MIGRATE_TO_SYS, for migrate_to_ram() (a CPU touching a device page) and for
 * eviction (RELEASE, unbind). A page that has no source (never touched
 * anonymous memory) is zeroed in VRAM with FILL.
 */
#include <linux/delay.h>
#include <linux/dma-mapping.h>
#include <linux/highmem.h>
#include <linux/log2.h>
#include <linux/memremap.h>
#include <linux/migrate.h>
#include <linux/mm.h>
#include <linux/pagemap.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>

#include "hmmgpu.h"
#include "test_hmm_uapi.h"

/* pages per migrate_vma round: 16 MiB, a whole number of THPs */
#define MIGRATE_CHUNK	(8 * HPAGE_PMD_NR)
#define MAX_RUN_PAGES	HPAGE_PMD_NR	/* pages one COPY may move */
/* below this many pages contiguous on both sides, a COPY_PAGES list is cheaper */
#define MIN_COPY_RUN	16

static bool sanitize = true;
module_param(sanitize, bool, 0444);
MODULE_PARM_DESC(sanitize, "report VRAM folios to the device's sanitizer (default: on)");

static unsigned int migrate_to_ram_kb = 64;
module_param(migrate_to_ram_kb, uint, 0644);
MODULE_PARM_DESC(migrate_to_ram_kb,
		 "what a CPU fault on a device-private page brings back: the aligned block of this many KiB around it, within its VMA (rounded up to a power of two, 4 KiB: the page alone, to 2 MiB; default 64)");

/* The block migrate_to_ram() brings back, in bytes: at most a PMD, so no THP is cut. */
static unsigned long hmmgpu_migrate_window(void)
{
	unsigned long kb = READ_ONCE(migrate_to_ram_kb);

	return roundup_pow_of_two(clamp(kb << 10, PAGE_SIZE, PMD_SIZE));
}

static int coherent_mb = -1;
module_param(coherent_mb, int, 0444);
MODULE_PARM_DESC(coherent_mb,
		 "VRAM MiB used as device-coherent memory through the VRAM BAR (default -1: half; 0: none)");

static const struct dev_pagemap_ops hmmgpu_private_ops;
static const struct dev_pagemap_ops hmmgpu_coherent_ops;

/*
 * Driver sanitizer: the device learns which VRAM pages we hold. Allocations
 * and frees are queued in order under devmem_lock and sent before the next
 * submission (hmmgpu_san_flush()), merged into aligned power-of-two runs:
 * one register write per run, not per page.
 */
static void hmmgpu_san_vram(struct hmmgpu *gpu, unsigned long idx, unsigned int order,
			    bool alloc)
{
	struct hmmgpu_san_run *last;

	if (!sanitize)
		return;
	lockdep_assert_held(&gpu->devmem_lock);
	last = gpu->san_nruns ? &gpu->san_runs[gpu->san_nruns - 1] : NULL;
	if (last && last->alloc == alloc && last->start + last->pages == idx) {
		last->pages += 1UL << order;
		return;
	}
	if (gpu->san_nruns == ARRAY_SIZE(gpu->san_runs))
		hmmgpu_san_flush_locked(gpu);
	gpu->san_runs[gpu->san_nruns++] = (struct hmmgpu_san_run) {
		.start = idx, .pages = 1UL << order, .alloc = alloc };
}

void hmmgpu_san_flush_locked(struct hmmgpu *gpu)
{
	unsigned int i;

	for (i = 0; i < gpu->san_nruns; i++) {
		struct hmmgpu_san_run *r = &gpu->san_runs[i];
		unsigned long idx = r->start, end = r->start + r->pages;

		while (idx < end) {
			unsigned int order = min3(__ffs(idx | BIT(HMMGPU_SAN_ORDER_MASK)),
						  __fls(end - idx),
						  (unsigned long)HMMGPU_SAN_ORDER_MASK);

			hmmgpu_write(gpu, HMMGPU_REG_SAN_VRAM, idx << HMMGPU_SAN_PAGE_SHIFT |
				     order << HMMGPU_SAN_ORDER_SHIFT |
				     (r->alloc ? HMMGPU_SAN_VRAM_ALLOC : 0));
			idx += 1UL << order;
		}
	}
	gpu->san_nruns = 0;
}

void hmmgpu_san_flush(struct hmmgpu *gpu)
{
	if (!READ_ONCE(gpu->san_nruns))
		return;
	spin_lock(&gpu->devmem_lock);
	hmmgpu_san_flush_locked(gpu);
	spin_unlock(&gpu->devmem_lock);
}

/* The pool of any hmmgpu (this GPU or a peer) a page belongs to, else NULL. */
struct hmmgpu_pool *hmmgpu_page_pool(struct page *page)
{
	struct dev_pagemap *pgmap;

	if (!is_zone_device_page(page))
		return NULL;
	pgmap = page_pgmap(page);
	if (pgmap->ops != &hmmgpu_private_ops && pgmap->ops != &hmmgpu_coherent_ops)
		return NULL;
	return container_of(pgmap, struct hmmgpu_pool, pgmap);
}

bool hmmgpu_page_is_vram(struct hmmgpu *gpu, struct page *page)
{
	struct hmmgpu_pool *pool = hmmgpu_page_pool(page);

	return pool && pool->gpu == gpu;
}

/* The VRAM offset of a page of any hmmgpu, in the VRAM of the GPU that owns it. */
u64 hmmgpu_vram_offset(struct page *page)
{
	struct hmmgpu_pool *pool = hmmgpu_page_pool(page);

	return pool->vram_base + ((u64)(page_to_pfn(page) - pool->pfn) << PAGE_SHIFT);
}

static unsigned long hmmgpu_chunk_pages(struct hmmgpu_pool *pool, unsigned long c)
{
	return min_t(unsigned long, HPAGE_PMD_NR, pool->npages - c * HPAGE_PMD_NR);
}

/*
 * Pick the chunk for a 4 KiB page: a partly used one first, to keep whole
 * chunks for THPs. A chunk that has held a THP never serves 4 KiB pages, as
 * the reference driver's pools do: on 7.3, the pages of a freed device THP
 * reused as 4 KiB folios left CPU migration entries that never resolved.
 */
static long hmmgpu_chunk_for_page(struct hmmgpu_pool *pool)
{
	long c, any = -1;

	c = pool->hint;
	if (c < pool->nchunks && pool->chunk_free[c] && !test_bit(c, pool->large))
		return c;
	for (c = 0; c < pool->nchunks; c++) {
		if (!pool->chunk_free[c] || test_bit(c, pool->large))
			continue;
		if (pool->chunk_free[c] < hmmgpu_chunk_pages(pool, c))
			return c;
		if (any < 0)
			any = c;
	}
	return any;
}

/* Pick a whole chunk for a THP: one that held a THP before, else a fresh one. */
static long hmmgpu_chunk_for_thp(struct hmmgpu_pool *pool)
{
	long c, any = -1;

	if (pool->coherent)
		return -1;	/* 4 KiB pages only (the "device memory" section) */
	for (c = 0; c < pool->nchunks; c++) {
		if (pool->chunk_free[c] != HPAGE_PMD_NR)
			continue;
		if (test_bit(c, pool->large))
			return c;
		if (any < 0)
			any = c;
	}
	return any;
}

/* The sanitizer's page index of a pool's page @idx: VRAM pages, not pool pages. */
static unsigned long hmmgpu_san_index(struct hmmgpu_pool *pool, unsigned long idx)
{
	return (pool->vram_base >> PAGE_SHIFT) + idx;
}

/* Allocate a device folio of @order (0, or HPAGE_PMD_ORDER for a THP). */
static struct page *hmmgpu_devmem_alloc(struct hmmgpu_pool *pool, unsigned int order)
{
	struct hmmgpu *gpu = pool->gpu;
	unsigned long idx = ULONG_MAX;
	struct page *page;
	long c;

	spin_lock(&gpu->devmem_lock);
	if (order) {
		c = hmmgpu_chunk_for_thp(pool);
		if (c >= 0) {
			idx = c * HPAGE_PMD_NR;
			bitmap_clear(pool->bitmap, idx, HPAGE_PMD_NR);
			pool->chunk_free[c] = 0;
			__set_bit(c, pool->large);
		}
	} else {
		c = hmmgpu_chunk_for_page(pool);
		if (c >= 0) {
			idx = find_next_bit(pool->bitmap, c * HPAGE_PMD_NR +
					    hmmgpu_chunk_pages(pool, c), c * HPAGE_PMD_NR);
			__clear_bit(idx, pool->bitmap);
			pool->chunk_free[c]--;
			pool->hint = c;
		}
	}
	if (idx != ULONG_MAX) {
		pool->nfree -= 1UL << order;
		hmmgpu_san_vram(gpu, hmmgpu_san_index(pool, idx), order, true);
	}
	spin_unlock(&gpu->devmem_lock);
	if (idx == ULONG_MAX)
		return NULL;
	page = pfn_to_page(pool->pfn + idx);
	zone_device_folio_init(page_folio(page), &pool->pgmap, order);
	return page;
}

static void hmmgpu_folio_free(struct folio *folio)
{
	struct hmmgpu_pool *pool = hmmgpu_page_pool(&folio->page);
	unsigned long idx = folio_pfn(folio) - pool->pfn;
	unsigned long nr = folio_nr_pages(folio);
	struct hmmgpu *gpu = pool->gpu;

	spin_lock(&gpu->devmem_lock);
	hmmgpu_san_vram(gpu, hmmgpu_san_index(pool, idx), folio_order(folio), false);
	bitmap_set(pool->bitmap, idx, nr);
	pool->chunk_free[idx / HPAGE_PMD_NR] += nr;
	pool->nfree += nr;
	spin_unlock(&gpu->devmem_lock);
}

unsigned long hmmgpu_vram_free_pages(struct hmmgpu *gpu)
{
	return READ_ONCE(gpu->priv.nfree) + READ_ONCE(gpu->coh.nfree);
}

/*
 * The system side's bus addresses as a COPY_PAGES list, made when the first
 * short run needs one: a copy whose runs are all long enough for COPY (a
 * migration between contiguous blocks) allocates none. NULL: COPY per page
 * (and no other try after a failed allocation, @tried).
 */
static __le64 *hmmgpu_copy_list(struct hmmgpu *gpu, __le64 **list, dma_addr_t *list_dma,
				bool *tried, const u64 *sys, int n)
{
	int i;

	if (*tried || n < 2)
		return *list;
	*tried = true;
	*list = dma_alloc_coherent(&gpu->pdev->dev, n * sizeof(**list), list_dma,
				   GFP_KERNEL | __GFP_NOWARN);
	if (*list)
		for (i = 0; i < n; i++)
			(*list)[i] = cpu_to_le64(sys[i]);
	return *list;
}

/*
 * Copy @n pages with the device: page i moves from src[i] to dst[i] (bus
 * addresses or VRAM offsets per aperture); a src of U64_MAX means "no source
 * page" and zero-fills the destination. Runs in batches on the kernel queue:
 * one COPY per run contiguous on both sides, else one COPY_PAGES per run
 * contiguous in VRAM, its system pages listed (scattered anonymous memory).
 * @flush (optional): the mirror whose own migration this copy is; the TLB
 * flush its invalidation left owed goes first in the first batch.
 */
static int hmmgpu_copy_pages(struct hmmgpu *gpu, const u64 *src, const u64 *dst,
			     unsigned int src_ap, unsigned int dst_ap, int n,
			     struct hmmgpu_mirror *flush)
{
	u32 to = dst_ap << HMMGPU_DST_APERTURE_SHIFT;
	u32 from = src_ap << HMMGPU_SRC_APERTURE_SHIFT;
	struct hmmgpu_command *cmds;
	bool to_sys = src_ap == HMMGPU_APERTURE_VRAM && dst_ap == HMMGPU_APERTURE_SYS;
	bool gather = to_sys || (src_ap == HMMGPU_APERTURE_SYS && dst_ap == HMMGPU_APERTURE_VRAM);
	const u64 *sys = to_sys ? dst : src, *vram = to_sys ? src : dst;
	int i, done, batch, ret = 0;
	dma_addr_t list_dma = 0;
	__le64 *list = NULL;
	bool list_tried = false;
	u64 *status;

	cmds = kmalloc_array(HMMGPU_MAX_BATCH, sizeof(*cmds), GFP_KERNEL);
	status = kmalloc_array(HMMGPU_MAX_BATCH, sizeof(*status), GFP_KERNEL);
	if (!cmds || !status) {
		ret = -ENOMEM;
		goto out;
	}
	for (done = 0; done < n; ) {
		/* the owed flush runs before any copy: one round trip for both */
		bool synced = flush && hmmgpu_pt_sync_begin(flush, &cmds[0]);

		for (batch = synced; batch < HMMGPU_MAX_BATCH && done < n; batch++) {
			u64 s = src[done], d = dst[done];
			int run = 1;

			while (done + run < n && run < MAX_RUN_PAGES && s != U64_MAX &&
			       src[done + run] == s + run * PAGE_SIZE &&
			       dst[done + run] == d + run * PAGE_SIZE)
				run++;
			if (s == U64_MAX) {
				hmmgpu_cmd(&cmds[batch], HMMGPU_OP_FILL, to, 0, d, PAGE_SIZE, 0);
			} else if (run < MIN_COPY_RUN && gather &&
				   hmmgpu_copy_list(gpu, &list, &list_dma, &list_tried, sys, n)) {
				/*
				 * contiguous in VRAM only, or in both for a few pages
				 * (the page allocator hands out pairs and triples):
				 * list the system pages, one command for the stretch
				 */
				while (done + run < n && run < HMMGPU_MAX_COPY_PAGES &&
				       sys[done + run] != U64_MAX &&
				       vram[done + run] == vram[done] + run * PAGE_SIZE)
					run++;
				hmmgpu_cmd(&cmds[batch], HMMGPU_OP_COPY_PAGES,
					   to_sys ? HMMGPU_CMD_TO_SYS : 0, 0,
					   list_dma + done * sizeof(*list), vram[done], run);
			} else {
				hmmgpu_cmd(&cmds[batch], HMMGPU_OP_COPY, from | to, 0, s, d,
					   (u64)run * PAGE_SIZE);
			}
			done += run;
		}
		ret = hmmgpu_queue_run(&gpu->kq, cmds, batch, status);
		for (i = 0; i < batch && !ret; i++)
			if (status[i])
				ret = -EIO;
		if (synced)
			hmmgpu_pt_sync_end(flush, ret);
		flush = NULL;
		if (ret)
			break;
	}
out:
	if (list)
		dma_free_coherent(&gpu->pdev->dev, n * sizeof(*list), list, list_dma);
	kfree(cmds);
	kfree(status);
	return ret;
}

/*
 * The physically contiguous run of system pages from @i, at most @max: one
 * DMA mapping covers it (pages[i] must be there).
 */
static int hmmgpu_sys_run(struct page **pages, int i, int n, int max)
{
	unsigned long pfn = page_to_pfn(pages[i]);
	int run = 1;

	while (i + run < n && run < max && pages[i + run] &&
	       page_to_pfn(pages[i + run]) == pfn + run)
		run++;
	return run;
}

/* The most pages one mapping of hmmgpu_map_pages() covers. */
static int hmmgpu_sys_run_max(struct hmmgpu *gpu)
{
	return min_t(size_t, dma_max_mapping_size(&gpu->pdev->dev), SZ_2M) >> PAGE_SHIFT;
}

static void hmmgpu_unmap_pages(struct hmmgpu *gpu, struct page **pages, const u64 *dma,
			       int n)
{
	int i, run, max = hmmgpu_sys_run_max(gpu);

	for (i = 0; i < n; i += run) {
		run = 1;
		if (dma[i] == U64_MAX)
			continue;
		/* the runs hmmgpu_map_pages() mapped, found the same way */
		run = hmmgpu_sys_run(pages, i, n, max);
		dma_unmap_page(&gpu->pdev->dev, dma[i], (size_t)run << PAGE_SHIFT,
			       DMA_BIDIRECTIONAL);
	}
}

/*
 * Map system pages for the device, one mapping per physically contiguous
 * run (a 256 KiB block of a migration, a THP): each dma_map_page() is a
 * call the guest pays for, 256 of them for a 0.5 MiB migration mapped page
 * by page. dma[i] is page i's bus address, U64_MAX for a missing page.
 */
static int hmmgpu_map_pages(struct hmmgpu *gpu, struct page **pages, u64 *dma, int n)
{
	int i, k, run, max = hmmgpu_sys_run_max(gpu);
	dma_addr_t addr;

	for (i = 0; i < n; i += run) {
		run = 1;
		if (!pages[i]) {
			dma[i] = U64_MAX;
			continue;
		}
		run = hmmgpu_sys_run(pages, i, n, max);
		addr = dma_map_page(&gpu->pdev->dev, pages[i], 0, (size_t)run << PAGE_SHIFT,
				    DMA_BIDIRECTIONAL);
		if (dma_mapping_error(&gpu->pdev->dev, addr)) {
			hmmgpu_unmap_pages(gpu, pages, dma, i);
			return -ENOMEM;
		}
		for (k = 0; k < run; k++)
			dma[i + k] = addr + ((u64)k << PAGE_SHIFT);
	}
	return 0;
}

/* Map the system pages, copy m pages between them and VRAM, unmap. */
static int hmmgpu_copy_sys_vram(struct hmmgpu *gpu, struct page **sys, u64 *sys_dma,
				const u64 *vram, int m, bool to_vram, struct hmmgpu_mirror *flush)
{
	int ret = hmmgpu_map_pages(gpu, sys, sys_dma, m);

	if (ret)
		return ret;
	if (to_vram)
		ret = hmmgpu_copy_pages(gpu, sys_dma, vram, HMMGPU_APERTURE_SYS,
					HMMGPU_APERTURE_VRAM, m, flush);
	else
		ret = hmmgpu_copy_pages(gpu, vram, sys_dma, HMMGPU_APERTURE_VRAM,
					HMMGPU_APERTURE_SYS, m, flush);
	hmmgpu_unmap_pages(gpu, sys, sys_dma, m);
	return ret;
}

/* After a failed copy: release the new (locked) destination pages. */
static void hmmgpu_drop_dst(unsigned long *dst, unsigned long n)
{
	unsigned long i;

	for (i = 0; i < n; i++) {
		struct page *page = migrate_pfn_to_page(dst[i]);

		if (page) {
			unlock_page(page);
			put_page(page);
		}
		dst[i] = 0;
	}
}

struct copy_list {
	struct page **sys;	/* NULL entry: no source, zero-fill */
	u64 *sys_dma;
	u64 *vram;
	int n;
};

/* A copy list for up to @n pages, sized to them (a fault moves a few pages). */
static struct copy_list *hmmgpu_copy_list_alloc(unsigned long n)
{
	struct copy_list *l = kvmalloc(sizeof(*l) + n * (sizeof(*l->sys) + 2 * sizeof(u64)),
				       GFP_KERNEL);

	if (!l)
		return NULL;
	l->vram = (u64 *)(l + 1);
	l->sys_dma = l->vram + n;
	l->sys = (struct page **)(l->sys_dma + n);
	l->n = 0;
	return l;
}

/* Queue the copy of the @nr pages of a folio (or of one page): system side, VRAM offset. */
static void hmmgpu_copy_add(struct copy_list *l, struct page *sys, u64 vram, unsigned long nr)
{
	unsigned long k;

	for (k = 0; k < nr; k++) {
		l->sys[l->n] = sys ? sys + k : NULL;	/* pages of a folio are contiguous */
		l->vram[l->n] = vram + k * PAGE_SIZE;
		l->n++;
	}
}

/*
 * A new system folio of @order for the page at index @i of a migration;
 * NULL when there is none (an order-0 page never fails for eviction).
 */
typedef struct folio *(*sys_alloc_fn)(void *arg, unsigned long i, unsigned int order);

/*
 * System pages for 4 KiB destinations, handed out from one physically
 * contiguous block where one can be had: pages that follow each other in
 * VRAM then land next to each other in RAM, and one COPY moves the run
 * instead of one COPY per page (each a command the device fetches).
 */
struct sys_block {
	struct page *next;
	unsigned int left;
};

#define SYS_BLOCK_ORDER	6	/* 256 KiB */

static struct folio *hmmgpu_block_page(struct sys_block *b, unsigned long want)
{
	if (!b->left && want > 1) {
		unsigned int order = min_t(unsigned int, SYS_BLOCK_ORDER, ilog2(want));
		struct page *page = alloc_pages(GFP_HIGHUSER_MOVABLE | __GFP_NOWARN |
						__GFP_NORETRY, order);

		if (page) {
			split_page(page, order);	/* order-0 pages, one reference each */
			b->next = page;
			b->left = 1U << order;
		}
	}
	if (!b->left)
		return NULL;
	b->left--;
	return page_folio(b->next++);
}

static void hmmgpu_block_free(struct sys_block *b)
{
	for (; b->left; b->left--)
		__free_page(b->next++);
}

/*
 * Fill dst[] for device pages leaving VRAM: allocate system folios (locked),
 * copy with the device. A THP goes to a system THP when one can be had; else,
 * when @can_split, to 4 KiB pages and the kernel splits the device folio.
 * @fail_once: the dmirror FAIL_ALLOC knob, which forces that fallback once.
 * @flush: see hmmgpu_copy_pages().
 */
static int hmmgpu_evacuate(struct hmmgpu *gpu, unsigned long *src, unsigned long *dst,
			   unsigned long n, sys_alloc_fn alloc, void *arg, bool can_split,
			   bool *fail_once, struct hmmgpu_mirror *flush)
{
	struct copy_list *l = hmmgpu_copy_list_alloc(n);
	struct sys_block block = {};
	unsigned long i, k, nr;
	int ret;

	if (!l)
		return -ENOMEM;
	memset(dst, 0, n * sizeof(*dst));
	for (i = 0; i < n; i += nr) {
		struct page *page = migrate_pfn_to_page(src[i]);
		unsigned int order = 0;
		struct folio *folio = NULL;
		u64 from;

		nr = 1;
		if (!page || !(src[i] & MIGRATE_PFN_MIGRATE) || !hmmgpu_page_is_vram(gpu, page))
			continue;
		from = hmmgpu_vram_offset(page);
		if (src[i] & MIGRATE_PFN_COMPOUND) {
			order = folio_order(page_folio(page));
			nr = min(1UL << order, n - i);
			if (fail_once && *fail_once)
				*fail_once = false;
			else
				folio = alloc(arg, i, order);
			if (folio) {
				folio_lock(folio);
				dst[i] = migrate_pfn(folio_pfn(folio)) | MIGRATE_PFN_COMPOUND;
				hmmgpu_copy_add(l, &folio->page, from, nr);
				continue;
			}
			if (!can_split)
				continue;	/* this folio stays in VRAM */
			/* 4 KiB pages: migrate_vma_pages() splits the device folio */
			for (k = 0; k < nr; k++) {
				folio = alloc(arg, i + k, 0);
				if (!folio)
					break;
				folio_lock(folio);
				dst[i + k] = migrate_pfn(folio_pfn(folio));
				hmmgpu_copy_add(l, &folio->page, from + k * PAGE_SIZE, 1);
			}
			continue;
		}
		folio = hmmgpu_block_page(&block, n - i) ?: alloc(arg, i, 0);
		if (!folio)
			continue;	/* this page stays in VRAM */
		folio_lock(folio);
		dst[i] = migrate_pfn(folio_pfn(folio));
		hmmgpu_copy_add(l, &folio->page, from, 1);
	}
	hmmgpu_block_free(&block);
	ret = hmmgpu_copy_sys_vram(gpu, l->sys, l->sys_dma, l->vram, l->n, false, flush);
	if (ret)
		hmmgpu_drop_dst(dst, n);	/* the data stays in VRAM */
	kvfree(l);
	return ret;
}

struct vma_alloc_arg {
	struct vm_area_struct *vma;
	unsigned long start;
};

static struct folio *hmmgpu_alloc_sys_vma(void *p, unsigned long i, unsigned int order)
{
	struct vma_alloc_arg *arg = p;

	return vma_alloc_folio(GFP_HIGHUSER_MOVABLE | (order ? __GFP_NOWARN : 0), order,
			       arg->vma, arg->start + i * PAGE_SIZE);
}

static struct folio *hmmgpu_alloc_sys(void *p, unsigned long i, unsigned int order)
{
	if (!order)
		return folio_alloc(GFP_HIGHUSER_MOVABLE | __GFP_NOFAIL, 0);
	return folio_alloc(GFP_HIGHUSER_MOVABLE | __GFP_RETRY_MAYFAIL | __GFP_NOWARN, order);
}

/*
 * A CPU touched a device page: bring it back with the copy engine, the whole
 * THP when the device folio is mapped by a PMD, else this GPU's device pages
 * in the aligned block of migrate_to_ram_kb around it, within the VMA: a CPU
 * that reads one page of data the device produced usually reads its
 * neighbours next, and one round (one COPY_PAGES, one fence) for the block
 * costs little more than one for the page.
 */
static vm_fault_t hmmgpu_migrate_to_ram(struct vm_fault *vmf)
{
	struct hmmgpu *gpu = hmmgpu_page_pool(vmf->page)->gpu;
	unsigned int order = vmf->pte ? 0 : folio_order(page_folio(vmf->page));
	unsigned long window = order ? PAGE_SIZE << order : hmmgpu_migrate_window();
	unsigned long base = ALIGN_DOWN(vmf->address, window);
	struct migrate_vma args = {
		.vma = vmf->vma,
		.start = max(base, vmf->vma->vm_start),
		.end = min(base + window, vmf->vma->vm_end),
		.pgmap_owner = gpu,
		.flags = MIGRATE_VMA_SELECT_DEVICE_PRIVATE |
			 (order ? MIGRATE_VMA_SELECT_COMPOUND : 0),
		.fault_page = vmf->page,
	};
	struct vma_alloc_arg arg = { .vma = vmf->vma, .start = args.start };
	unsigned long nr = (args.end - args.start) >> PAGE_SHIFT;
	vm_fault_t fault = 0;

	args.src = kcalloc(2 * nr, sizeof(*args.src), GFP_KERNEL);
	if (!args.src)
		return VM_FAULT_OOM;
	args.dst = args.src + nr;
	if (migrate_vma_setup(&args)) {
		fault = VM_FAULT_SIGBUS;
		goto out;
	}
	if (hmmgpu_evacuate(gpu, args.src, args.dst, args.npages, hmmgpu_alloc_sys_vma, &arg,
			    true, NULL, NULL))
		fault = VM_FAULT_SIGBUS;
	migrate_vma_pages(&args);
	migrate_vma_finalize(&args);
out:
	kfree(args.src);
	return fault;
}

static const struct dev_pagemap_ops hmmgpu_private_ops = {
	.folio_free = hmmgpu_folio_free,
	.migrate_to_ram = hmmgpu_migrate_to_ram,
};

/* the CPU reaches coherent pages in place: nothing to migrate on a CPU fault */
static const struct dev_pagemap_ops hmmgpu_coherent_ops = {
	.folio_free = hmmgpu_folio_free,
};

/*
 * One migrate_vma round toward VRAM: allocate device folios, copy, commit. A
 * THP (or a 2 MiB hole) gets a 2 MiB device folio when one is free; else 4 KiB
 * device pages, and migrate_vma_pages() splits the source.
 */
static int hmmgpu_to_vram(struct hmmgpu_mirror *mirror, struct migrate_vma *args,
			  unsigned long *resident)
{
	struct copy_list *l = hmmgpu_copy_list_alloc(args->npages);
	struct hmmgpu_pool *pool = mirror->pool;
	struct hmmgpu *gpu = mirror->gpu;
	unsigned long i, k, nr;
	int ret;

	if (!l)
		return -ENOMEM;
	memset(args->dst, 0, args->npages * sizeof(*args->dst));
	for (i = 0; i < args->npages; i += nr) {
		unsigned long src = args->src[i];
		unsigned long write = src & MIGRATE_PFN_WRITE;
		struct page *spage = migrate_pfn_to_page(src);
		bool fail = false;
		struct page *dpage;

		nr = 1;
		if (!(src & MIGRATE_PFN_MIGRATE))
			continue;
		if (spage && is_zone_device_page(spage)) {
			/* collected by SELECT_DEVICE_COHERENT: ours, and it stays */
			*resident += hmmgpu_page_is_vram(gpu, spage);
			continue;
		}
		if (mirror->flags & HMM_DMIRROR_FLAG_FAIL_ALLOC) {
			mirror->flags &= ~HMM_DMIRROR_FLAG_FAIL_ALLOC;
			fail = true;	/* the test asked for one failed allocation */
		}
		if (src & MIGRATE_PFN_COMPOUND) {
			nr = min_t(unsigned long, HPAGE_PMD_NR, args->npages - i);
			dpage = fail ? NULL : hmmgpu_devmem_alloc(pool, HPAGE_PMD_ORDER);
			if (dpage) {
				args->dst[i] = migrate_pfn(page_to_pfn(dpage)) | write |
					       MIGRATE_PFN_COMPOUND;
				hmmgpu_copy_add(l, spage, hmmgpu_vram_offset(dpage), nr);
				continue;
			}
			/* all 4 KiB pages or none: a hole is filled as a whole */
			for (k = 0; k < nr; k++) {
				dpage = hmmgpu_devmem_alloc(pool, 0);
				if (!dpage)
					break;
				args->dst[i + k] = migrate_pfn(page_to_pfn(dpage)) | write;
				hmmgpu_copy_add(l, spage ? spage + k : NULL,
						hmmgpu_vram_offset(dpage), 1);
			}
			if (k < nr) {
				l->n -= k;
				hmmgpu_drop_dst(args->dst + i, k);
			}
			continue;
		}
		if (fail)
			continue;
		dpage = hmmgpu_devmem_alloc(pool, 0);
		if (!dpage)
			continue;
		args->dst[i] = migrate_pfn(page_to_pfn(dpage)) | write;
		hmmgpu_copy_add(l, spage, hmmgpu_vram_offset(dpage), 1);
	}
	ret = hmmgpu_copy_sys_vram(gpu, l->sys, l->sys_dma, l->vram, l->n, true, mirror);
	if (ret)
		hmmgpu_drop_dst(args->dst, args->npages);
	kvfree(l);
	return ret;
}

/*
 * Map the pages a migration just moved into this GPU's memory in the
 * mirror's device page table, before migrate_vma_finalize(): the data the
 * ioctl hands back, and the device's next access, then need no fault (the
 * reference maps them at this point too, lib/test_hmm.c
 * dmirror_migrate_finalize_and_map()). Best effort: when an invalidation
 * came in since @seq, or tables run short, the pages are left to fault.
 */
static void hmmgpu_map_migrated(struct hmmgpu_mirror *mirror, struct migrate_vma *args,
				unsigned long seq)
{
	struct hmmgpu *gpu = mirror->gpu;
	unsigned long i, nr;

	if (hmmgpu_pt_reserve(mirror, args->npages / HMMGPU_PT_ENTRIES + 3))
		return;
	mutex_lock(&mirror->mutex);
	if (mmu_interval_read_retry(&mirror->notifier, seq))
		goto unlock;
	for (i = 0; i < args->npages; i += nr) {
		struct page *page = migrate_pfn_to_page(args->dst[i]);
		unsigned long va = args->start + (i << PAGE_SHIFT);
		unsigned int order = 0;
		u64 pte;
		int ret;

		nr = 1;
		if (!page || !(args->src[i] & MIGRATE_PFN_MIGRATE) || !hmmgpu_page_is_vram(gpu, page))
			continue;
		if (args->dst[i] & MIGRATE_PFN_COMPOUND) {
			order = folio_order(page_folio(page));
			nr = 1UL << order;
		}
		pte = hmmgpu_vram_offset(page) | HMMGPU_PTE_READ | HMMGPU_PTE_VRAM |
		      (args->src[i] & MIGRATE_PFN_WRITE ? HMMGPU_PTE_WRITE : 0);
		if (!order || (IS_ALIGNED(va, SZ_2M) &&
			       IS_ALIGNED(hmmgpu_vram_offset(page), SZ_2M)))
			ret = hmmgpu_pt_map(mirror, va, pte, order);
		else
			ret = -EEXIST;
		for (; ret == -EEXIST && order; order = 0) {	/* page by page */
			unsigned long k;

			for (k = 0, ret = 0; k < nr && !ret; k++)
				ret = hmmgpu_pt_map(mirror, va + (k << PAGE_SHIFT),
						    pte + (k << PAGE_SHIFT), 0);
		}
		if (ret)
			break;	/* the rest faults in */
	}
	hmmgpu_pt_sync(mirror, args->start, args->end - args->start);
unlock:
	mutex_unlock(&mirror->mutex);
}

/* After migrate_vma_pages(): how many pages of entry @i moved? */
static unsigned long hmmgpu_migrated(struct hmmgpu *gpu, unsigned long src, unsigned long dst,
				     bool to_vram)
{
	struct page *page = migrate_pfn_to_page(dst);

	if (!(src & MIGRATE_PFN_MIGRATE) || !page || hmmgpu_page_is_vram(gpu, page) != to_vram)
		return 0;
	return (dst & MIGRATE_PFN_COMPOUND) ? folio_nr_pages(page_folio(page)) : 1;
}

/*
 * The address spaces VRAM was given to. An eviction migrates by pfn and takes
 * no mmap_lock of its own, and on this kernel a process that unmaps or exits
 * while one of its PMD-mapped device-private THPs is being migrated frees
 * that folio under the migration: zap_huge_pmd_folio()
 * (mm/huge_memory.c:2486) decides by the folio's type, not by the entry's, so
 * it drops a reference and a mapcount that the PMD migration entry does not
 * hold. The new system folio is then left uncharged, and folio_add_lru()
 * spins on it for ever (mm/memcontrol.c:1517). (The PTE path checks the
 * entry, mm/memory.c:1029.) An eviction therefore holds every such mm's
 * mmap_lock for write: no munmap(), no MADV_DONTNEED and no exit_mmap(),
 * whose unmap_vmas() runs under mmap_read_lock (mm/mmap.c:1299), can zap
 * those entries meanwhile. The mm files may be closed long before the exit,
 * so the list is kept apart from the mirrors; an mm leaves it once its exit
 * has unmapped everything (MMF_OOM_SKIP, mm/mmap.c:1322) or after an
 * eviction emptied VRAM of it. Not covered: a child that inherited our pages
 * by fork() from such an mm.
 */
struct hmmgpu_vram_mm {
	struct list_head node;
	struct mm_struct *mm;		/* mmgrab()bed */
};

static void hmmgpu_vram_mm_drop(struct hmmgpu_vram_mm *v)
{
	list_del(&v->node);
	mmdrop(v->mm);
	kfree(v);
}

/* Before VRAM is given to @mm: put it on the list (and prune the finished). */
static int hmmgpu_vram_mm_note(struct hmmgpu *gpu, struct mm_struct *mm)
{
	struct hmmgpu_vram_mm *v, *next;
	bool found = false;
	int ret = 0;

	mutex_lock(&gpu->vram_mms_lock);
	list_for_each_entry_safe(v, next, &gpu->vram_mms, node) {
		if (v->mm == mm)
			found = true;
		else if (!atomic_read(&v->mm->mm_users) && mm_flags_test(MMF_OOM_SKIP, v->mm))
			hmmgpu_vram_mm_drop(v);
	}
	if (!found) {
		v = kmalloc_obj(*v);
		if (v) {
			mmgrab(mm);
			v->mm = mm;
			list_add(&v->node, &gpu->vram_mms);
		} else {
			ret = -ENOMEM;
		}
	}
	mutex_unlock(&gpu->vram_mms_lock);
	return ret;
}

/* mmap_write_lock() (include/linux/mmap_lock.h:541) as a trylock */
static bool hmmgpu_mmap_write_trylock(struct mm_struct *mm)
{
	if (!down_write_trylock(&mm->mmap_lock))
		return false;
	mm_lock_seqcount_begin(mm);	/* per-VMA lock readers back off */
	return true;
}

/*
 * Write-lock every listed mm, and keep vram_mms_lock. Trylocks, all or none,
 * then a pause without any lock: several mmap_locks in no fixed order must not
 * wait for one another, nor for a migration that holds one and waits for
 * vram_mms_lock.
 */
static void hmmgpu_vram_mms_lock(struct hmmgpu *gpu)
{
	struct hmmgpu_vram_mm *v, *failed;

	for (;;) {
		mutex_lock(&gpu->vram_mms_lock);
		failed = NULL;
		list_for_each_entry(v, &gpu->vram_mms, node) {
			if (!hmmgpu_mmap_write_trylock(v->mm)) {
				failed = v;
				break;
			}
		}
		if (!failed)
			return;
		list_for_each_entry(v, &gpu->vram_mms, node) {
			if (v == failed)
				break;
			mmap_write_unlock(v->mm);
		}
		mutex_unlock(&gpu->vram_mms_lock);
		usleep_range(200, 500);
	}
}

/* Unlock after an eviction; @all: forget every mm (VRAM goes away). */
static void hmmgpu_vram_mms_unlock(struct hmmgpu *gpu, bool all)
{
	struct hmmgpu_vram_mm *v, *next;

	list_for_each_entry_safe(v, next, &gpu->vram_mms, node) {
		mmap_write_unlock(v->mm);
		/* nothing of ours is mapped there now */
		if (all || !atomic_read(&v->mm->mm_users))
			hmmgpu_vram_mm_drop(v);
	}
	mutex_unlock(&gpu->vram_mms_lock);
}

/* MIGRATE_TO_DEV and MIGRATE_TO_SYS: move [addr, addr + npages) with the device. */
int hmmgpu_migrate(struct hmmgpu_mirror *mirror, struct hmm_dmirror_cmd *cmd, bool to_vram)
{
	struct hmmgpu *gpu = mirror->gpu;
	struct mm_struct *mm = mirror->notifier.mm;
	unsigned long start = cmd->addr, end = start + (cmd->npages << PAGE_SHIFT);
	unsigned long addr, next, i, resident = 0, seq = 0;
	/* no round moves more than the request's pages */
	unsigned long chunk = clamp_t(unsigned long, cmd->npages, 1, MIGRATE_CHUNK);
	unsigned long *src, *dst;
	int ret = 0;

	src = kvcalloc(2 * chunk, sizeof(*src), GFP_KERNEL);
	if (!src)
		return -ENOMEM;
	dst = src + chunk;
	if (!mmget_not_zero(mm)) {
		kvfree(src);
		return -EINVAL;
	}
	/* before mmap_lock: see hmmgpu_vram_mms_lock() */
	if (to_vram)
		ret = hmmgpu_vram_mm_note(gpu, mm);
	if (ret) {
		mmput(mm);
		kvfree(src);
		return ret;
	}
	mmap_read_lock(mm);
	/* our invalidations leave the TLB flush to our copies (hmmgpu_invalidate()) */
	WRITE_ONCE(mirror->migrating, current);
	for (addr = start; addr < end && !ret; addr = next) {
		struct vm_area_struct *vma = vma_lookup(mm, addr);
		struct migrate_vma args = {
			.src = src,
			.dst = dst,
			.start = addr,
			.pgmap_owner = gpu,
			/*
			 * Back to system memory: this GPU's pages of either kind.
			 * Toward VRAM, our coherent pages are collected too (they
			 * are order 0, nothing splits) to count what is already
			 * here: the reference's -ENOENT means "not in the device".
			 */
			.flags = (to_vram ? MIGRATE_VMA_SELECT_SYSTEM :
					    MIGRATE_VMA_SELECT_DEVICE_PRIVATE) |
				 MIGRATE_VMA_SELECT_DEVICE_COHERENT | MIGRATE_VMA_SELECT_COMPOUND,
		};

		if (!vma || !(vma->vm_flags & VM_READ)) {
			ret = -EINVAL;	/* a hole or a PROT_NONE area */
			break;
		}
		/* rounds end on PMD boundaries, so a THP is never cut in two */
		next = min3(end, vma->vm_end,
			    ALIGN_DOWN(addr, PMD_SIZE) + (MIGRATE_CHUNK << PAGE_SHIFT));
		args.vma = vma;
		args.end = next;
		ret = migrate_vma_setup(&args);
		if (ret)
			break;
		if (to_vram) {
			seq = mmu_interval_read_begin(&mirror->notifier);
			ret = hmmgpu_to_vram(mirror, &args, &resident);
		} else {
			struct vma_alloc_arg arg = { .vma = vma, .start = addr };
			bool fail = mirror->flags & HMM_DMIRROR_FLAG_FAIL_ALLOC;

			ret = hmmgpu_evacuate(gpu, src, dst, args.npages, hmmgpu_alloc_sys_vma,
					      &arg, true, &fail, mirror);
			if (!fail)
				mirror->flags &= ~HMM_DMIRROR_FLAG_FAIL_ALLOC;
		}
		/* a round that copied nothing still owes the flush: before any page goes */
		hmmgpu_pt_flush(mirror, addr, next);
		migrate_vma_pages(&args);
		for (i = 0; i < args.npages; i++)
			cmd->cpages += hmmgpu_migrated(gpu, src[i], dst[i], to_vram);
		if (to_vram && !ret)
			hmmgpu_map_migrated(mirror, &args, seq);
		migrate_vma_finalize(&args);
	}
	WRITE_ONCE(mirror->migrating, NULL);
	mmap_read_unlock(mm);
	mmput(mm);
	kvfree(src);
	/*
	 * like the reference: nothing migratable (shared memory, another GPU's
	 * memory) is -ENOENT, unless it is in this GPU's memory already
	 */
	if (!ret && to_vram && !cmd->cpages && !resident && cmd->npages)
		ret = -ENOENT;
	return ret;
}

/* Move every page of a pool out of VRAM. */
static void hmmgpu_pool_evict(struct hmmgpu_pool *pool)
{
	unsigned long *src, *dst;
	unsigned long pfn;

	if (!pool->ready)
		return;
	src = kvcalloc(2 * MIGRATE_CHUNK, sizeof(*src), GFP_KERNEL | __GFP_NOFAIL);
	dst = src + MIGRATE_CHUNK;

	/* chunks of 2 MiB: a device THP is never cut in two */
	for (pfn = 0; pfn < pool->npages; pfn += MIGRATE_CHUNK) {
		unsigned long n = min_t(unsigned long, MIGRATE_CHUNK, pool->npages - pfn);

		migrate_device_range(src, pool->pfn + pfn, n);
		if (hmmgpu_evacuate(pool->gpu, src, dst, n, hmmgpu_alloc_sys, NULL, false, NULL,
				    NULL))
			dev_err(&pool->gpu->pdev->dev, "eviction copy failed\n");
		migrate_device_pages(src, dst, n);
		migrate_device_finalize(src, dst, n);
	}
	kvfree(src);
}

/* Move every page out of VRAM (RELEASE). */
void hmmgpu_devmem_evict(struct hmmgpu *gpu)
{
	hmmgpu_vram_mms_lock(gpu);
	hmmgpu_pool_evict(&gpu->priv);
	hmmgpu_pool_evict(&gpu->coh);
	hmmgpu_vram_mms_unlock(gpu, false);
}

static void hmmgpu_pool_free_maps(struct hmmgpu_pool *pool)
{
	bitmap_free(pool->bitmap);
	bitmap_free(pool->large);
	kvfree(pool->chunk_free);
}

/*
 * Register [vram_base, vram_base + size) of the VRAM as @pool; @phys is where
 * its struct pages go: the VRAM BAR for coherent memory, a free physical
 * range (requested here) for private memory.
 */
static int hmmgpu_pool_init(struct hmmgpu *gpu, struct hmmgpu_pool *pool, bool coherent,
			    u64 vram_base, u64 size, phys_addr_t phys)
{
	unsigned long npages = size >> PAGE_SHIFT;
	struct resource *res = NULL;
	unsigned long c;
	void *addr;

	pool->gpu = gpu;
	pool->coherent = coherent;
	pool->vram_base = vram_base;
	pool->npages = npages;
	pool->nchunks = DIV_ROUND_UP(npages, HPAGE_PMD_NR);
	pool->bitmap = bitmap_zalloc(npages, GFP_KERNEL);
	pool->large = bitmap_zalloc(pool->nchunks, GFP_KERNEL);
	pool->chunk_free = kvcalloc(pool->nchunks, sizeof(*pool->chunk_free), GFP_KERNEL);
	if (!pool->bitmap || !pool->large || !pool->chunk_free) {
		hmmgpu_pool_free_maps(pool);
		return -ENOMEM;
	}
	if (!coherent) {
		/* section-aligned, so VRAM chunks are 2 MiB-aligned pfns as THPs need */
		res = request_free_mem_region(&iomem_resource, size, "hmmgpu VRAM");
		if (IS_ERR(res)) {
			hmmgpu_pool_free_maps(pool);
			return PTR_ERR(res);
		}
		phys = res->start;
	}
	pool->res = res;
	pool->pgmap.type = coherent ? MEMORY_DEVICE_COHERENT : MEMORY_DEVICE_PRIVATE;
	pool->pgmap.range.start = phys;
	pool->pgmap.range.end = phys + size - 1;
	pool->pgmap.nr_range = 1;
	pool->pgmap.ops = coherent ? &hmmgpu_coherent_ops : &hmmgpu_private_ops;
	pool->pgmap.owner = gpu;
	addr = memremap_pages(&pool->pgmap, dev_to_node(&gpu->pdev->dev));
	if (IS_ERR(addr)) {
		if (res)
			release_mem_region(res->start, resource_size(res));
		hmmgpu_pool_free_maps(pool);
		pool->res = NULL;
		return PTR_ERR(addr);
	}
	pool->pfn = PHYS_PFN(phys);
	bitmap_fill(pool->bitmap, npages);
	for (c = 0; c < pool->nchunks; c++)
		pool->chunk_free[c] = hmmgpu_chunk_pages(pool, c);
	pool->nfree = npages;
	pool->hint = 0;
	pool->ready = true;
	return 0;
}

static void hmmgpu_pool_fini(struct hmmgpu_pool *pool)
{
	if (!pool->ready)
		return;
	hmmgpu_pool_evict(pool);
	memunmap_pages(&pool->pgmap);
	if (pool->res)
		release_mem_region(pool->res->start, resource_size(pool->res));
	hmmgpu_pool_free_maps(pool);
	pool->res = NULL;
	pool->ready = false;
}

/*
 * The direct map of the coherent pool is write-back. memremap_pages() maps it
 * with the cache mode the PAT code grants (pfnmap_track(), mm/memremap.c:185),
 * which silently becomes UC- where the MTRRs say uncached
 * (arch/x86/mm/pat/memtype.c memtype_reserve()).
 */
static bool hmmgpu_mapped_wb(phys_addr_t phys)
{
#ifdef CONFIG_X86
	unsigned int level;
	pte_t *pte = lookup_address((unsigned long)__va(phys), &level);

	return pte && !(pte_flags(*pte) & (_PAGE_PWT | _PAGE_PCD));
#else
	return true;
#endif
}

/*
 * How much of the VRAM can be device-coherent, and why not when it cannot:
 * the device must have the VRAM BAR (CAPS), the firmware must have placed it
 * as a 64-bit prefetchable BAR above 4 GiB (the PCI hole below is uncached).
 */
static u64 hmmgpu_coherent_size(struct hmmgpu *gpu, const char **why)
{
	struct pci_dev *pdev = gpu->pdev;
	resource_size_t start = pci_resource_start(pdev, HMMGPU_VRAM_BAR);
	unsigned long flags = pci_resource_flags(pdev, HMMGPU_VRAM_BAR);
	u64 size;

	if (!coherent_mb) {
		*why = "coherent_mb=0";
		return 0;
	}
	if (!(hmmgpu_read(gpu, HMMGPU_REG_CAPS) & HMMGPU_CAPS_VRAM_BAR)) {
		*why = "the device has no VRAM BAR";
		return 0;
	}
	if (pci_resource_len(pdev, HMMGPU_VRAM_BAR) < gpu->vram_size) {
		*why = "BAR4 is smaller than the VRAM";
		return 0;
	}
	if (!(flags & IORESOURCE_MEM_64) || !(flags & IORESOURCE_PREFETCH)) {
		*why = "BAR4 is not a 64-bit prefetchable memory BAR";
		return 0;
	}
	if (start < SZ_4G) {
		*why = "BAR4 lies below 4 GiB, in the PCI hole the firmware maps uncached";
		return 0;
	}
	size = coherent_mb < 0 ? gpu->vram_size / 2 : (u64)coherent_mb << 20;
	size = ALIGN_DOWN(min(size, gpu->vram_size - SZ_2M), SZ_2M);
	if (!size)
		*why = "the VRAM is too small to share";
	return size;
}

int hmmgpu_devmem_init(struct hmmgpu *gpu)
{
	struct pci_dev *pdev = gpu->pdev;
	const char *why = NULL;
	u64 coh = hmmgpu_coherent_size(gpu, &why);
	resource_size_t bar = pci_resource_start(pdev, HMMGPU_VRAM_BAR);
	int ret;

	spin_lock_init(&gpu->devmem_lock);
	if (coh) {
		u64 base = gpu->vram_size - coh;

		ret = hmmgpu_pool_init(gpu, &gpu->coh, true, base, coh, bar + base);
		if (ret) {
			why = "memremap_pages() refused the BAR";
			coh = 0;
		} else if (!hmmgpu_mapped_wb(bar + base)) {
			hmmgpu_pool_fini(&gpu->coh);
			why = "the kernel mapped BAR4 uncached (MTRR or PAT)";
			coh = 0;
		}
	}
	if (coh)
		dev_info(&pdev->dev, "VRAM BAR %pR: %llu MiB device-coherent memory\n",
			 &pdev->resource[HMMGPU_VRAM_BAR], coh >> 20);
	else
		dev_info(&pdev->dev, "no device-coherent memory: %s\n", why);
	ret = hmmgpu_pool_init(gpu, &gpu->priv, false, 0, gpu->vram_size - coh, 0);
	if (ret)
		hmmgpu_pool_fini(&gpu->coh);
	return ret;
}

/* Unbind (or a failed probe): evict, and the VRAM goes. */
void hmmgpu_devmem_fini(struct hmmgpu *gpu)
{
	hmmgpu_vram_mms_lock(gpu);
	hmmgpu_pool_fini(&gpu->priv);
	hmmgpu_pool_fini(&gpu->coh);
	hmmgpu_vram_mms_unlock(gpu, true);
}
