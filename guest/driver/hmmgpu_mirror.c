// SPDX-License-Identifier: GPL-2.0
/*
 * hmmgpu: the dmirror ABI of lib/test_hmm.c, executed by the device.
 */

/**
 * DOC: mirrors
 *
 * Each open of /dev/hmm_dmirrorN takes one of the GPU's 16 contexts and
 * mirrors the opening process: an mmu_interval_notifier over the whole
 * address space keeps the context's device page table coherent with the CPU
 * page tables. READ and WRITE are device commands on the context's queue that
 * go through the device MMU; missing translations fault and are served by
 * hmmgpu_fault.c. SNAPSHOT reports the CPU's view (hmm_range_fault without
 * faulting), as the reference does.
 */
#include <linux/dma-mapping.h>
#include <linux/fs.h>
#include <linux/hmm.h>
#include <linux/log2.h>
#include <linux/memremap.h>
#include <linux/mm.h>
#include <linux/rmap.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "hmmgpu.h"
#include "hmmgpu_uapi.h"
#include "test_hmm_uapi.h"

/*
 * The CPU page tables of [range->start, range->end) change: clear the device
 * PTEs, flush the device TLB, and only then let the pages go (hmmgpu_pt.c).
 * Flushing waits for the device, so a non-blockable invalidation that finds
 * anything mapped must return false and let the caller retry blockable
 * (include/linux/mmu_notifier.h:263, mm/mmu_notifier.c:487 in the pinned
 * linux-source; the OOM reaper is such a caller).
 */
static bool hmmgpu_invalidate(struct mmu_interval_notifier *mni,
			      const struct mmu_notifier_range *range, unsigned long cur_seq)
{
	struct hmmgpu_mirror *mirror = container_of(mni, struct hmmgpu_mirror, notifier);
	bool own;

	/* our own make_device_exclusive(): the mapping is being set up, not lost */
	if (range->event == MMU_NOTIFY_EXCLUSIVE && range->owner == mirror->gpu) {
		mmu_interval_set_seq(mni, cur_seq);
		return true;
	}
	if (!mmu_notifier_range_blockable(range)) {
		if (!mutex_trylock(&mirror->mutex))
			return false;
		if (hmmgpu_pt_mapped(mirror, range->start, range->end)) {
			mutex_unlock(&mirror->mutex);
			return false;
		}
		mmu_interval_set_seq(mni, cur_seq);
		mutex_unlock(&mirror->mutex);
		return true;
	}
	/*
	 * Our own migration (hmmgpu_migrate() in this task): the PTEs go now,
	 * the TLB flush goes first in its copy's batch (hmmgpu_copy_pages()),
	 * one round trip for both. Until then the device may still reach the
	 * old pages, which is harmless: they are freed only by
	 * migrate_vma_finalize() (mm/migrate_device.c:1372), after the copy,
	 * and the kernel queue runs the flush before the copy, so no device
	 * write lands in a page after it was copied. (lib/test_hmm.c:332 skips
	 * its own migrations' invalidations altogether.)
	 */
	own = range->event == MMU_NOTIFY_MIGRATE && range->owner == mirror->gpu &&
	      READ_ONCE(mirror->migrating) == current;
	mutex_lock(&mirror->mutex);
	mmu_interval_set_seq(mni, cur_seq);
	if (hmmgpu_pt_clear(mirror, range->start, range->end) && !own)
		hmmgpu_pt_sync(mirror, range->start, range->end - range->start);
	mutex_unlock(&mirror->mutex);
	return true;
}

static const struct mmu_interval_notifier_ops hmmgpu_mirror_ops = {
	.invalidate = hmmgpu_invalidate,
};

static void hmmgpu_mirror_unlist(struct hmmgpu_mirror *mirror);

