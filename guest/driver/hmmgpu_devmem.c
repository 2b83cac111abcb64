// SPDX-License-Identifier: GPL-2.0
/*
 * hmmgpu: VRAM as DEVICE_PRIVATE memory, and migration with the copy engine.
 */

/**
 * DOC: device memory
 *
 * The whole VRAM is registered with memremap_pages() as MEMORY_DEVICE_PRIVATE
 * over a free physical range (request_free_mem_region()); device page N is
 * VRAM offset N * PAGE_SIZE. A bitmap of free pages and a free count per 2 MiB
 * chunk, under devmem_lock, serve both sizes of device folio: a THP takes a
 * whole free chunk, a 4 KiB page comes from a partly used chunk first, and
 * folio_free() gives pages back, so a chunk is whole again once all its pages
 * are freed. Chunks that held a THP serve only THPs afterwards.
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
#include <linux/dma-mapping.h>
#include <linux/highmem.h>
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

static bool sanitize = true;
module_param(sanitize, bool, 0444);
MODULE_PARM_DESC(sanitize, "report VRAM folios to the device's sanitizer (default: on)");

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

static struct hmmgpu *page_gpu(struct page *page)
{
	return container_of(page_pgmap(page), struct hmmgpu, pgmap);
}

bool hmmgpu_page_is_vram(struct hmmgpu *gpu, struct page *page)
{
	return is_device_private_page(page) && page_pgmap(page) == &gpu->pgmap;
}

u64 hmmgpu_vram_offset(struct hmmgpu *gpu, struct page *page)
{
	return (u64)(page_to_pfn(page) - gpu->devmem_pfn) << PAGE_SHIFT;
}

static unsigned long hmmgpu_chunk_pages(struct hmmgpu *gpu, unsigned long c)
{
	unsigned long npages = gpu->vram_size >> PAGE_SHIFT;

	return min_t(unsigned long, HPAGE_PMD_NR, npages - c * HPAGE_PMD_NR);
}

/*
 * Pick the chunk for a 4 KiB page: a partly used one first, to keep whole
 * chunks for THPs. A chunk that has held a THP never serves 4 KiB pages, as
 * the reference driver's pools do: on 7.3, the pages of a freed device THP
 * reused as 4 KiB folios left CPU migration entries that never resolved.
 */
static long hmmgpu_chunk_for_page(struct hmmgpu *gpu)
{
	long c, any = -1;

	c = gpu->devmem_hint;
	if (c < gpu->devmem_nchunks && gpu->devmem_chunk_free[c] &&
	    !test_bit(c, gpu->devmem_large))
		return c;
	for (c = 0; c < gpu->devmem_nchunks; c++) {
		if (!gpu->devmem_chunk_free[c] || test_bit(c, gpu->devmem_large))
			continue;
		if (gpu->devmem_chunk_free[c] < hmmgpu_chunk_pages(gpu, c))
			return c;
		if (any < 0)
			any = c;
	}
	return any;
}

/* Pick a whole chunk for a THP: one that held a THP before, else a fresh one. */
static long hmmgpu_chunk_for_thp(struct hmmgpu *gpu)
{
	long c, any = -1;

	for (c = 0; c < gpu->devmem_nchunks; c++) {
		if (gpu->devmem_chunk_free[c] != HPAGE_PMD_NR)
			continue;
		if (test_bit(c, gpu->devmem_large))
			return c;
		if (any < 0)
			any = c;
	}
	return any;
}

/* Allocate a device folio of @order (0, or HPAGE_PMD_ORDER for a THP). */
static struct page *hmmgpu_devmem_alloc(struct hmmgpu *gpu, unsigned int order)
{
	unsigned long idx = ULONG_MAX;
	struct page *page;
	long c;

	spin_lock(&gpu->devmem_lock);
	if (order) {
		c = hmmgpu_chunk_for_thp(gpu);
		if (c >= 0) {
			idx = c * HPAGE_PMD_NR;
			bitmap_clear(gpu->devmem_bitmap, idx, HPAGE_PMD_NR);
			gpu->devmem_chunk_free[c] = 0;
			__set_bit(c, gpu->devmem_large);
		}
	} else {
		c = hmmgpu_chunk_for_page(gpu);
		if (c >= 0) {
			idx = find_next_bit(gpu->devmem_bitmap, c * HPAGE_PMD_NR +
					    hmmgpu_chunk_pages(gpu, c), c * HPAGE_PMD_NR);
			__clear_bit(idx, gpu->devmem_bitmap);
			gpu->devmem_chunk_free[c]--;
			gpu->devmem_hint = c;
		}
	}
	if (idx != ULONG_MAX) {
		gpu->devmem_nfree -= 1UL << order;
		hmmgpu_san_vram(gpu, idx, order, true);
	}
	spin_unlock(&gpu->devmem_lock);
	if (idx == ULONG_MAX)
		return NULL;
	page = pfn_to_page(gpu->devmem_pfn + idx);
	zone_device_folio_init(page_folio(page), &gpu->pgmap, order);
	return page;
}

