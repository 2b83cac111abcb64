// SPDX-License-Identifier: GPL-2.0
/*
 * hmmgpu: device page faults.
 */

/**
 * DOC: fault path
 *
 * The fault interrupt schedules hmmgpu_fault_work(). It drains the fault
 * buffer (the records with their VALID bit set: no MMIO read of FAULT_PUT),
 * keeping per context the lowest and highest faulting address and whether any
 * access wrote, then serves each context as one batch, one hmm_range_fault()
 * for the pages of all its records and their neighbours: by default from the
 * lowest address to the end of the READ/WRITE in flight (the dmirror ABI
 * counts one fault for a READ that faulted), or with the fault_granule_kb
 * module parameter the aligned blocks of that size holding the records, as
 * GPUs that fault in fixed granules do; clipped to the READ/WRITE, at most
 * 16 MiB (a fault outside any READ/WRITE brings in its page). Inside
 * mmu_interval_read_begin()/mmu_interval_read_retry() with the mirror mutex
 * held while the PTEs are written (the Documentation/mm/hmm.rst pattern).
 * Then the context's queue gets REPLAY, or CANCEL when the access is not
 * allowed (-EFAULT for PROT_NONE, -EPERM for a write to read-only memory),
 * the error being left in mirror->fault_err for the waiting ioctl. A fault
 * with ATOMIC access makes its page device-exclusive instead. FAULT_GET is
 * written last, after the replays: the device needs it only for free room.
 *
 * A context queue's fence waiter that finds a record while it polls serves
 * the faults itself (fault_inline, default on): the fault work is an
 * interrupt and a wake-up away, and the waiter has nothing else to do. It
 * takes gpu->fault_lock by trylock (the work may hold it) and then polls on
 * for the replayed command. The kernel queue's waiters never serve faults:
 * they may hold a mirror's mutex or mmap_lock, which serving takes.
 */
#include <linux/dma-mapping.h>
#include <linux/hmm.h>
#include <linux/log2.h>
#include <linux/memremap.h>
#include <linux/mm.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>

#include "hmmgpu.h"
#include "test_hmm_uapi.h"

#define HMMGPU_MAX_FAULT_PAGES	(16UL << (20 - PAGE_SHIFT))	/* 16 MiB per batch */
/* a fault-in this small keeps its hmm_range_fault() results on the stack */
#define HMMGPU_FAULT_STACK_PAGES	16

static bool fault_inline = true;
module_param(fault_inline, bool, 0644);
MODULE_PARM_DESC(fault_inline,
		 "a context queue's polling fence waiter serves the faults it sees (default on); off: the fault work always does");

static bool replay_word = true;
module_param(replay_word, bool, 0644);
MODULE_PARM_DESC(replay_word,
		 "REPLAY through the queue's replay word while the device watches it (default on); off: always a CONTROL write");

static unsigned int fault_granule_kb;
module_param(fault_granule_kb, uint, 0644);
MODULE_PARM_DESC(fault_granule_kb,
		 "what a device fault brings in: 0 (default) the rest of the READ/WRITE; else the aligned blocks of this many KiB (rounded up to a power of two, 4 KiB to 16 MiB) around the faulting pages");

/* The granule in bytes, 0 for "the rest of the request". */
static unsigned long hmmgpu_fault_granule(void)
{
	unsigned long kb = READ_ONCE(fault_granule_kb);

	if (!kb)
		return 0;
	return roundup_pow_of_two(clamp(kb << 10, PAGE_SIZE, HMMGPU_MAX_FAULT_PAGES << PAGE_SHIFT));
}

