// SPDX-License-Identifier: GPL-2.0
/*
 * hmmgpu: VRAM as DEVICE_PRIVATE memory, and migration with the copy engine.
 *
 * DOC: device memory
 * The whole VRAM is registered with memremap_pages() as MEMORY_DEVICE_PRIVATE
 * over a free physical range (request_free_mem_region()); device page N is
 * VRAM offset N * PAGE_SIZE. Free device pages sit on a stack of page indexes
 * under devmem_lock; folio_free() pushes a page back when its last reference
 * goes.
 *
 * DOC: migration
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

#define MIGRATE_CHUNK	512	/* pages per migrate_vma round: 2 MiB */
#define MAX_RUN_PAGES	512	/* pages one COPY may move */

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

static struct page *hmmgpu_devmem_alloc(struct hmmgpu *gpu)
{
	struct page *page = NULL;

	spin_lock(&gpu->devmem_lock);
	if (gpu->devmem_nfree)
		page = pfn_to_page(gpu->devmem_pfn + gpu->devmem_free[--gpu->devmem_nfree]);
	spin_unlock(&gpu->devmem_lock);
	if (page)
		zone_device_folio_init(page_folio(page), &gpu->pgmap, 0);
	return page;
}

static void hmmgpu_folio_free(struct folio *folio)
{
	struct hmmgpu *gpu = page_gpu(&folio->page);

	spin_lock(&gpu->devmem_lock);
	gpu->devmem_free[gpu->devmem_nfree++] = folio_pfn(folio) - gpu->devmem_pfn;
	spin_unlock(&gpu->devmem_lock);
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

/*
 * Fill dst[] for pages leaving VRAM: allocate system pages (locked), copy with
 * the device. @alloc returns a new page for index i or NULL.
 */
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
	struct page *sys[MIGRATE_CHUNK];
	u64 from[MIGRATE_CHUNK];
	u64 to[MIGRATE_CHUNK];
};

static int hmmgpu_evacuate(struct hmmgpu *gpu, const unsigned long *src, unsigned long *dst,
			   int n, struct page *(*alloc)(void *arg, int i), void *arg)
{
	struct copy_list *l = kmalloc(sizeof(*l), GFP_KERNEL);
	struct page **sys;
	u64 *from, *to;
	int i, m = 0, ret;

	if (!l)
		return -ENOMEM;
	sys = l->sys;
	from = l->from;
	to = l->to;

	for (i = 0; i < n; i++) {
		struct page *page = migrate_pfn_to_page(src[i]);

		dst[i] = 0;
		if (!page || !(src[i] & MIGRATE_PFN_MIGRATE) || !hmmgpu_page_is_vram(gpu, page))
			continue;
		sys[m] = alloc(arg, i);
		if (!sys[m])
			continue;	/* this page stays in VRAM */
		lock_page(sys[m]);
		from[m] = hmmgpu_vram_offset(gpu, page);
		dst[i] = migrate_pfn(page_to_pfn(sys[m]));
		m++;
	}
	ret = hmmgpu_copy_sys_vram(gpu, sys, to, from, m, false);
	if (ret)
		hmmgpu_drop_dst(dst, n);	/* the data stays in VRAM */
	kfree(l);
	return ret;
}

struct vma_alloc_arg {
	struct vm_area_struct *vma;
	unsigned long start;
};

static struct page *hmmgpu_alloc_sys_vma(void *p, int i)
{
	struct vma_alloc_arg *arg = p;

	return alloc_page_vma(GFP_HIGHUSER_MOVABLE, arg->vma, arg->start + i * PAGE_SIZE);
}

static struct page *hmmgpu_alloc_sys(void *p, int i)
{
	return alloc_page(GFP_HIGHUSER_MOVABLE | __GFP_NOFAIL);
}

/* A CPU touched a device page: bring it back with the copy engine. */
static vm_fault_t hmmgpu_migrate_to_ram(struct vm_fault *vmf)
{
	struct hmmgpu *gpu = page_gpu(vmf->page);
	unsigned long src = 0, dst = 0;
	struct migrate_vma args = {
		.vma = vmf->vma,
		.start = vmf->address & PAGE_MASK,
		.end = (vmf->address & PAGE_MASK) + PAGE_SIZE,
		.src = &src,
		.dst = &dst,
		.pgmap_owner = gpu,
		.flags = MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
		.fault_page = vmf->page,
	};
	struct vma_alloc_arg arg = { .vma = vmf->vma, .start = args.start };
	int ret;

	if (migrate_vma_setup(&args))
		return VM_FAULT_SIGBUS;
	ret = hmmgpu_evacuate(gpu, &src, &dst, 1, hmmgpu_alloc_sys_vma, &arg);
	migrate_vma_pages(&args);
	migrate_vma_finalize(&args);
	return ret ? VM_FAULT_SIGBUS : 0;
}

static const struct dev_pagemap_ops hmmgpu_devmem_ops = {
	.folio_free = hmmgpu_folio_free,
	.migrate_to_ram = hmmgpu_migrate_to_ram,
};

