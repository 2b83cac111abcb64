// SPDX-License-Identifier: GPL-2.0
/*
 * hmmgpu: command submission.
 */

/**
 * DOC: submission
 *
 * A submission is a batch of commands, the last with the IRQ flag, written
 * at the ring's tail and started by one TAIL write. Each command has a status
 * word, set to STATUS_PENDING before the doorbell; the device completes a
 * queue's commands in order, so the last one's status landing is the whole
 * batch done (no FENCE command: one device command less per submission).
 * The caller polls that word for fence_spin_us, then sleeps until it lands
 * (woken by the completion interrupt), and then reads each status. A halted
 * queue or a submission not done within fence_timeout_ms (module parameter,
 * default HMMGPU_FENCE_TIMEOUT_MS) ends the wait with -EIO or -ETIMEDOUT,
 * and the queue is reset, so no caller ever hangs on the device. Interrupts
 * may be lost: every 200 ms the wait looks at the status and, for a stalled
 * queue, at the fault buffer. A device that reads all-ones is gone: -ENODEV
 * at once.
 */
#include <linux/dma-mapping.h>
#include <linux/jiffies.h>
#include <linux/ktime.h>
#include <linux/sched.h>
#include <linux/slab.h>

#include "hmmgpu.h"

static unsigned int fence_timeout_ms = HMMGPU_FENCE_TIMEOUT_MS;
module_param(fence_timeout_ms, uint, 0644);
MODULE_PARM_DESC(fence_timeout_ms,
		 "a submission not done after this long fails with -ETIMEDOUT and its queue is reset");

/*
 * A small submission is done in about one device round trip (~100 us under
 * TCG): polling that long costs less than the interrupt, the wake-up and the
 * context switch (no-fault READ 142 -> 87-100 us, bench_fault.py), as i915
 * busy-waits briefly before it sleeps on a request.
 */
static unsigned int fence_spin_us = 100;
module_param(fence_spin_us, uint, 0644);
MODULE_PARM_DESC(fence_spin_us,
		 "poll a submission this long before sleeping on its interrupt (default 100; 0: never)");

#define WORDS_SIZE	(HMMGPU_RING_ENTRIES * sizeof(u64))
#define STATUS_PENDING	(~0ULL)	/* no error code is all-ones */

void hmmgpu_cmd(struct hmmgpu_command *c, u32 opcode, u32 flags, u32 ctx,
		u64 a0, u64 a1, u64 a2)
{
	memset(c, 0, sizeof(*c));
	c->opcode = cpu_to_le32(opcode);
	c->flags = cpu_to_le32(flags);
	c->ctx = cpu_to_le32(ctx);
	c->args[0] = cpu_to_le64(a0);
	c->args[1] = cpu_to_le64(a1);
	c->args[2] = cpu_to_le64(a2);
}

static void hmmgpu_queue_program(struct hmmgpu_queue *q)
{
	hmmgpu_qwrite(q, HMMGPU_QREG_CONTROL, HMMGPU_QCTRL_RESET);
	hmmgpu_qwrite(q, HMMGPU_QREG_RING_BASE_LO, lower_32_bits(q->ring_dma));
	hmmgpu_qwrite(q, HMMGPU_QREG_RING_BASE_HI, upper_32_bits(q->ring_dma));
	hmmgpu_qwrite(q, HMMGPU_QREG_RING_SIZE, HMMGPU_RING_ENTRIES);
	q->tail = 0;
}

int hmmgpu_queue_init(struct hmmgpu *gpu, struct hmmgpu_queue *q, unsigned int index)
{
	struct device *dev = &gpu->pdev->dev;

	/*
	 * A context queue's waiter serves faults under its lock, which so sits
	 * above mmap_lock; the kernel queue's sits below it (hmmgpu.h, locking).
	 */
	static struct lock_class_key kq_key, cq_key;

	q->gpu = gpu;
	q->index = index;
	mutex_init(&q->lock);
	lockdep_set_class(&q->lock, q == &gpu->kq ? &kq_key : &cq_key);
	q->ring = dma_alloc_coherent(dev, HMMGPU_RING_ENTRIES * HMMGPU_COMMAND_SIZE,
				     &q->ring_dma, GFP_KERNEL);
	q->words = dma_alloc_coherent(dev, WORDS_SIZE, &q->words_dma, GFP_KERNEL);
	if (!q->ring || !q->words) {
		hmmgpu_queue_fini(q);
		return -ENOMEM;
	}
	q->replays = 0;		/* as the zeroed replay word */
	hmmgpu_queue_program(q);
	return 0;
}