/* The device PTE for one hmm_range_fault() result; 0 if it cannot be mapped. */
static u64 hmmgpu_pte_for(struct hmmgpu *gpu, unsigned long hpfn, unsigned int order)
{
	struct page *page = hmm_pfn_to_page(hpfn);
	u64 flags = HMMGPU_PTE_READ;
	struct hmmgpu_pool *pool;
	dma_addr_t dma;

	/* ATOMIC is granted only with device-exclusive access (hmmgpu_mirror.c) */
	if (hpfn & HMM_PFN_WRITE)
		flags |= HMMGPU_PTE_WRITE;
	pool = hmmgpu_page_pool(page);
	/* migrated to this GPU: the device reads its own VRAM */
	if (pool && pool->gpu == gpu)
		return hmmgpu_vram_offset(page) | flags | HMMGPU_PTE_VRAM;
	/*
	 * Another GPU's coherent VRAM (its private pages never get here:
	 * hmm_range_fault() migrates them, they are not ours): over the fabric.
	 */
	if (pool) {
		u32 peer = pool->gpu->fabric_id;

		if (!(gpu->peer_links & BIT(peer))) {
			dev_warn_once(&gpu->pdev->dev,
				      "no fabric link to GPU %u, whose VRAM a mirror maps\n", peer);
			return 0;
		}
		return hmmgpu_vram_offset(page) | flags | HMMGPU_PTE_VRAM | HMMGPU_PTE_PEER |
		       (u64)peer << HMMGPU_PTE_PEER_SHIFT;
	}
	dma = dma_map_page(&gpu->pdev->dev, page, 0, PAGE_SIZE << order, DMA_BIDIRECTIONAL);
	if (dma_mapping_error(&gpu->pdev->dev, dma))
		return 0;
	return dma | flags;
}

/* A 2 MiB device PTE fits: a PMD-sized CPU mapping, aligned, wholly in the range. */
static bool hmmgpu_can_map_2m(struct hmmgpu *gpu, unsigned long hpfn, unsigned long va,
			      unsigned long left)
{
	struct page *page = hmm_pfn_to_page(hpfn);

	if (hmm_pfn_to_map_order(hpfn) < 9 || !IS_ALIGNED(va, SZ_2M) || left < 512)
		return false;
	/* a device THP in our VRAM is one aligned 2 MiB run of VRAM */
	if (is_zone_device_page(page))
		return hmmgpu_page_is_vram(gpu, page) &&
		       IS_ALIGNED(hmmgpu_vram_offset(page), SZ_2M);
	return true;
}

/* A page of the range is in this GPU's VRAM and not writable. */
static bool hmmgpu_own_read_only(struct hmmgpu *gpu, struct hmm_range *range)
{
	unsigned long i, npages = (range->end - range->start) >> PAGE_SHIFT;

	for (i = 0; i < npages; i++) {
		unsigned long hpfn = range->hmm_pfns[i];

		if ((hpfn & HMM_PFN_VALID) && !(hpfn & HMM_PFN_WRITE) &&
		    is_device_private_page(hmm_pfn_to_page(hpfn)) &&
		    hmmgpu_page_is_vram(gpu, hmm_pfn_to_page(hpfn)))
			return true;
	}
	return false;
}

/* Write the device PTEs for a faulted range. Called with mirror->mutex held. */
static int hmmgpu_map_range(struct hmmgpu_mirror *mirror, struct hmm_range *range)
{
	unsigned long npages = (range->end - range->start) >> PAGE_SHIFT;
	unsigned long i = 0;

	while (i < npages) {
		unsigned long va = range->start + (i << PAGE_SHIFT);
		unsigned long hpfn = range->hmm_pfns[i];
		unsigned int order = 0;
		u64 pte;
		int ret;

		if (!(hpfn & HMM_PFN_VALID))
			return -EFAULT;
		if (hmmgpu_can_map_2m(mirror->gpu, hpfn, va, npages - i))
			order = 9;
		pte = hmmgpu_pte_for(mirror->gpu, hpfn, order);
		if (!pte)
			return -ENOMEM;
		ret = hmmgpu_pt_map(mirror, va, pte, order);
		if (ret == -EEXIST) {
			if (!(pte & HMMGPU_PTE_VRAM))
				dma_unmap_page(&mirror->gpu->pdev->dev, pte & HMMGPU_PTE_ADDR_MASK,
					       PAGE_SIZE << order, DMA_BIDIRECTIONAL);
			pte = hmmgpu_pte_for(mirror->gpu, hpfn, 0);
			order = 0;
			ret = pte ? hmmgpu_pt_map(mirror, va, pte, 0) : -ENOMEM;
		}
		if (ret)
			return ret;
		i += 1UL << order;
	}
	return 0;
}