/* One migrate_vma round toward VRAM: allocate device pages, copy, commit. */
static int hmmgpu_to_vram(struct hmmgpu_mirror *mirror, struct migrate_vma *args)
{
	struct copy_list *l = kmalloc(sizeof(*l), GFP_KERNEL);
	struct hmmgpu *gpu = mirror->gpu;
	struct page **sys;
	u64 *from, *to;
	unsigned long i;
	int m = 0, ret;

	if (!l)
		return -ENOMEM;
	sys = l->sys;
	from = l->from;
	to = l->to;

	for (i = 0; i < args->npages; i++) {
		struct page *spage = migrate_pfn_to_page(args->src[i]);
		struct page *dpage;

		args->dst[i] = 0;
		if (!(args->src[i] & MIGRATE_PFN_MIGRATE))
			continue;
		if (spage && is_device_private_page(spage))
			continue;	/* already device memory (ours or another GPU's) */
		if (mirror->flags & HMM_DMIRROR_FLAG_FAIL_ALLOC) {
			mirror->flags &= ~HMM_DMIRROR_FLAG_FAIL_ALLOC;
			continue;	/* the test asked for one failed allocation */
		}
		dpage = hmmgpu_devmem_alloc(gpu);
		if (!dpage)
			continue;
		sys[m] = spage;
		to[m] = hmmgpu_vram_offset(gpu, dpage);
		args->dst[i] = migrate_pfn(page_to_pfn(dpage)) |
			       (args->src[i] & MIGRATE_PFN_WRITE);
		m++;
	}
	ret = hmmgpu_copy_sys_vram(gpu, sys, from, to, m, true);
	if (ret)
		hmmgpu_drop_dst(args->dst, args->npages);
	kfree(l);
	return ret;
}

/* After migrate_vma_pages(): did this page move? */
static bool hmmgpu_migrated(struct hmmgpu *gpu, unsigned long src, unsigned long dst,
			    bool to_vram)
{
	struct page *page = migrate_pfn_to_page(dst);

	return (src & MIGRATE_PFN_MIGRATE) && page &&
	       hmmgpu_page_is_vram(gpu, page) == to_vram;
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
			.flags = to_vram ? MIGRATE_VMA_SELECT_SYSTEM :
					   MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
		};

		if (!vma || !(vma->vm_flags & VM_READ)) {
			ret = -EINVAL;	/* a hole or a PROT_NONE area */
			break;
		}
		next = min3(end, vma->vm_end, addr + (MIGRATE_CHUNK << PAGE_SHIFT));
		args.vma = vma;
		args.end = next;
		ret = migrate_vma_setup(&args);
		if (ret)
			break;
		if (to_vram) {
			ret = hmmgpu_to_vram(mirror, &args);
		} else {
			struct vma_alloc_arg arg = { .vma = vma, .start = addr };

			ret = hmmgpu_evacuate(gpu, src, dst, args.npages, hmmgpu_alloc_sys_vma,
					      &arg);
		}
		migrate_vma_pages(&args);
		for (i = 0; i < args.npages; i++)
			if (hmmgpu_migrated(gpu, src[i], dst[i], to_vram))
				cmd->cpages++;
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

	for (pfn = 0; pfn < npages; pfn += MIGRATE_CHUNK) {
		unsigned long n = min_t(unsigned long, MIGRATE_CHUNK, npages - pfn);

		migrate_device_range(src, gpu->devmem_pfn + pfn, n);
		if (hmmgpu_evacuate(gpu, src, dst, n, hmmgpu_alloc_sys, NULL))
			dev_err(&gpu->pdev->dev, "eviction copy failed\n");
		migrate_device_pages(src, dst, n);
		migrate_device_finalize(src, dst, n);
	}
	kvfree(src);
}

int hmmgpu_devmem_init(struct hmmgpu *gpu)
{
	unsigned long npages = gpu->vram_size >> PAGE_SHIFT;
	struct resource *res;
	unsigned long i;
	void *addr;

	spin_lock_init(&gpu->devmem_lock);
	gpu->devmem_free = kvcalloc(npages, sizeof(*gpu->devmem_free), GFP_KERNEL);
	if (!gpu->devmem_free)
		return -ENOMEM;
	res = request_free_mem_region(&iomem_resource, gpu->vram_size, "hmmgpu VRAM");
	if (IS_ERR(res)) {
		kvfree(gpu->devmem_free);
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
		kvfree(gpu->devmem_free);
		return PTR_ERR(addr);
	}
	gpu->devmem_pfn = res->start >> PAGE_SHIFT;
	/* hand out low VRAM first */
	for (i = 0; i < npages; i++)
		gpu->devmem_free[i] = npages - 1 - i;
	gpu->devmem_nfree = npages;
	return 0;
}

void hmmgpu_devmem_fini(struct hmmgpu *gpu)
{
	if (!gpu->devmem_res)
		return;
	hmmgpu_devmem_evict(gpu);
	memunmap_pages(&gpu->pgmap);
	release_mem_region(gpu->devmem_res->start, resource_size(gpu->devmem_res));
	kvfree(gpu->devmem_free);
	gpu->devmem_res = NULL;
}