static int hmmgpu_mirror_open(struct inode *inode, struct file *filp)
{
	struct hmmgpu_mirror *mirror;
	struct hmmgpu_pool *pool;
	struct hmmgpu *gpu;
	unsigned int ctx;
	int ret;

	pool = hmmgpu_get_by_minor(iminor(inode));
	if (!pool)
		return -ENODEV;
	gpu = pool->gpu;
	mirror = kzalloc_obj(*mirror);
	if (!mirror) {
		ret = -ENOMEM;
		goto put;
	}
	mirror->gpu = gpu;	/* the reference taken above, dropped at release */
	mirror->pool = pool;
	mutex_init(&mirror->mutex);
	mutex_init(&mirror->req_lock);
	ret = hmmgpu_pt_create(mirror);
	if (ret)
		goto free;

	/* the gone check and the table entry under mirrors_lock: see hmmgpu_mirrors_detach() */
	mutex_lock(&gpu->mirrors_lock);
	ret = -ENODEV;
	if (READ_ONCE(gpu->gone))
		goto unlock;
	ret = -EBUSY;	/* every context is in use */
	spin_lock(&gpu->ctx_lock);
	for (ctx = 0; ctx < HMMGPU_NUM_CONTEXTS && gpu->ctx_mirror[ctx]; ctx++)
		;
	if (ctx < HMMGPU_NUM_CONTEXTS)
		gpu->ctx_mirror[ctx] = mirror;
	spin_unlock(&gpu->ctx_lock);
	if (ctx == HMMGPU_NUM_CONTEXTS)
		goto unlock;
	mirror->ctx = ctx;
	hmmgpu_qwrite(&gpu->cq[ctx], HMMGPU_QREG_PT_BASE_LO,
		      lower_32_bits(hmmgpu_pt_root_dma(mirror)));
	hmmgpu_qwrite(&gpu->cq[ctx], HMMGPU_QREG_PT_BASE_HI,
		      upper_32_bits(hmmgpu_pt_root_dma(mirror)));
	mutex_unlock(&gpu->mirrors_lock);

	ret = mmu_interval_notifier_insert(&mirror->notifier, current->mm, 0,
					   ULONG_MAX & PAGE_MASK, &hmmgpu_mirror_ops);
	if (ret) {
		hmmgpu_mirror_unlist(mirror);
		goto destroy;
	}
	filp->private_data = mirror;
	return 0;

unlock:
	mutex_unlock(&gpu->mirrors_lock);
destroy:
	hmmgpu_pt_destroy(mirror);
free:
	kfree(mirror);
put:
	hmmgpu_put(gpu);
	return ret;
}

/*
 * Take the mirror off its context: the device stops walking its page table
 * and forgets its translations, its DMA mappings go. Called with
 * gpu->mirrors_lock held, while the hardware is still there.
 */
static void hmmgpu_mirror_detach(struct hmmgpu_mirror *mirror)
{
	struct hmmgpu *gpu = mirror->gpu;

	lockdep_assert_held(&gpu->mirrors_lock);
	spin_lock(&gpu->ctx_lock);
	gpu->ctx_mirror[mirror->ctx] = NULL;
	spin_unlock(&gpu->ctx_lock);
	/*
	 * The fault work or a fence waiter may have picked the mirror before;
	 * they are done after this.
	 */
	flush_work(&gpu->fault_work);
	mutex_lock(&gpu->fault_lock);
	mutex_unlock(&gpu->fault_lock);
	mutex_lock(&mirror->mutex);
	hmmgpu_qwrite(&gpu->cq[mirror->ctx], HMMGPU_QREG_PT_BASE_LO, 0);
	hmmgpu_qwrite(&gpu->cq[mirror->ctx], HMMGPU_QREG_PT_BASE_HI, 0);
	hmmgpu_pt_clear(mirror, 0, ULONG_MAX);
	mirror->tlb_stale = true;	/* PT_BASE changed: flush the whole context */
	hmmgpu_pt_sync(mirror, 0, 0);
	hmmgpu_pt_destroy(mirror);
	mutex_unlock(&mirror->mutex);
}

/* Detach the mirror unless removal already did. */
static void hmmgpu_mirror_unlist(struct hmmgpu_mirror *mirror)
{
	struct hmmgpu *gpu = mirror->gpu;

	mutex_lock(&gpu->mirrors_lock);
	if (gpu->ctx_mirror[mirror->ctx] == mirror)
		hmmgpu_mirror_detach(mirror);
	mutex_unlock(&gpu->mirrors_lock);
}

