/* SPDX-License-Identifier: GPL-2.0 */
/*
 * hmmgpu: driver for the emulated hmmgpu device. Shared definitions.
 */

/**
 * DOC: structure
 *
 * hmmgpu_main.c   PCI probe/remove, lifetime, interrupts, sysfs, the char device
 * hmmgpu_queue.c  command submission and fence waits (kernel and context queues)
 * hmmgpu_pt.c     the device page tables of one mirror
 * hmmgpu_fault.c  device page faults: drain the fault buffer, fault in, replay
 * hmmgpu_mirror.c the dmirror ABI of lib/test_hmm.c on top of the device
 * hmmgpu_devmem.c VRAM as DEVICE_PRIVATE and DEVICE_COHERENT memory; migration
 *                 with the copy engine
 */

/**
 * DOC: locking
 *
 * Outermost first; a lock is only taken with the ones above it, never below.
 *
 * hmmgpu_mirror.req_lock      one ioctl at a time per open file: the fault
 *                             work reads that request's range from the mirror
 * hmmgpu.mirrors_lock         ctx_mirror[] entries are added or removed
 *                             (open, release, PCI removal)
 * hmmgpu.vram_mms_lock        the mms given VRAM; held across an eviction,
 *                             which write-locks their mmap_locks by trylock
 * context queue lock          one submission at a time on a context queue
 *                             (hmmgpu_queue.lock of cq[]); its fence waiter
 *                             serves faults under it (fault_inline)
 * hmmgpu.fault_lock           draining the fault buffer and serving its faults
 * mmap_lock                   (of the mm a migration or a fault works on)
 * hmmgpu_mirror.mutex         the mirror's device page table; taken by the fault
 *                             path around mmu_interval_read_retry() and by the
 *                             invalidate callback (trylock when non-blockable).
 *                             Reclaim takes it through the notifier, so nothing
 *                             under it allocates with reclaim (hmmgpu_pt.c)
 * kernel queue lock           one submission at a time on the kernel queue
 *                             (hmmgpu_queue.lock of kq, its own lockdep class)
 * hmmgpu.ctx_lock (spinlock)  the ctx -> mirror table, read from the fault work
 * hmmgpu.devmem_lock (spin)   the VRAM allocator: free bitmap and chunk counts,
 *                             and the sanitizer runs not yet sent (san_runs)
 *
 * Status words are written by the device and read with READ_ONCE(); the
 * fence wait queue (a submission's) is woken by the completion and error
 * interrupts. Lifetime: struct hmmgpu is refcounted (the PCI binding and each
 * open file); ioctls run inside hmmgpu_dev_enter()/hmmgpu_dev_exit() (SRCU), which
 * fails once removal has begun.
 */
#ifndef HMMGPU_H
#define HMMGPU_H

#include <linux/pci.h>
#include <linux/cdev.h>
#include <linux/kref.h>
#include <linux/mutex.h>
#include <linux/spinlock.h>
#include <linux/wait.h>
#include <linux/workqueue.h>
#include <linux/mmu_notifier.h>
#include <linux/memremap.h>

#include "hmmgpu_hw.h"

#define HMMGPU_MAX_DEVICES	4
/*
 * Two /dev/hmm_dmirrorN per GPU, numbered as lib/test_hmm.c does for its
 * pair of devices: GPUs 0 and 1 have private memory on minors 0 and 1 and
 * coherent memory on 2 and 3 (what hmm-tests opens); GPUs 2 and 3 on 4-5, 6-7.
 */
#define HMMGPU_MAX_MINORS	(2 * HMMGPU_MAX_DEVICES)
#define HMMGPU_RING_ENTRIES	256
#define HMMGPU_MAX_BATCH	128	/* commands per submission */
#define HMMGPU_FAULT_ENTRIES	512
#define HMMGPU_BOUNCE_MAX	(4UL << 20)	/* READ/WRITE bounce buffer, at most */
#define HMMGPU_BOUNCE_MIN	PAGE_SIZE
#define HMMGPU_DIRECT_CHUNK	(64UL << 20)	/* VA-to-VA READ/WRITE: bytes per COPY */
#define HMMGPU_FENCE_TIMEOUT_MS	30000
#define HMMGPU_PT_RETIRE_MAX	256	/* PTEs retired before a forced TLB flush */