/* Fault [start, end) into the device page table of @mirror. */
int hmmgpu_fault_in(struct hmmgpu_mirror *mirror, unsigned long start,
		    unsigned long end, bool write)
{
	struct mm_struct *mm = mirror->notifier.mm;
	unsigned long npages = (end - start) >> PAGE_SHIFT;
	unsigned long pfns[HMMGPU_FAULT_STACK_PAGES] = {};
	struct hmm_range range = {
		.notifier = &mirror->notifier,
		.start = start,
		.end = end,
		.default_flags = HMM_PFN_REQ_FAULT | (write ? HMM_PFN_REQ_WRITE : 0),
		.dev_private_owner = mirror->gpu,
	};
	unsigned long timeout = jiffies + msecs_to_jiffies(HMM_RANGE_DEFAULT_TIMEOUT);
	/* the most tables the range can need: per 2 MiB, per 1 GiB, per 512 GiB span */
	unsigned int tables = min_t(unsigned long, npages / HMMGPU_PT_ENTRIES + 3, 64);
	bool moved = false;
	int ret, sync;

	range.hmm_pfns = npages <= ARRAY_SIZE(pfns) ? pfns :
			 kvcalloc(npages, sizeof(*range.hmm_pfns), GFP_KERNEL);
	if (!range.hmm_pfns)
		return -ENOMEM;
	if (!mmget_not_zero(mm)) {
		ret = -EFAULT;
		goto free;
	}
again:
	/* no allocation with reclaim under mirror->mutex (see hmmgpu_pt.c) */
	ret = hmmgpu_pt_reserve(mirror, tables);
	if (ret)
		goto put;
	for (;;) {
		if (time_after(jiffies, timeout)) {
			ret = -EBUSY;
			goto put;
		}
		if (READ_ONCE(mirror->req_unlocked)) {
			/* takes mmap_lock itself and may drop it, so userfaultfd can resolve */
			ret = hmm_range_fault_unlocked_timeout(&range, 0);
		} else {
			range.notifier_seq = mmu_interval_read_begin(range.notifier);
			mmap_read_lock(mm);
			ret = hmm_range_fault(&range);
			mmap_read_unlock(mm);
		}
		if (ret == -EBUSY)
			continue;
		if (ret)
			goto put;
		if (write && !moved && hmmgpu_own_read_only(mirror->gpu, &range)) {
			/*
			 * hmm_range_fault() reports a page in our own VRAM as it
			 * is, never faulting it for write (mm/hmm.c:276): one
			 * migrated read-only (from the zero page, or shared after
			 * fork) would fault again on every replay. Bring it back;
			 * the CPU's write fault then gives the range its own page.
			 */
			struct hmm_dmirror_cmd back = { .addr = start, .npages = npages };

			moved = true;
			ret = hmmgpu_migrate(mirror, &back, false);
			if (ret)
				goto put;
			continue;
		}
		mutex_lock(&mirror->mutex);
		if (!mmu_interval_read_retry(range.notifier, range.notifier_seq))
			break;
		mutex_unlock(&mirror->mutex);
	}
	ret = hmmgpu_map_range(mirror, &range);
	/* a permission upgrade replaced entries the device TLB may still hold */
	sync = hmmgpu_pt_sync(mirror, start, end - start);
	mutex_unlock(&mirror->mutex);
	ret = ret ?: sync;
	if (ret == -ENOMEM && tables < npages / HMMGPU_PT_ENTRIES + 3) {
		/* a large range used the reserve up: reserve for all of it, fault again */
		tables = npages / HMMGPU_PT_ENTRIES + 3;
		goto again;
	}
put:
	mmput(mm);
free:
	if (range.hmm_pfns != pfns)
		kvfree(range.hmm_pfns);
	return ret;
}