void hmmgpu_queue_fini(struct hmmgpu_queue *q)
{
	struct device *dev = &q->gpu->pdev->dev;

	if (q->ring)
		dma_free_coherent(dev, HMMGPU_RING_ENTRIES * HMMGPU_COMMAND_SIZE, q->ring,
				  q->ring_dma);
	if (q->words)
		dma_free_coherent(dev, WORDS_SIZE, q->words, q->words_dma);
	q->ring = NULL;
	q->words = NULL;
}

/* The submission whose last command has its status in @last is done. */
static bool hmmgpu_run_done(struct hmmgpu_queue *q, u32 last)
{
	return READ_ONCE(q->words[last]) != STATUS_PENDING;
}

/*
 * A device that reads all-ones is gone (surprise removal, a link down, its
 * vfio-user server dead): it can neither run commands nor reach memory any
 * more. Said once; from then on its work fails at once with -ENODEV.
 */
bool hmmgpu_dead(struct hmmgpu *gpu)
{
	if (READ_ONCE(gpu->dead))
		return true;
	if (hmmgpu_read(gpu, HMMGPU_REG_ID) != U32_MAX)
		return false;
	if (!xchg(&gpu->dead, true))
		dev_err(&gpu->pdev->dev, "device gone (its registers read all-ones): its work fails with -ENODEV\n");
	wake_up_all(&gpu->fence_wq);
	return true;
}

/*
 * What @q's fence waiter will poll for, as its poll word says it to the
 * device (docs/hardware.md, Poll words): its completion (the last status
 * word, the submission's fence), unless fence_spin_us is 0, and on a
 * context queue with fault_inline the faults too.
 */
static u32 hmmgpu_poll_bits(struct hmmgpu_queue *q)
{
	if (!READ_ONCE(fence_spin_us))
		return 0;
	if (q == &q->gpu->kq || !hmmgpu_fault_inline())
		return HMMGPU_POLL_COMPLETION;
	return HMMGPU_POLL_COMPLETION | HMMGPU_POLL_FAULT;
}

/*
 * Poll the status word @last for fence_spin_us; true if it landed. The poll
 * word holds off the interrupts meanwhile. A context queue's waiter serves
 * the faults it sees and polls on after each batch (hmmgpu_fault.c); else a
 * fault record ends the poll, leaving the CPU to the fault work. A
 * submission whose faults the waiter served is timed (debugfs fault_timing)
 * from @rang, when its doorbell write began.
 */
static bool hmmgpu_run_poll(struct hmmgpu_queue *q, u32 last, u32 poll, u64 rang)
{
	struct hmmgpu *gpu = q->gpu;
	u64 spin_ns = READ_ONCE(fence_spin_us) * NSEC_PER_USEC;
	u64 start = ktime_get_ns(), seen = 0, served_at = 0;
	u64 spin_until = start + spin_ns;
	bool serve = poll & HMMGPU_POLL_FAULT;
	bool done = false;
	int served;

	if (!poll)
		return false;

	while (ktime_get_ns() < spin_until && !need_resched()) {
		if (hmmgpu_run_done(q, last)) {
			done = true;
			break;
		}
		if (hmmgpu_fault_pending(gpu)) {
			if (!seen)
				seen = ktime_get_ns();
			served = serve ? hmmgpu_fault_serve_inline(gpu) : -EBUSY;
			if (served < 0)
				break;
			if (served) {	/* poll afresh for the replayed command */
				served_at = ktime_get_ns();
				spin_until = served_at + spin_ns;
			}
		}
		cpu_relax();
	}
	/*
	 * Done: the word stays set; nothing else is in flight on @q, and the
	 * next submission rewrites it before its doorbell. (Cleared at once,
	 * it raced the device's read of it after the status: an interrupt sent
	 * for nothing, a quarter of the time.)
	 */
	if (done && served_at)
		hmmgpu_fault_timing_add(gpu, start - rang, seen - start, served_at - seen,
					ktime_get_ns() - served_at);
	if (done)
		return true;
	/* interrupts again */
	WRITE_ONCE(hmmgpu_poll_word(gpu, q->index), 0);
	/*
	 * The word's store before the status and fault-buffer reads that follow:
	 * the device stores those before it reads the word, so one of us sees
	 * the other's (docs/hardware.md, Poll words).
	 */
	smp_mb();
	if (serve)
		hmmgpu_fault_poll_end(gpu);
	return false;
}

/*
 * Wait until the status word @last lands; -EIO if the queue halted, -ENODEV
 * if the device is gone, -ETIMEDOUT.
 */