/* PCI removal: every open mirror loses the device; its file stays, with -ENODEV. */
void hmmgpu_mirrors_detach(struct hmmgpu *gpu)
{
	unsigned int ctx;

	mutex_lock(&gpu->mirrors_lock);
	for (ctx = 0; ctx < HMMGPU_NUM_CONTEXTS; ctx++)
		if (gpu->ctx_mirror[ctx])
			hmmgpu_mirror_detach(gpu->ctx_mirror[ctx]);
	mutex_unlock(&gpu->mirrors_lock);
}

static int hmmgpu_mirror_release(struct inode *inode, struct file *filp)
{
	struct hmmgpu_mirror *mirror = filp->private_data;
	struct hmmgpu *gpu = mirror->gpu;

	/* no invalidate callback runs after this (mm/mmu_notifier.c) */
	mmu_interval_notifier_remove(&mirror->notifier);
	hmmgpu_mirror_unlist(mirror);
	hmmgpu_pt_destroy(mirror);
	kfree(mirror);
	hmmgpu_put(gpu);
	return 0;
}

/*
 * Run one command on the mirror's context queue. A fault the driver cancelled
 * comes back as the reason the fault path gave (fault_err), any other device
 * error as -EIO.
 */
static int hmmgpu_mirror_submit(struct hmmgpu_mirror *mirror, struct hmmgpu_command *c)
{
	u64 status;
	int ret;

	WRITE_ONCE(mirror->fault_err, 0);
	ret = hmmgpu_queue_run(&mirror->gpu->cq[mirror->ctx], c, 1, &status);
	if (ret)
		return ret;
	if (status == HMMGPU_ERR_FAULT_CANCELLED)
		return READ_ONCE(mirror->fault_err) ?: -EFAULT;
	if (status) {
		dev_err_ratelimited(&mirror->gpu->pdev->dev, "ctx %u: command failed with error %llu\n",
				    mirror->ctx, status);
		return -EIO;
	}
	return 0;
}

/*
 * Move [start, start + size) between the process and @kbuf through the
 * device: READ (device VA -> bounce) or WRITE (bounce -> device VA).
 */
static int hmmgpu_mirror_rw(struct hmmgpu_mirror *mirror, u32 opcode, unsigned long start,
			    unsigned long size, void *kbuf)
{
	struct hmmgpu *gpu = mirror->gpu;
	struct device *dev = &gpu->pdev->dev;
	unsigned long done, chunk;
	size_t bounce_size = HMMGPU_BOUNCE_MAX;
	struct hmmgpu_command cmd;
	dma_addr_t bounce_dma;
	void *bounce;
	int ret = 0;

	/* a large bounce buffer saves round trips; settle for less if needed */
	bounce_size = min_t(size_t, bounce_size, roundup_pow_of_two(size));
	for (;;) {
		bounce = dma_alloc_coherent(dev, bounce_size, &bounce_dma,
					    GFP_KERNEL | __GFP_NOWARN);
		if (bounce || bounce_size <= HMMGPU_BOUNCE_MIN)
			break;
		bounce_size /= 2;
	}
	if (!bounce)
		return -ENOMEM;
	WRITE_ONCE(mirror->req_start, start);
	WRITE_ONCE(mirror->req_end, start + size);
	for (done = 0; done < size; done += chunk) {
		chunk = min_t(unsigned long, size - done, bounce_size);
		if (opcode == HMMGPU_OP_WRITE)
			memcpy(bounce, kbuf + done, chunk);
		hmmgpu_cmd(&cmd, opcode, 0, mirror->ctx, start + done, bounce_dma, chunk);
		ret = hmmgpu_mirror_submit(mirror, &cmd);
		if (ret)
			break;
		if (opcode == HMMGPU_OP_READ)
			memcpy(kbuf + done, bounce, chunk);
	}
	WRITE_ONCE(mirror->req_end, 0);
	dma_free_coherent(dev, bounce_size, bounce, bounce_dma);
	return ret;
}

/*
 * READ or WRITE when the caller is the mirrored process: one device COPY per
 * chunk between the mirrored range and the user buffer at cmd->ptr, both
 * through the device MMU, so no CPU copies at all. The device translates the
 * whole source and destination before it moves a byte, so a cancelled fault
 * leaves the user buffer untouched. Faults on the user buffer are served but
 * not counted: the dmirror ABI counts faults on the mirrored range only.
 */