struct hmmgpu;

struct hmmgpu_queue {
	struct hmmgpu *gpu;
	unsigned int index;
	struct mutex lock;		/* one submission at a time */
	struct hmmgpu_command *ring;
	dma_addr_t ring_dma;
	u64 *words;			/* a status word per ring slot */
	dma_addr_t words_dma;
	u32 tail;
	u32 replays;			/* last replay count (gpu->fault_lock) */
};

/* A part of the VRAM registered as one dev_pagemap, behind one /dev/hmm_dmirrorN. */
struct hmmgpu_pool {
	struct dev_pagemap pgmap;	/* owner: the struct hmmgpu */
	struct hmmgpu *gpu;
	bool coherent;			/* MEMORY_DEVICE_COHERENT over the VRAM BAR */
	bool ready;			/* memremap_pages() done */
	u64 vram_base;			/* VRAM offset of the pool's first page */
	unsigned long npages;
	unsigned long pfn;		/* pfn of the pool's first page */
	struct resource *res;		/* private: the free physical range it took */
	/* the allocator, under hmmgpu.devmem_lock */
	unsigned long *bitmap;		/* a set bit is a free device page */
	u16 *chunk_free;		/* free pages in each 2 MiB chunk */
	unsigned long *large;		/* chunks that have held a THP */
	unsigned long nchunks;
	unsigned long nfree;
	unsigned long hint;		/* chunk that served the last 4 KiB page */
	/* its /dev/hmm_dmirrorN */
	int minor;
	struct cdev *cdev;		/* outlives us while files are open */
	struct device *chardev;
};

struct hmmgpu_vector {
	struct hmmgpu *gpu;
	atomic64_t count;
};

struct hmmgpu {
	struct kref ref;		/* the PCI binding and each open file */
	bool gone;			/* removal has begun: no new requests */
	bool dead;			/* reads all-ones: off the bus, or its server died */
	struct mutex mirrors_lock;	/* ctx_mirror[] entries come and go */
	struct mutex vram_mms_lock;	/* vram_mms, and an eviction */
	struct list_head vram_mms;	/* the mms given VRAM: hmmgpu_vram_mm_note() */
	struct pci_dev *pdev;
	void __iomem *bar0;
	int nvec;			/* MSI-X vectors allocated: 0 or HMMGPU_IRQ_VECTORS */
	struct hmmgpu_vector vec[HMMGPU_IRQ_VECTORS];
	int slot;			/* 0..HMMGPU_MAX_DEVICES-1: picks the minors */
	u64 vram_size;
	u32 fabric_id;			/* FABRIC_ID */
	u32 peer_links;			/* PEER_LINKS: whose VRAM PEER PTEs reach */

	struct hmmgpu_queue kq;		/* the kernel queue */
	struct hmmgpu_queue cq[HMMGPU_NUM_CONTEXTS];
	wait_queue_head_t fence_wq;

	struct hmmgpu_fault_record *faults;
	dma_addr_t faults_dma;
	u32 fault_get;
	u32 fault_get_told;		/* FAULT_GET as last written */
	u32 fault_overflow;		/* FAULT_OVERFLOW when last looked at */
	struct mutex fault_lock;	/* the fields above; serving the faults */
	bool fault_taken;		/* a fence waiter took records an interrupt announced */
	__le32 *poll;			/* the poll area: per queue a poll, replay and watch word */
	dma_addr_t poll_dma;
	struct work_struct fault_work;

	spinlock_t ctx_lock;
	struct hmmgpu_mirror *ctx_mirror[HMMGPU_NUM_CONTEXTS];

	/* the VRAM as device memory (hmmgpu_devmem.c) */
	struct hmmgpu_pool priv;	/* DEVICE_PRIVATE */
	struct hmmgpu_pool coh;		/* DEVICE_COHERENT; not ready without a usable BAR */
	spinlock_t devmem_lock;		/* the pools' allocators and san_runs */
	/* VRAM allocations and frees not yet told to the device's sanitizer */
	struct hmmgpu_san_run {
		unsigned long start, pages;
		bool alloc;
	} san_runs[32];
	unsigned int san_nruns;