static void hmmgpu_folio_free(struct folio *folio)
{
	struct hmmgpu *gpu = page_gpu(&folio->page);
	unsigned long idx = folio_pfn(folio) - gpu->devmem_pfn;
	unsigned long nr = folio_nr_pages(folio);

	spin_lock(&gpu->devmem_lock);
	hmmgpu_san_vram(gpu, idx, folio_order(folio), false);
	bitmap_set(gpu->devmem_bitmap, idx, nr);
	gpu->devmem_chunk_free[idx / HPAGE_PMD_NR] += nr;
	gpu->devmem_nfree += nr;
	spin_unlock(&gpu->devmem_lock);
}

unsigned long hmmgpu_vram_free_pages(struct hmmgpu *gpu)
{
	return READ_ONCE(gpu->devmem_nfree);
}

/*
 * Copy @n pages with the device: page i moves from src[i] to dst[i] (bus
 * addresses or VRAM offsets per aperture); a src of U64_MAX means "no source
 * page" and zero-fills the destination. Runs in batches on the kernel queue.
 */
static int hmmgpu_copy_pages(struct hmmgpu *gpu, const u64 *src, const u64 *dst,
			     unsigned int src_ap, unsigned int dst_ap, int n)
{
	u32 to = dst_ap << HMMGPU_DST_APERTURE_SHIFT;
	u32 from = src_ap << HMMGPU_SRC_APERTURE_SHIFT;
	struct hmmgpu_command *cmds;
	int i, done, batch, ret = 0;
	u64 *status;

	cmds = kmalloc_array(HMMGPU_MAX_BATCH, sizeof(*cmds), GFP_KERNEL);
	status = kmalloc_array(HMMGPU_MAX_BATCH, sizeof(*status), GFP_KERNEL);
	if (!cmds || !status) {
		ret = -ENOMEM;
		goto out;
	}
	for (done = 0; done < n; ) {
		/* one command per run of pages contiguous on both sides (split THPs) */
		for (batch = 0; batch < HMMGPU_MAX_BATCH && done < n; batch++) {
			u64 s = src[done], d = dst[done];
			int run = 1;

			while (done + run < n && run < MAX_RUN_PAGES && s != U64_MAX &&
			       src[done + run] == s + run * PAGE_SIZE &&
			       dst[done + run] == d + run * PAGE_SIZE)
				run++;
			if (s == U64_MAX)
				hmmgpu_cmd(&cmds[batch], HMMGPU_OP_FILL, to, 0, d, PAGE_SIZE, 0);
			else
				hmmgpu_cmd(&cmds[batch], HMMGPU_OP_COPY, from | to, 0, s, d,
					   (u64)run * PAGE_SIZE);
			done += run;
		}
		ret = hmmgpu_queue_run(&gpu->kq, cmds, batch, status);
		for (i = 0; i < batch && !ret; i++)
			if (status[i])
				ret = -EIO;
		if (ret)
			break;
	}
out:
	kfree(cmds);
	kfree(status);
	return ret;
}

/* Map system pages for the device; U64_MAX for a missing page. */
static int hmmgpu_map_pages(struct hmmgpu *gpu, struct page **pages, u64 *dma, int n)
{
	int i;

	for (i = 0; i < n; i++) {
		if (!pages[i]) {
			dma[i] = U64_MAX;
			continue;
		}
		dma[i] = dma_map_page(&gpu->pdev->dev, pages[i], 0, PAGE_SIZE, DMA_BIDIRECTIONAL);
		if (dma_mapping_error(&gpu->pdev->dev, dma[i])) {
			while (--i >= 0)
				if (dma[i] != U64_MAX)
					dma_unmap_page(&gpu->pdev->dev, dma[i], PAGE_SIZE,
						       DMA_BIDIRECTIONAL);
			return -ENOMEM;
		}
	}
	return 0;
}

static void hmmgpu_unmap_pages(struct hmmgpu *gpu, const u64 *dma, int n)
{
	int i;

	for (i = 0; i < n; i++)
		if (dma[i] != U64_MAX)
			dma_unmap_page(&gpu->pdev->dev, dma[i], PAGE_SIZE, DMA_BIDIRECTIONAL);
}