/*
 * Serve one context's batch of faults: fault in, then REPLAY or CANCEL. An
 * ATOMIC access needs the page device-exclusive (make_device_exclusive()), and
 * only the one page: exclusivity costs the CPU a fault when it touches it.
 */
static void hmmgpu_serve_faults(struct hmmgpu_mirror *mirror, unsigned long va,
				unsigned long last, bool write, bool atomic)
{
	struct hmmgpu_queue *q = &mirror->gpu->cq[mirror->ctx];
	unsigned long granule = hmmgpu_fault_granule();
	unsigned long start = va & PAGE_MASK;
	unsigned long end = start + PAGE_SIZE;
	unsigned long lo, hi;
	bool in_req, in_buf = false;
	int ret;

	/* the READ/WRITE in flight, or the caller's buffer, holding the fault */
	lo = READ_ONCE(mirror->req_start) & PAGE_MASK;
	hi = PAGE_ALIGN(READ_ONCE(mirror->req_end));
	in_req = start >= lo && start < hi;
	if (!in_req) {
		lo = READ_ONCE(mirror->buf_start) & PAGE_MASK;
		hi = PAGE_ALIGN(READ_ONCE(mirror->buf_end));
		in_buf = start >= lo && start < hi;
	}
	/* an ATOMIC makes only its own page device-exclusive */
	if ((in_req || in_buf) && !atomic) {
		if (granule) {
			start = max(ALIGN_DOWN(start, granule), lo);
			end = min(ALIGN(last + 1, granule), hi);	/* last >= va */
		} else {
			end = hi;
		}
		end = min(end, start + (HMMGPU_MAX_FAULT_PAGES << PAGE_SHIFT));
	}
	if (atomic)
		ret = hmmgpu_map_exclusive(mirror, start, end);
	else
		ret = hmmgpu_fault_in(mirror, start, end, write);
	if (!in_buf)
		atomic_inc(&mirror->faults);
	if (ret) {
		/* a bad user buffer is what copy_to_user() would report */
		WRITE_ONCE(mirror->fault_err, in_buf ? -EFAULT : ret);
		hmmgpu_qwrite(q, HMMGPU_QREG_CONTROL, HMMGPU_QCTRL_CANCEL);
	} else {
		hmmgpu_san_flush(mirror->gpu);	/* before the device walks the new PTEs */
		hmmgpu_replay(q);
	}
}

/*
 * REPLAY @q. While the device watches @q's replay word (it stalled while
 * its waiter polled for faults) a new count there is enough: no MMIO
 * write, whose round trip through the VMM holds this CPU (~80 us under
 * TCG). Else CONTROL, with the same count, which the device drops if it
 * took the word's meanwhile (docs/hardware.md, Replay words).
 */
void hmmgpu_replay(struct hmmgpu_queue *q)
{
	struct hmmgpu *gpu = q->gpu;
	u32 count = q->replays % HMMGPU_REPLAY_COUNT_MASK + 1;	/* 1..0xffff: 0 is none */
	u32 watch;

	lockdep_assert_held(&gpu->fault_lock);
	q->replays = count;
	if (!READ_ONCE(replay_word)) {
		hmmgpu_qwrite(q, HMMGPU_QREG_CONTROL,
			      HMMGPU_QCTRL_REPLAY | count << HMMGPU_REPLAY_COUNT_SHIFT);
		return;
	}
	dma_wmb();	/* the PTEs before the count, as before a doorbell */
	WRITE_ONCE(hmmgpu_replay_word(gpu, q->index), cpu_to_le32(count));
	/*
	 * The count's store before the watch word's load: the device clears
	 * WATCH_ACTIVE, then (a full barrier) looks at the count once more,
	 * so it takes the count or we see the word cleared.
	 */
	smp_mb();
	watch = le32_to_cpu(READ_ONCE(hmmgpu_watch_word(gpu, q->index)));
	if (!(watch & HMMGPU_WATCH_ACTIVE) && watch >> HMMGPU_REPLAY_COUNT_SHIFT != count)
		hmmgpu_qwrite(q, HMMGPU_QREG_CONTROL,
			      HMMGPU_QCTRL_REPLAY | count << HMMGPU_REPLAY_COUNT_SHIFT);
}

