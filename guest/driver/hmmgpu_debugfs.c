// SPDX-License-Identifier: GPL-2.0
/*
 * hmmgpu: debugfs, /sys/kernel/debug/hmmgpu/<PCI address>/.
 */

/**
 * DOC: fault timing
 *
 * A fence waiter that serves a fault itself (fault_inline) times its
 * submission with ktime_get_ns(), untraced, and keeps the last
 * HMMGPU_TIMING_SAMPLES: the doorbell's MMIO write, then until it saw the
 * first fault record, serving the faults (from that first look to the last
 * REPLAY: hmm_range_fault(), the PTE writes, the TLB and the REPLAY), and
 * the replayed submission until done. Reading ``fault_timing`` prints them,
 * oldest first, one submission a line, in nanoseconds; writing to it drops
 * them. Samples are taken only while polling, so a fault served by the
 * fault work after an interrupt is not among them.
 */
#include <linux/debugfs.h>
#include <linux/seq_file.h>
#include <linux/slab.h>

#include "hmmgpu.h"

static struct dentry *hmmgpu_debugfs_root;

void hmmgpu_fault_timing_add(struct hmmgpu *gpu, u64 doorbell, u64 seen, u64 serve, u64 done)
{
	struct hmmgpu_fault_timing *t;

	if (!gpu->timing)
		return;
	spin_lock(&gpu->timing_lock);
	t = &gpu->timing[gpu->timing_next];
	t->doorbell = min_t(u64, doorbell, U32_MAX);
	t->seen = min_t(u64, seen, U32_MAX);
	t->serve = min_t(u64, serve, U32_MAX);
	t->done = min_t(u64, done, U32_MAX);
	gpu->timing_next = (gpu->timing_next + 1) % HMMGPU_TIMING_SAMPLES;
	if (gpu->timing_count < HMMGPU_TIMING_SAMPLES)
		gpu->timing_count++;
	spin_unlock(&gpu->timing_lock);
}

static int hmmgpu_fault_timing_show(struct seq_file *m, void *unused)
{
	struct hmmgpu *gpu = m->private;
	struct hmmgpu_fault_timing *copy;
	unsigned int i, n, first;

	copy = kmalloc_array(HMMGPU_TIMING_SAMPLES, sizeof(*copy), GFP_KERNEL);
	if (!copy)
		return -ENOMEM;
	/* copied under the lock, printed outside it: the recorders spin on it */
	spin_lock(&gpu->timing_lock);
	n = gpu->timing_count;
	first = (gpu->timing_next + HMMGPU_TIMING_SAMPLES - n) % HMMGPU_TIMING_SAMPLES;
	for (i = 0; i < n; i++)
		copy[i] = gpu->timing[(first + i) % HMMGPU_TIMING_SAMPLES];
	spin_unlock(&gpu->timing_lock);
	seq_puts(m, "# doorbell_ns seen_ns serve_ns done_ns\n");
	for (i = 0; i < n; i++)
		seq_printf(m, "%u %u %u %u\n", copy[i].doorbell, copy[i].seen, copy[i].serve,
			   copy[i].done);
	kfree(copy);
	return 0;
}

static int hmmgpu_fault_timing_open(struct inode *inode, struct file *file)
{
	return single_open(file, hmmgpu_fault_timing_show, inode->i_private);
}

static ssize_t hmmgpu_fault_timing_write(struct file *file, const char __user *buf,
					 size_t len, loff_t *ppos)
{
	struct hmmgpu *gpu = file_inode(file)->i_private;

	spin_lock(&gpu->timing_lock);
	gpu->timing_count = 0;
	spin_unlock(&gpu->timing_lock);
	return len;
}

static const struct file_operations hmmgpu_fault_timing_fops = {
	.owner = THIS_MODULE,
	.open = hmmgpu_fault_timing_open,
	.read = seq_read,
	.llseek = seq_lseek,
	.write = hmmgpu_fault_timing_write,
	.release = single_release,
};

/* The GPU's directory (nothing if debugfs is off: its calls then do nothing). */
void hmmgpu_debugfs_add(struct hmmgpu *gpu)
{
	gpu->debugfs = debugfs_create_dir(pci_name(gpu->pdev), hmmgpu_debugfs_root);
	debugfs_create_file("fault_timing", 0600, gpu->debugfs, gpu, &hmmgpu_fault_timing_fops);
}

/*
 * First in removal: debugfs_remove_recursive() returns once no handler of
 * the directory's files runs (__debugfs_file_removed() waits for their
 * active users, fs/debugfs/inode.c:733), and an open file's later reads
 * fail, so none touches the GPU after. The samples live as long as struct
 * hmmgpu (hmmgpu_free()): a waiter may still add one.
 */
void hmmgpu_debugfs_del(struct hmmgpu *gpu)
{
	debugfs_remove_recursive(gpu->debugfs);
	gpu->debugfs = NULL;
}

void hmmgpu_debugfs_init(void)
{
	hmmgpu_debugfs_root = debugfs_create_dir("hmmgpu", NULL);
}

void hmmgpu_debugfs_exit(void)
{
	debugfs_remove_recursive(hmmgpu_debugfs_root);
}