static int hmmgpu_mirror_copy_direct(struct hmmgpu_mirror *mirror, struct hmm_dmirror_cmd *cmd,
				     u32 opcode)
{
	unsigned long size = cmd->npages << PAGE_SHIFT;
	unsigned long range = cmd->addr, buf = cmd->ptr;
	u32 va_to_va = HMMGPU_APERTURE_VA << HMMGPU_SRC_APERTURE_SHIFT |
		       HMMGPU_APERTURE_VA << HMMGPU_DST_APERTURE_SHIFT;
	struct hmmgpu_command c;
	unsigned long done, n;
	int ret = 0;

	if (buf + size < buf || range + size < range)
		return -EINVAL;
	WRITE_ONCE(mirror->req_start, range);
	WRITE_ONCE(mirror->req_end, range + size);
	WRITE_ONCE(mirror->buf_start, buf);
	WRITE_ONCE(mirror->buf_end, buf + size);
	for (done = 0; done < size && !ret; done += n) {
		n = min(size - done, HMMGPU_DIRECT_CHUNK);
		if (opcode == HMMGPU_OP_READ)
			hmmgpu_cmd(&c, HMMGPU_OP_COPY, va_to_va, mirror->ctx, range + done,
				   buf + done, n);
		else
			hmmgpu_cmd(&c, HMMGPU_OP_COPY, va_to_va, mirror->ctx, buf + done,
				   range + done, n);
		ret = hmmgpu_mirror_submit(mirror, &c);
	}
	WRITE_ONCE(mirror->req_end, 0);
	WRITE_ONCE(mirror->buf_end, 0);
	return ret;
}

/* READ or WRITE ioctl: the user buffer at cmd->ptr <-> the mirrored range. */
static int hmmgpu_mirror_copy(struct hmmgpu_mirror *mirror, struct hmm_dmirror_cmd *cmd,
			      u32 opcode)
{
	unsigned long size = cmd->npages << PAGE_SHIFT;
	void __user *uptr = u64_to_user_ptr(cmd->ptr);
	int faults = atomic_read(&mirror->faults);
	void *kbuf;
	int ret = 0;

	if (current->mm == mirror->notifier.mm) {
		ret = hmmgpu_mirror_copy_direct(mirror, cmd, opcode);
		goto out;
	}
	/* another process's buffer: the device cannot see it, bounce through the kernel */
	kbuf = kvmalloc(size, GFP_KERNEL);
	if (!kbuf)
		return -ENOMEM;
	if (opcode == HMMGPU_OP_WRITE && copy_from_user(kbuf, uptr, size))
		ret = -EFAULT;
	if (!ret)
		ret = hmmgpu_mirror_rw(mirror, opcode, cmd->addr, size, kbuf);
	/* nothing reaches the user buffer unless the whole READ succeeded */
	if (!ret && opcode == HMMGPU_OP_READ && copy_to_user(uptr, kbuf, size))
		ret = -EFAULT;
	kvfree(kbuf);
out:
	if (!ret)
		cmd->cpages = cmd->npages;
	cmd->faults = atomic_read(&mirror->faults) - faults;
	return ret;
}

static int hmmgpu_mirror_read(struct hmmgpu_mirror *mirror, struct hmm_dmirror_cmd *cmd)
{
	return hmmgpu_mirror_copy(mirror, cmd, HMMGPU_OP_READ);
}

/* The reference's encoding of one hmm_range_fault() snapshot entry. */
static unsigned char hmmgpu_snapshot_perm(struct hmmgpu_mirror *mirror, unsigned long hpfn)
{
	unsigned char perm;
	struct page *page;

	if (hpfn & HMM_PFN_ERROR)
		return HMM_DMIRROR_PROT_ERROR;
	if (!(hpfn & HMM_PFN_VALID))
		return HMM_DMIRROR_PROT_NONE;
	page = hmm_pfn_to_page(hpfn);
	if (is_device_private_page(page))
		perm = page_pgmap(page)->owner == mirror->gpu ?
			HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL : HMM_DMIRROR_PROT_DEV_PRIVATE_REMOTE;
	else if (is_device_coherent_page(page))
		perm = page_pgmap(page)->owner == mirror->gpu ?
			HMM_DMIRROR_PROT_DEV_COHERENT_LOCAL : HMM_DMIRROR_PROT_DEV_COHERENT_REMOTE;
	else if (is_zero_pfn(page_to_pfn(page)))
		perm = HMM_DMIRROR_PROT_ZERO;
	else
		perm = HMM_DMIRROR_PROT_NONE;
	perm |= (hpfn & HMM_PFN_WRITE) ? HMM_DMIRROR_PROT_WRITE : HMM_DMIRROR_PROT_READ;
	if (hmm_pfn_to_map_order(hpfn) + PAGE_SHIFT == PMD_SHIFT)
		perm |= HMM_DMIRROR_PROT_PMD;
	else if (hmm_pfn_to_map_order(hpfn) + PAGE_SHIFT == PUD_SHIFT)
		perm |= HMM_DMIRROR_PROT_PUD;
	return perm;
}