static int hmmgpu_run_wait(struct hmmgpu_queue *q, u32 last, u32 poll, u64 rang)
{
	struct hmmgpu *gpu = q->gpu;
	unsigned long deadline = jiffies + msecs_to_jiffies(READ_ONCE(fence_timeout_ms));
	/* without interrupts, poll every jiffy; a lost interrupt costs a slice */
	unsigned long slice = gpu->nvec ? msecs_to_jiffies(200) : 1;
	u32 status;

	if (hmmgpu_run_poll(q, last, poll, rang))
		return 0;
	for (;;) {
		if (wait_event_timeout(gpu->fence_wq, hmmgpu_run_done(q, last) ||
				       READ_ONCE(gpu->dead), slice) && hmmgpu_run_done(q, last))
			return 0;
		status = hmmgpu_qread(q, HMMGPU_QREG_STATUS);
		if (status == U32_MAX && hmmgpu_dead(gpu))
			return -ENODEV;
		/* stalled on a fault whose interrupt may have been lost: look */
		if (status & HMMGPU_QSTATUS_STALLED)
			schedule_work(&gpu->fault_work);
		if (status & HMMGPU_QSTATUS_HALTED) {
			dev_err(&gpu->pdev->dev, "queue %u halted: error %u\n", q->index,
				hmmgpu_qread(q, HMMGPU_QREG_ERROR));
			return -EIO;
		}
		if (time_after(jiffies, deadline)) {
			dev_err(&gpu->pdev->dev, "queue %u: submission timed out (status 0x%x)\n",
				q->index, status);
			return -ETIMEDOUT;
		}
	}
}

/*
 * Run @n commands on @q and wait for them. @status (optional) receives each
 * command's completion status (0 or an HMMGPU_ERR_* code).
 */
/*
 * The doorbell, a function of its own so that the guest's ftrace times the
 * MMIO write (host/faultpath.py): under QEMU it is a round trip to the
 * device server, QEMU posting no write to a vfio-user device with a
 * mappable region (its VRAM BAR).
 */
static noinline __noclone void hmmgpu_queue_doorbell(struct hmmgpu_queue *q)
{
	hmmgpu_qwrite(q, HMMGPU_QREG_TAIL, q->tail);
}

int hmmgpu_queue_run(struct hmmgpu_queue *q, struct hmmgpu_command *cmds, int n,
		     u64 *status)
{
	u32 slots[HMMGPU_MAX_BATCH];
	u64 rang;
	u32 poll;
	int i, ret;

	if (n < 1 || n > HMMGPU_MAX_BATCH)
		return -EINVAL;
	if (READ_ONCE(q->gpu->dead))
		return -ENODEV;
	/* the device's sanitizer must know our VRAM before it runs anything new */
	hmmgpu_san_flush(q->gpu);
	mutex_lock(&q->lock);
	for (i = 0; i < n; i++) {
		slots[i] = q->tail;
		WRITE_ONCE(q->words[q->tail], STATUS_PENDING);
		cmds[i].status = cpu_to_le64(q->words_dma + q->tail * sizeof(u64));
		q->ring[q->tail] = cmds[i];
		q->tail = (q->tail + 1) % HMMGPU_RING_ENTRIES;
	}
	/* the last command's completion is the submission's: it interrupts */
	q->ring[slots[n - 1]].flags |= cpu_to_le32(HMMGPU_CMD_IRQ);
	/* polled from the start: a quick command then sends no interrupt */
	poll = hmmgpu_poll_bits(q);
	WRITE_ONCE(hmmgpu_poll_word(q->gpu, q->index), cpu_to_le32(poll));
	/* the commands and the poll word must be visible before the doorbell */
	dma_wmb();
	rang = ktime_get_ns();
	hmmgpu_queue_doorbell(q);

	ret = hmmgpu_run_wait(q, slots[n - 1], poll, rang);
	if (ret == -ENODEV) {
		/* nothing to program: the ring is reset when a device comes back */
	} else if (ret) {
		/* start over with an empty ring: RESET drops what was in flight */
		hmmgpu_queue_program(q);
	} else if (status) {
		dma_rmb();
		for (i = 0; i < n; i++)
			status[i] = READ_ONCE(q->words[slots[i]]);
	}
	mutex_unlock(&q->lock);
	return ret;
}

int hmmgpu_tlb_invalidate(struct hmmgpu *gpu, unsigned int ctx, unsigned long start,
			  unsigned long len, u32 flags)
{
	struct hmmgpu_command cmd;
	u64 status;
	int ret;

	hmmgpu_cmd(&cmd, HMMGPU_OP_TLB_INVALIDATE, flags, ctx, start, len, 0);
	ret = hmmgpu_queue_run(&gpu->kq, &cmd, 1, &status);
	if (!ret && status)
		ret = -EIO;
	return ret;
}