/*
 * Faults that found the buffer full are lost (FAULT_OVERFLOW counts them)
 * and their queues stay stalled with no record to serve: a replay makes them
 * fault again, into a buffer with room now.
 */
static void hmmgpu_replay_lost(struct hmmgpu *gpu)
{
	u32 overflow = hmmgpu_read(gpu, HMMGPU_REG_FAULT_OVERFLOW);
	unsigned int i;

	if (overflow == gpu->fault_overflow || overflow == U32_MAX)
		return;
	gpu->fault_overflow = overflow;
	for (i = 0; i < HMMGPU_NUM_CONTEXTS; i++)
		if (hmmgpu_qread(&gpu->cq[i], HMMGPU_QREG_STATUS) & HMMGPU_QSTATUS_STALLED)
			hmmgpu_replay(&gpu->cq[i]);
	if (hmmgpu_qread(&gpu->kq, HMMGPU_QREG_STATUS) & HMMGPU_QSTATUS_STALLED)
		hmmgpu_replay(&gpu->kq);
}

/*
 * The records there up to the last one that ends a batch (FAULT_LAST); 0
 * while the first batch is still being written.
 */
static unsigned int hmmgpu_fault_whole_batches(struct hmmgpu *gpu)
{
	u32 first = READ_ONCE(gpu->fault_get);	/* unlocked from hmmgpu_fault_poll_end() */
	unsigned int n, whole = 0;

	for (n = 0; n < HMMGPU_FAULT_ENTRIES; n++) {
		u32 get = (first + n) % HMMGPU_FAULT_ENTRIES;
		u32 access = le32_to_cpu(READ_ONCE(gpu->faults[get].access));

		if (!(access & HMMGPU_FAULT_VALID))
			break;
		if (access & HMMGPU_FAULT_LAST)
			whole = n + 1;
	}
	return whole;
}

/*
 * Serve the whole batches in the fault buffer; the records taken. A batch
 * still being written is left for later: taking part of it would serve its
 * rest as another fault.
 */