static bool hmmgpu_snapshot_invalidate(struct mmu_interval_notifier *mni,
				       const struct mmu_notifier_range *range,
				       unsigned long cur_seq)
{
	mmu_interval_set_seq(mni, cur_seq);
	return true;
}

static const struct mmu_interval_notifier_ops hmmgpu_snapshot_ops = {
	.invalidate = hmmgpu_snapshot_invalidate,
};

#define SNAPSHOT_BATCH 64

static int hmmgpu_mirror_snapshot(struct hmmgpu_mirror *mirror,
				  struct hmm_dmirror_cmd *cmd)
{
	struct mm_struct *mm = mirror->notifier.mm;
	unsigned long end = cmd->addr + (cmd->npages << PAGE_SHIFT);
	char __user *uptr = u64_to_user_ptr(cmd->ptr);
	unsigned long pfns[SNAPSHOT_BATCH];
	unsigned char perm[SNAPSHOT_BATCH];
	struct mmu_interval_notifier notifier;
	unsigned long addr, i, n;
	int ret = 0;

	if (!mmget_not_zero(mm))
		return -EINVAL;
	for (addr = cmd->addr; addr < end && !ret; addr += n << PAGE_SHIFT) {
		struct hmm_range range = {
			.notifier = &notifier,
			.hmm_pfns = pfns,
			.start = addr,
			.end = min(end, addr + (SNAPSHOT_BATCH << PAGE_SHIFT)),
			.dev_private_owner = mirror->gpu,
		};

		n = (range.end - range.start) >> PAGE_SHIFT;
		/* a private notifier: the mirror's own would clear device PTEs */
		ret = mmu_interval_notifier_insert(&notifier, mm, range.start,
						   range.end - range.start, &hmmgpu_snapshot_ops);
		if (ret)
			break;
		do {
			range.notifier_seq = mmu_interval_read_begin(&notifier);
			mmap_read_lock(mm);
			ret = hmm_range_fault(&range);
			mmap_read_unlock(mm);
		} while (ret == -EBUSY ||
			 (!ret && mmu_interval_read_retry(&notifier, range.notifier_seq)));
		mmu_interval_notifier_remove(&notifier);
		if (ret)
			break;
		for (i = 0; i < n; i++)
			perm[i] = hmmgpu_snapshot_perm(mirror, pfns[i]);
		if (copy_to_user(uptr, perm, n)) {
			ret = -EFAULT;
			break;
		}
		uptr += n;
		cmd->cpages += n;
	}
	mmput(mm);
	return ret;
}

/*
 * EXCLUSIVE: take device-exclusive access to each page and map it with the
 * ATOMIC permission; a CPU access later revokes it through the notifier.
 * Then hand back the data through the device, like the reference.
 */
/*
 * Take device-exclusive access to each page of [start, end) and map it for
 * the device's atomics: the EXCLUSIVE ioctl, and device faults with ATOMIC
 * access. A CPU touch of a page later revokes it through the notifier.
 */