/* Map the system pages, copy m pages between them and VRAM, unmap. */
static int hmmgpu_copy_sys_vram(struct hmmgpu *gpu, struct page **sys, u64 *sys_dma,
				const u64 *vram, int m, bool to_vram)
{
	int ret = hmmgpu_map_pages(gpu, sys, sys_dma, m);

	if (ret)
		return ret;
	if (to_vram)
		ret = hmmgpu_copy_pages(gpu, sys_dma, vram, HMMGPU_APERTURE_SYS,
					HMMGPU_APERTURE_VRAM, m);
	else
		ret = hmmgpu_copy_pages(gpu, vram, sys_dma, HMMGPU_APERTURE_VRAM,
					HMMGPU_APERTURE_SYS, m);
	hmmgpu_unmap_pages(gpu, sys_dma, m);
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
	struct page *sys[MIGRATE_CHUNK];	/* NULL: no source, zero-fill */
	u64 sys_dma[MIGRATE_CHUNK];
	u64 vram[MIGRATE_CHUNK];
	int n;
};

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
 * Fill dst[] for device pages leaving VRAM: allocate system folios (locked),
 * copy with the device. A THP goes to a system THP when one can be had; else,
 * when @can_split, to 4 KiB pages and the kernel splits the device folio.
 * @fail_once: the dmirror FAIL_ALLOC knob, which forces that fallback once.
 */