	/* fault timing samples, a ring (hmmgpu_debugfs.c); NULL: none kept */
	spinlock_t timing_lock;
	struct hmmgpu_fault_timing *timing;
	unsigned int timing_next;	/* the slot the next sample takes */
	unsigned int timing_count;	/* samples held */
	struct dentry *debugfs;
};

/* A fence waiter's timing of a submission whose fault it served (hmmgpu_debugfs.c). */
#define HMMGPU_TIMING_SAMPLES	1024
struct hmmgpu_fault_timing {
	u32 doorbell;		/* ns: the doorbell's MMIO write */
	u32 seen;		/* ns: then until the first fault record was seen */
	u32 serve;		/* ns: from there to the last REPLAY */
	u32 done;		/* ns: then until the submission was done */
};

/* One open of /dev/hmm_dmirrorN: a process address space mirrored by the GPU. */
struct hmmgpu_mirror {
	struct hmmgpu *gpu;
	struct hmmgpu_pool *pool;	/* the memory its minor hands out */
	unsigned int ctx;
	struct mmu_interval_notifier notifier;
	struct mutex req_lock;		/* one ioctl at a time: req_* below */
	struct mutex mutex;		/* the device page table below */
	struct hmmgpu_pt *root;
	struct list_head spare_pts;	/* tables reserved outside the mutex */
	unsigned int nr_spare;
	u64 *retired;			/* leaf PTEs cleared, to unmap after the TLB flush */
	unsigned int nr_retired;
	bool tlb_stale;			/* the device TLB may hold a cleared PTE */
	unsigned long stale_start;	/* VAs retired since the last sync: */
	unsigned long stale_end;	/* what it must invalidate besides its range */
	unsigned long req_start;	/* the READ/WRITE in flight, for fault-in */
	unsigned long req_end;
	unsigned long buf_start;	/* its user buffer, when the device copies to/from it */
	unsigned long buf_end;
	bool req_unlocked;		/* READ_UNLOCKED: fault without holding mmap_lock */
	struct task_struct *migrating;	/* in hmmgpu_migrate(): its TLB flushes are folded */
	atomic_t faults;		/* fault batches handled */
	int fault_err;			/* why the last fault was cancelled */
	u64 flags;			/* HMM_DMIRROR_FLAGS */
};

/*
 * readl/writel are inline: the CPU's access to the BAR is an instruction of
 * the calling driver function, which the TCG plugin's trace then names.
 */
static inline u32 hmmgpu_read(struct hmmgpu *gpu, u32 reg)
{
	return readl(gpu->bar0 + reg);
}

static inline void hmmgpu_write(struct hmmgpu *gpu, u32 reg, u32 val)
{
	writel(val, gpu->bar0 + reg);
}

static inline void hmmgpu_qwrite(struct hmmgpu_queue *q, u32 reg, u32 val)
{
	hmmgpu_write(q->gpu, HMMGPU_QUEUE_REG(q->index, reg), val);
}

static inline u32 hmmgpu_qread(struct hmmgpu_queue *q, u32 reg)
{
	return hmmgpu_read(q->gpu, HMMGPU_QUEUE_REG(q->index, reg));
}

/* Queue @q's words in the poll area (docs/hardware.md, Poll words). */
#define hmmgpu_poll_word(gpu, q)	((gpu)->poll[HMMGPU_POLL_WORDS_OFFSET / 4 + (q)])
#define hmmgpu_replay_word(gpu, q)	((gpu)->poll[HMMGPU_REPLAY_WORDS_OFFSET / 4 + (q)])
#define hmmgpu_watch_word(gpu, q)	((gpu)->poll[HMMGPU_WATCH_WORDS_OFFSET / 4 + (q)])

/* hmmgpu_main.c */
bool hmmgpu_dev_enter(struct hmmgpu *gpu, int *idx);
void hmmgpu_dev_exit(int idx);
struct hmmgpu_pool *hmmgpu_get_by_minor(unsigned int minor);
void hmmgpu_put(struct hmmgpu *gpu);