static unsigned int hmmgpu_fault_drain(struct hmmgpu *gpu)
{
	unsigned int max = hmmgpu_fault_whole_batches(gpu);
	unsigned long first[HMMGPU_NUM_CONTEXTS], last[HMMGPU_NUM_CONTEXTS];
	unsigned long pending = 0;
	bool write[HMMGPU_NUM_CONTEXTS] = {};
	bool atomic[HMMGPU_NUM_CONTEXTS] = {};
	unsigned int ctx, n;

	lockdep_assert_held(&gpu->fault_lock);
	/*
	 * New records are the ones with VALID set (stored last by the device):
	 * no FAULT_PUT read, an MMIO round trip, before the faults are served.
	 */
	for (n = 0; n < max; n++) {
		struct hmmgpu_fault_record *rec = &gpu->faults[gpu->fault_get];
		u32 access = le32_to_cpu(READ_ONCE(rec->access));
		unsigned long va;

		if (!(access & HMMGPU_FAULT_VALID))
			break;
		dma_rmb();	/* the rest of the record, after its VALID bit */
		va = le64_to_cpu(rec->va);
		ctx = le32_to_cpu(rec->ctx);
		if (ctx < HMMGPU_NUM_CONTEXTS) {
			if (!(pending & BIT(ctx))) {
				first[ctx] = va;
				last[ctx] = va;
			}
			first[ctx] = min(first[ctx], va);
			last[ctx] = max(last[ctx], va);
			pending |= BIT(ctx);
			if (access & (HMMGPU_ACCESS_WRITE | HMMGPU_ACCESS_ATOMIC))
				write[ctx] = true;
			if (access & HMMGPU_ACCESS_ATOMIC)
				atomic[ctx] = true;
		}
		WRITE_ONCE(rec->access, 0);
		gpu->fault_get = (gpu->fault_get + 1) % HMMGPU_FAULT_ENTRIES;
	}

	for_each_set_bit(ctx, &pending, HMMGPU_NUM_CONTEXTS) {
		struct hmmgpu_mirror *mirror;

		spin_lock(&gpu->ctx_lock);
		mirror = gpu->ctx_mirror[ctx];
		spin_unlock(&gpu->ctx_lock);
		if (mirror)
			hmmgpu_serve_faults(mirror, first[ctx], last[ctx], write[ctx],
					    atomic[ctx]);
		else
			hmmgpu_qwrite(&gpu->cq[ctx], HMMGPU_QREG_CONTROL, HMMGPU_QCTRL_CANCEL);
	}
	/*
	 * The device needs FAULT_GET only to know the free room: tell it after
	 * the replays, and only once a quarter of the buffer was consumed (each
	 * MMIO access is a round trip that holds this CPU).
	 */
	if ((gpu->fault_get - gpu->fault_get_told) % HMMGPU_FAULT_ENTRIES >=
	    HMMGPU_FAULT_ENTRIES / 4) {
		hmmgpu_write(gpu, HMMGPU_REG_FAULT_GET, gpu->fault_get);
		gpu->fault_get_told = gpu->fault_get;
	}
	return n;
}

void hmmgpu_fault_work(struct work_struct *work)
{
	struct hmmgpu *gpu = container_of(work, struct hmmgpu, fault_work);

	mutex_lock(&gpu->fault_lock);
	/*
	 * An interrupt with no record: faults were lost to a full buffer,
	 * unless a fence waiter took the records first. (Lost ones the flag
	 * hides, and lost ones next to records, are found by the fence wait's
	 * poll instead.)
	 */
	if (!hmmgpu_fault_drain(gpu) && !xchg(&gpu->fault_taken, false))
		hmmgpu_replay_lost(gpu);
	mutex_unlock(&gpu->fault_lock);
}

/* The next fault record is there (its VALID bit, the device's last store). */
bool hmmgpu_fault_pending(struct hmmgpu *gpu)
{
	u32 get = READ_ONCE(gpu->fault_get) % HMMGPU_FAULT_ENTRIES;

	return le32_to_cpu(READ_ONCE(gpu->faults[get].access)) & HMMGPU_FAULT_VALID;
}

/* Context queues' fence waiters serve the faults they see (the parameter). */
bool hmmgpu_fault_inline(void)
{
	return READ_ONCE(fault_inline);
}

/*
 * A waiter that served faults stopped polling, its poll word cleared (and a
 * full barrier since): a batch whose interrupt the word held off goes to the
 * fault work. The device reads the word after it stored the batch, so
 * either it saw the word clear and interrupts, or we see the whole batch.
 */
void hmmgpu_fault_poll_end(struct hmmgpu *gpu)
{
	if (hmmgpu_fault_whole_batches(gpu))
		schedule_work(&gpu->fault_work);
}

/*
 * A polling fence waiter saw a record: serve the whole batches here. The
 * records served (0: a batch still being written), or -EBUSY if the fault
 * work is at it.
 */
int hmmgpu_fault_serve_inline(struct hmmgpu *gpu)
{
	unsigned int n;

	if (!mutex_trylock(&gpu->fault_lock))
		return -EBUSY;
	n = hmmgpu_fault_drain(gpu);
	if (n)
		WRITE_ONCE(gpu->fault_taken, true);
	mutex_unlock(&gpu->fault_lock);
	return n;
}