int hmmgpu_map_exclusive(struct hmmgpu_mirror *mirror, unsigned long start, unsigned long end)
{
	struct hmmgpu *gpu = mirror->gpu;
	struct mm_struct *mm = mirror->notifier.mm;
	unsigned long addr;
	int ret = 0, sync;

	if (!mmget_not_zero(mm))
		return -EINVAL;
	mmap_read_lock(mm);
	for (addr = start; addr < end && !ret; addr += PAGE_SIZE) {
		struct folio *folio;
		struct page *page;
		dma_addr_t dma;

		/* tables first: no reclaim under the folio lock nor mirror->mutex */
		ret = hmmgpu_pt_reserve(mirror, HMMGPU_PT_LEVELS - 1);
		if (ret)
			break;
		page = make_device_exclusive(mm, addr, gpu, &folio);
		if (IS_ERR(page)) {
			ret = PTR_ERR(page);
			break;
		}
		/* the folio lock keeps the CPU from taking the page back meanwhile */
		dma = dma_map_page(&gpu->pdev->dev, page, 0, PAGE_SIZE, DMA_BIDIRECTIONAL);
		if (dma_mapping_error(&gpu->pdev->dev, dma)) {
			ret = -ENOMEM;
		} else {
			mutex_lock(&mirror->mutex);
			ret = hmmgpu_pt_map(mirror, addr, dma | HMMGPU_PTE_READ |
					    HMMGPU_PTE_WRITE | HMMGPU_PTE_ATOMIC, 0);
			mutex_unlock(&mirror->mutex);
			if (ret)
				dma_unmap_page(&gpu->pdev->dev, dma, PAGE_SIZE, DMA_BIDIRECTIONAL);
		}
		folio_unlock(folio);
		folio_put(folio);
	}
	mmap_read_unlock(mm);
	mmput(mm);
	/* read-only entries replaced above leave the device TLB before their pages go */
	sync = hmmgpu_pt_flush(mirror, start, end);
	return ret ?: sync;
}

/* EXCLUSIVE: map the range for atomics, then hand back what the device reads. */
static int hmmgpu_mirror_exclusive(struct hmmgpu_mirror *mirror, struct hmm_dmirror_cmd *cmd)
{
	int ret = hmmgpu_map_exclusive(mirror, cmd->addr,
				       cmd->addr + (cmd->npages << PAGE_SHIFT));

	return ret ?: hmmgpu_mirror_read(mirror, cmd);
}

/* CHECK_EXCLUSIVE: 0 once no page of the range is mapped for atomics any more. */
static int hmmgpu_mirror_check_exclusive(struct hmmgpu_mirror *mirror,
					 struct hmm_dmirror_cmd *cmd)
{
	unsigned long end = cmd->addr + (cmd->npages << PAGE_SHIFT);
	unsigned long addr;
	int ret = 0;

	mutex_lock(&mirror->mutex);
	for (addr = cmd->addr; addr < end; addr += PAGE_SIZE)
		if (hmmgpu_pt_lookup(mirror, addr) & HMMGPU_PTE_ATOMIC)
			ret = -EPERM;
	mutex_unlock(&mirror->mutex);
	return ret;
}

/* HMMGPU_IOC_ATOMIC: one device ATOMIC on the context queue; the old value comes back. */
static int hmmgpu_mirror_atomic(struct hmmgpu_mirror *mirror, void __user *uarg)
{
	struct hmmgpu *gpu = mirror->gpu;
	int faults = atomic_read(&mirror->faults);
	struct hmmgpu_atomic a;
	struct hmmgpu_command c;
	dma_addr_t old_dma;
	u64 *old;
	int ret;

	if (copy_from_user(&a, uarg, sizeof(a)))
		return -EFAULT;
	if (a.addr % 8 || (a.op != HMMGPU_ATOMIC_FETCH_ADD && a.op != HMMGPU_ATOMIC_SWAP))
		return -EINVAL;
	old = dma_alloc_coherent(&gpu->pdev->dev, sizeof(*old), &old_dma, GFP_KERNEL);
	if (!old)
		return -ENOMEM;
	hmmgpu_cmd(&c, HMMGPU_OP_ATOMIC, a.op << HMMGPU_ATOMIC_OP_SHIFT, mirror->ctx, a.addr,
		   a.operand, old_dma);
	ret = hmmgpu_mirror_submit(mirror, &c);
	a.old = READ_ONCE(*old);
	a.faults = atomic_read(&mirror->faults) - faults;
	dma_free_coherent(&gpu->pdev->dev, sizeof(*old), old, old_dma);
	if (!ret && copy_to_user(uarg, &a, sizeof(a)))
		ret = -EFAULT;
	return ret;
}