/* hmmgpu_queue.c */
int hmmgpu_queue_init(struct hmmgpu *gpu, struct hmmgpu_queue *q, unsigned int index);
void hmmgpu_queue_fini(struct hmmgpu_queue *q);
int hmmgpu_queue_run(struct hmmgpu_queue *q, struct hmmgpu_command *cmds, int n,
		     u64 *status);
void hmmgpu_cmd(struct hmmgpu_command *c, u32 opcode, u32 flags, u32 ctx,
		u64 a0, u64 a1, u64 a2);
bool hmmgpu_dead(struct hmmgpu *gpu);
int hmmgpu_tlb_invalidate(struct hmmgpu *gpu, unsigned int ctx, unsigned long start,
			  unsigned long len, u32 flags);

/* hmmgpu_pt.c */
struct hmmgpu_pt;
int hmmgpu_pt_create(struct hmmgpu_mirror *mirror);
void hmmgpu_pt_destroy(struct hmmgpu_mirror *mirror);
dma_addr_t hmmgpu_pt_root_dma(struct hmmgpu_mirror *mirror);
int hmmgpu_pt_reserve(struct hmmgpu_mirror *mirror, unsigned int n);
int hmmgpu_pt_map(struct hmmgpu_mirror *mirror, unsigned long va, u64 pte,
		  unsigned int order);
bool hmmgpu_pt_clear(struct hmmgpu_mirror *mirror, unsigned long start,
		     unsigned long end);
bool hmmgpu_pt_mapped(struct hmmgpu_mirror *mirror, unsigned long start,
		      unsigned long end);
int hmmgpu_pt_sync(struct hmmgpu_mirror *mirror, unsigned long start, unsigned long len);
bool hmmgpu_pt_sync_begin(struct hmmgpu_mirror *mirror, struct hmmgpu_command *cmd);
void hmmgpu_pt_sync_end(struct hmmgpu_mirror *mirror, int ret);
int hmmgpu_pt_flush(struct hmmgpu_mirror *mirror, unsigned long start, unsigned long end);
u64 hmmgpu_pt_lookup(struct hmmgpu_mirror *mirror, unsigned long va);

/* hmmgpu_fault.c */
void hmmgpu_fault_work(struct work_struct *work);
bool hmmgpu_fault_pending(struct hmmgpu *gpu);
void hmmgpu_replay(struct hmmgpu_queue *q);
bool hmmgpu_fault_inline(void);
void hmmgpu_fault_poll_end(struct hmmgpu *gpu);
int hmmgpu_fault_serve_inline(struct hmmgpu *gpu);
int hmmgpu_fault_in(struct hmmgpu_mirror *mirror, unsigned long start,
		    unsigned long end, bool write);

/* hmmgpu_devmem.c */
struct hmm_dmirror_cmd;
int hmmgpu_devmem_init(struct hmmgpu *gpu);
void hmmgpu_devmem_fini(struct hmmgpu *gpu);
void hmmgpu_devmem_evict(struct hmmgpu *gpu);
struct hmmgpu_pool *hmmgpu_page_pool(struct page *page);
bool hmmgpu_page_is_vram(struct hmmgpu *gpu, struct page *page);
u64 hmmgpu_vram_offset(struct page *page);
unsigned long hmmgpu_vram_free_pages(struct hmmgpu *gpu);
void hmmgpu_san_flush(struct hmmgpu *gpu);
void hmmgpu_san_flush_locked(struct hmmgpu *gpu);
int hmmgpu_map_exclusive(struct hmmgpu_mirror *mirror, unsigned long start, unsigned long end);
int hmmgpu_migrate(struct hmmgpu_mirror *mirror, struct hmm_dmirror_cmd *cmd, bool to_vram);

/* hmmgpu_mirror.c */
extern const struct file_operations hmmgpu_mirror_fops;
void hmmgpu_mirrors_detach(struct hmmgpu *gpu);

/* hmmgpu_debugfs.c */
void hmmgpu_fault_timing_add(struct hmmgpu *gpu, u64 doorbell, u64 seen, u64 serve, u64 done);
void hmmgpu_debugfs_add(struct hmmgpu *gpu);
void hmmgpu_debugfs_del(struct hmmgpu *gpu);
void hmmgpu_debugfs_init(void);
void hmmgpu_debugfs_exit(void);

#endif /* HMMGPU_H */