static int hmmgpu_evacuate(struct hmmgpu *gpu, unsigned long *src, unsigned long *dst,
			   unsigned long n, sys_alloc_fn alloc, void *arg, bool can_split,
			   bool *fail_once)
{
	struct copy_list *l = kvmalloc(sizeof(*l), GFP_KERNEL);
	unsigned long i, k, nr;
	int ret;

	if (!l)
		return -ENOMEM;
	l->n = 0;
	memset(dst, 0, n * sizeof(*dst));
	for (i = 0; i < n; i += nr) {
		struct page *page = migrate_pfn_to_page(src[i]);
		unsigned int order = 0;
		struct folio *folio = NULL;
		u64 from;

		nr = 1;
		if (!page || !(src[i] & MIGRATE_PFN_MIGRATE) || !hmmgpu_page_is_vram(gpu, page))
			continue;
		from = hmmgpu_vram_offset(gpu, page);
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
		folio = alloc(arg, i, 0);
		if (!folio)
			continue;	/* this page stays in VRAM */
		folio_lock(folio);
		dst[i] = migrate_pfn(folio_pfn(folio));
		hmmgpu_copy_add(l, &folio->page, from, 1);
	}
	ret = hmmgpu_copy_sys_vram(gpu, l->sys, l->sys_dma, l->vram, l->n, false);
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
 * THP when the device folio is mapped by a PMD, else the one page.
 */
static vm_fault_t hmmgpu_migrate_to_ram(struct vm_fault *vmf)
{
	struct hmmgpu *gpu = page_gpu(vmf->page);
	unsigned int order = vmf->pte ? 0 : folio_order(page_folio(vmf->page));
	unsigned long nr = 1UL << order;
	struct migrate_vma args = {
		.vma = vmf->vma,
		.start = ALIGN_DOWN(vmf->address, PAGE_SIZE << order),
		.pgmap_owner = gpu,
		.flags = MIGRATE_VMA_SELECT_DEVICE_PRIVATE |
			 (order ? MIGRATE_VMA_SELECT_COMPOUND : 0),
		.fault_page = vmf->page,
	};
	struct vma_alloc_arg arg = { .vma = vmf->vma, .start = args.start };
	vm_fault_t fault = 0;

	args.end = args.start + (nr << PAGE_SHIFT);
	args.src = kcalloc(2 * nr, sizeof(*args.src), GFP_KERNEL);
	if (!args.src)
		return VM_FAULT_OOM;
	args.dst = args.src + nr;
	if (migrate_vma_setup(&args)) {
		fault = VM_FAULT_SIGBUS;
		goto out;
	}
	if (hmmgpu_evacuate(gpu, args.src, args.dst, args.npages, hmmgpu_alloc_sys_vma, &arg,
			    true, NULL))
		fault = VM_FAULT_SIGBUS;
	migrate_vma_pages(&args);
	migrate_vma_finalize(&args);
out:
	kfree(args.src);
	return fault;
}

static const struct dev_pagemap_ops hmmgpu_devmem_ops = {
	.folio_free = hmmgpu_folio_free,
	.migrate_to_ram = hmmgpu_migrate_to_ram,
};

/*
 * One migrate_vma round toward VRAM: allocate device folios, copy, commit. A
 * THP (or a 2 MiB hole) gets a 2 MiB device folio when one is free; else 4 KiB
 * device pages, and migrate_vma_pages() splits the source.
 */
static int hmmgpu_to_vram(struct hmmgpu_mirror *mirror, struct migrate_vma *args)
{
	struct copy_list *l = kvmalloc(sizeof(*l), GFP_KERNEL);
	struct hmmgpu *gpu = mirror->gpu;
	unsigned long i, k, nr;
	int ret;

	if (!l)
		return -ENOMEM;
	l->n = 0;
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
		if (spage && is_device_private_page(spage))
			continue;	/* already device memory (ours or another GPU's) */
		if (mirror->flags & HMM_DMIRROR_FLAG_FAIL_ALLOC) {
			mirror->flags &= ~HMM_DMIRROR_FLAG_FAIL_ALLOC;
			fail = true;	/* the test asked for one failed allocation */
		}
		if (src & MIGRATE_PFN_COMPOUND) {
			nr = min_t(unsigned long, HPAGE_PMD_NR, args->npages - i);
			dpage = fail ? NULL : hmmgpu_devmem_alloc(gpu, HPAGE_PMD_ORDER);
			if (dpage) {
				args->dst[i] = migrate_pfn(page_to_pfn(dpage)) | write |
					       MIGRATE_PFN_COMPOUND;
				hmmgpu_copy_add(l, spage, hmmgpu_vram_offset(gpu, dpage), nr);
				continue;
			}
			/* all 4 KiB pages or none: a hole is filled as a whole */
			for (k = 0; k < nr; k++) {
				dpage = hmmgpu_devmem_alloc(gpu, 0);
				if (!dpage)
					break;
				args->dst[i + k] = migrate_pfn(page_to_pfn(dpage)) | write;
				hmmgpu_copy_add(l, spage ? spage + k : NULL,
						hmmgpu_vram_offset(gpu, dpage), 1);
			}
			if (k < nr) {
				l->n -= k;
				hmmgpu_drop_dst(args->dst + i, k);
			}
			continue;
		}
		if (fail)
			continue;
		dpage = hmmgpu_devmem_alloc(gpu, 0);
		if (!dpage)
			continue;
		args->dst[i] = migrate_pfn(page_to_pfn(dpage)) | write;
		hmmgpu_copy_add(l, spage, hmmgpu_vram_offset(gpu, dpage), 1);
	}
	ret = hmmgpu_copy_sys_vram(gpu, l->sys, l->sys_dma, l->vram, l->n, true);
	if (ret)
		hmmgpu_drop_dst(args->dst, args->npages);
	kvfree(l);
	return ret;
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

/* MIGRATE_TO_DEV and MIGRATE_TO_SYS: move [addr, addr + npages) with the device. */
int hmmgpu_migrate(struct hmmgpu_mirror *mirror, struct hmm_dmirror_cmd *cmd, bool to_vram)
{
	struct hmmgpu *gpu = mirror->gpu;
	struct mm_struct *mm = mirror->notifier.mm;
	unsigned long start = cmd->addr, end = start + (cmd->npages << PAGE_SHIFT);
	unsigned long *src, *dst;
	unsigned long addr, next, i;
	int ret = 0;

	src = kvcalloc(2 * MIGRATE_CHUNK, sizeof(*src), GFP_KERNEL);
	if (!src)
		return -ENOMEM;
	dst = src + MIGRATE_CHUNK;
	if (!mmget_not_zero(mm)) {
		kvfree(src);
		return -EINVAL;
	}
	mmap_read_lock(mm);
	for (addr = start; addr < end && !ret; addr = next) {
		struct vm_area_struct *vma = vma_lookup(mm, addr);
		struct migrate_vma args = {
			.src = src,
			.dst = dst,
			.start = addr,
			.pgmap_owner = gpu,
			.flags = (to_vram ? MIGRATE_VMA_SELECT_SYSTEM :
					    MIGRATE_VMA_SELECT_DEVICE_PRIVATE) |
				 MIGRATE_VMA_SELECT_COMPOUND,
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
			ret = hmmgpu_to_vram(mirror, &args);
		} else {
			struct vma_alloc_arg arg = { .vma = vma, .start = addr };
			bool fail = mirror->flags & HMM_DMIRROR_FLAG_FAIL_ALLOC;

			ret = hmmgpu_evacuate(gpu, src, dst, args.npages, hmmgpu_alloc_sys_vma,
					      &arg, true, &fail);
			if (!fail)
				mirror->flags &= ~HMM_DMIRROR_FLAG_FAIL_ALLOC;
		}
		migrate_vma_pages(&args);
		for (i = 0; i < args.npages; i++)
			cmd->cpages += hmmgpu_migrated(gpu, src[i], dst[i], to_vram);
		migrate_vma_finalize(&args);
	}
	mmap_read_unlock(mm);
	mmput(mm);
	kvfree(src);
	/* like the reference: nothing migratable (shared memory) is -ENOENT */
	if (!ret && to_vram && !cmd->cpages && cmd->npages)
		ret = -ENOENT;
	return ret;
}

/* Move every page out of VRAM (RELEASE, unbind). */
void hmmgpu_devmem_evict(struct hmmgpu *gpu)
{
	unsigned long npages = gpu->vram_size >> PAGE_SHIFT;
	unsigned long *src, *dst;
	unsigned long pfn;

	src = kvcalloc(2 * MIGRATE_CHUNK, sizeof(*src), GFP_KERNEL | __GFP_NOFAIL);
	dst = src + MIGRATE_CHUNK;

	/* chunks of 2 MiB: a device THP is never cut in two */
	for (pfn = 0; pfn < npages; pfn += MIGRATE_CHUNK) {
		unsigned long n = min_t(unsigned long, MIGRATE_CHUNK, npages - pfn);

		migrate_device_range(src, gpu->devmem_pfn + pfn, n);
		if (hmmgpu_evacuate(gpu, src, dst, n, hmmgpu_alloc_sys, NULL, false, NULL))
			dev_err(&gpu->pdev->dev, "eviction copy failed\n");
		migrate_device_pages(src, dst, n);
		migrate_device_finalize(src, dst, n);
	}
	kvfree(src);
}

static void hmmgpu_devmem_free_maps(struct hmmgpu *gpu)
{
	bitmap_free(gpu->devmem_bitmap);
	bitmap_free(gpu->devmem_large);
	kvfree(gpu->devmem_chunk_free);
}

int hmmgpu_devmem_init(struct hmmgpu *gpu)
{
	unsigned long npages = gpu->vram_size >> PAGE_SHIFT;
	struct resource *res;
	unsigned long c;
	void *addr;

	spin_lock_init(&gpu->devmem_lock);
	gpu->devmem_nchunks = DIV_ROUND_UP(npages, HPAGE_PMD_NR);
	gpu->devmem_bitmap = bitmap_zalloc(npages, GFP_KERNEL);
	gpu->devmem_large = bitmap_zalloc(gpu->devmem_nchunks, GFP_KERNEL);
	gpu->devmem_chunk_free = kvcalloc(gpu->devmem_nchunks, sizeof(*gpu->devmem_chunk_free),
					  GFP_KERNEL);
	if (!gpu->devmem_bitmap || !gpu->devmem_large || !gpu->devmem_chunk_free) {
		hmmgpu_devmem_free_maps(gpu);
		return -ENOMEM;
	}
	/* section-aligned, so VRAM chunks are 2 MiB-aligned pfns as THPs need */
	res = request_free_mem_region(&iomem_resource, gpu->vram_size, "hmmgpu VRAM");
	if (IS_ERR(res)) {
		hmmgpu_devmem_free_maps(gpu);
		return PTR_ERR(res);
	}
	gpu->devmem_res = res;
	gpu->pgmap.type = MEMORY_DEVICE_PRIVATE;
	gpu->pgmap.range.start = res->start;
	gpu->pgmap.range.end = res->end;
	gpu->pgmap.nr_range = 1;
	gpu->pgmap.ops = &hmmgpu_devmem_ops;
	gpu->pgmap.owner = gpu;
	addr = memremap_pages(&gpu->pgmap, dev_to_node(&gpu->pdev->dev));
	if (IS_ERR(addr)) {
		release_mem_region(res->start, resource_size(res));
		hmmgpu_devmem_free_maps(gpu);
		gpu->devmem_res = NULL;
		return PTR_ERR(addr);
	}
	gpu->devmem_pfn = res->start >> PAGE_SHIFT;
	bitmap_fill(gpu->devmem_bitmap, npages);
	for (c = 0; c < gpu->devmem_nchunks; c++)
		gpu->devmem_chunk_free[c] = hmmgpu_chunk_pages(gpu, c);
	gpu->devmem_nfree = npages;
	gpu->devmem_hint = 0;
	return 0;
}

void hmmgpu_devmem_fini(struct hmmgpu *gpu)
{
	if (!gpu->devmem_res)
		return;
	hmmgpu_devmem_evict(gpu);
	memunmap_pages(&gpu->pgmap);
	release_mem_region(gpu->devmem_res->start, resource_size(gpu->devmem_res));
	hmmgpu_devmem_free_maps(gpu);
	gpu->devmem_res = NULL;
}