static int hmmgpu_mirror_request(struct hmmgpu_mirror *mirror, unsigned int command,
				 void __user *uarg)
{
	struct hmm_dmirror_cmd cmd;
	int ret;

	if (command == HMMGPU_IOC_ATOMIC)
		return hmmgpu_mirror_atomic(mirror, uarg);
	if (copy_from_user(&cmd, uarg, sizeof(cmd)))
		return -EFAULT;
	if (cmd.addr & ~PAGE_MASK)
		return -EINVAL;
	if (cmd.addr >= cmd.addr + (cmd.npages << PAGE_SHIFT))
		return -EINVAL;
	cmd.cpages = 0;
	cmd.faults = 0;

	switch (command) {
	case HMM_DMIRROR_READ:
		ret = hmmgpu_mirror_read(mirror, &cmd);
		break;
	case HMM_DMIRROR_WRITE:
		ret = hmmgpu_mirror_copy(mirror, &cmd, HMMGPU_OP_WRITE);
		break;
	case HMM_DMIRROR_SNAPSHOT:
		ret = hmmgpu_mirror_snapshot(mirror, &cmd);
		break;
	case HMM_DMIRROR_FLAGS:
		mirror->flags = cmd.npages;
		ret = 0;
		break;
	case HMM_DMIRROR_RELEASE:
		hmmgpu_devmem_evict(mirror->gpu);
		ret = 0;
		break;
	case HMM_DMIRROR_MIGRATE_TO_DEV:
		ret = hmmgpu_migrate(mirror, &cmd, true);
		/* like the reference, hand back what the device now holds */
		if (!ret)
			ret = hmmgpu_mirror_read(mirror, &cmd);
		break;
	case HMM_DMIRROR_MIGRATE_TO_SYS:
		ret = hmmgpu_migrate(mirror, &cmd, false);
		break;
	case HMM_DMIRROR_EXCLUSIVE:
		ret = hmmgpu_mirror_exclusive(mirror, &cmd);
		break;
	case HMM_DMIRROR_CHECK_EXCLUSIVE:
		ret = hmmgpu_mirror_check_exclusive(mirror, &cmd);
		break;
	case HMM_DMIRROR_READ_UNLOCKED:
		WRITE_ONCE(mirror->req_unlocked, true);
		ret = hmmgpu_mirror_read(mirror, &cmd);
		WRITE_ONCE(mirror->req_unlocked, false);
		break;
	default:
		return -EINVAL;
	}
	if (ret)
		return ret;
	if (copy_to_user(uarg, &cmd, sizeof(cmd)))
		return -EFAULT;
	return 0;
}

/*
 * One request of one file at a time: the fault path reads the request in
 * flight (req_start..buf_end) from the mirror. Removal of the GPU makes
 * every later request -ENODEV (hmmgpu_dev_enter()).
 */
static long hmmgpu_mirror_ioctl(struct file *filp, unsigned int command, unsigned long arg)
{
	struct hmmgpu_mirror *mirror = filp->private_data;
	long ret;
	int idx;

	if (!hmmgpu_dev_enter(mirror->gpu, &idx))
		return -ENODEV;
	mutex_lock(&mirror->req_lock);
	ret = hmmgpu_mirror_request(mirror, command, (void __user *)arg);
	mutex_unlock(&mirror->req_lock);
	hmmgpu_dev_exit(idx);
	return ret;
}

/* The reference lets tests map zeroed pages from the device file. */
static int hmmgpu_mirror_mmap(struct file *file, struct vm_area_struct *vma)
{
	unsigned long addr;

	for (addr = vma->vm_start; addr < vma->vm_end; addr += PAGE_SIZE) {
		struct page *page = alloc_page(GFP_KERNEL | __GFP_ZERO);
		int ret;

		if (!page)
			return -ENOMEM;
		ret = vm_insert_page(vma, addr, page);
		put_page(page);
		if (ret)
			return ret;
	}
	return 0;
}

const struct file_operations hmmgpu_mirror_fops = {
	.owner = THIS_MODULE,
	.open = hmmgpu_mirror_open,
	.release = hmmgpu_mirror_release,
	.unlocked_ioctl = hmmgpu_mirror_ioctl,
	.mmap = hmmgpu_mirror_mmap,
	.llseek = default_llseek,
};
