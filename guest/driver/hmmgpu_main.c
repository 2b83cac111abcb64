// SPDX-License-Identifier: GPL-2.0
/*
 * hmmgpu: PCI driver for the emulated hmmgpu device.
 */

/**
 * DOC: overview
 *
 * Probe maps BAR0, checks the ID register, resets the device, enables bus
 * mastering, allocates one MSI-X vector per interrupt cause (see
 * hmmgpu_hw.h), sets up the kernel queue, the 16 context queues and the fault
 * buffer, and creates /dev/hmm_dmirrorN (hmmgpu_mirror.c). The device's basic
 * registers are exposed as sysfs attributes of the PCI device so the lab can
 * exercise the device from the shell:
 *
 *   id, version      RO  the ID and VERSION registers
 *   scratch          RW  the SCRATCH register
 *   test_doorbell    WO  write N: the device raises MSI-X vector N
 *   irq_counts       RO  interrupts this driver received, per vector
 *   irq_held         RO  interrupts the device held off while we polled (IRQ_HELD)
 *   replays_watched  RO  REPLAYs the device took from a replay word (REPLAYS_WATCHED)
 *
 * The interrupt handler counts per vector, wakes fence waiters on completion
 * and error, and schedules the fault work. Locking: see hmmgpu.h.
 */
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/interrupt.h>
#include <linux/atomic.h>
#include <linux/dma-mapping.h>
#include <linux/idr.h>
#include <linux/io.h>
#include <linux/slab.h>

#include "hmmgpu.h"

static dev_t hmmgpu_devt;
static const struct class hmmgpu_class = { .name = "hmmgpu" };
static DEFINE_IDA(hmmgpu_slots);
/* minor -> pool, for open(); an entry goes when its PCI device is removed */
static DEFINE_MUTEX(hmmgpu_devices_lock);
static struct hmmgpu_pool *hmmgpu_devices[HMMGPU_MAX_MINORS];
DEFINE_STATIC_SRCU(hmmgpu_srcu);

/*
 * Sections that use the GPU on behalf of user space (the ioctls) run between
 * hmmgpu_dev_enter() and hmmgpu_dev_exit(); once removal has begun, hmmgpu_dev_enter()
 * fails and the caller returns -ENODEV. Removal waits for the sections in
 * flight (synchronize_srcu()) before it takes the device apart - the same
 * scheme as drm_dev_enter()/drm_dev_unplug() (drivers/gpu/drm/drm_drv.c:452).
 */
bool hmmgpu_dev_enter(struct hmmgpu *gpu, int *idx)
{
	*idx = srcu_read_lock(&hmmgpu_srcu);
	if (!READ_ONCE(gpu->gone))
		return true;
	srcu_read_unlock(&hmmgpu_srcu, *idx);
	return false;
}

void hmmgpu_dev_exit(int idx)
{
	srcu_read_unlock(&hmmgpu_srcu, idx);
}

static void hmmgpu_free(struct kref *ref)
{
	struct hmmgpu *gpu = container_of(ref, struct hmmgpu, ref);

	pci_dev_put(gpu->pdev);
	kfree(gpu->timing);
	kfree(gpu);
}

void hmmgpu_put(struct hmmgpu *gpu)
{
	kref_put(&gpu->ref, hmmgpu_free);
}

/* The pool behind a minor, with a reference to its GPU; NULL once it is removed. */
struct hmmgpu_pool *hmmgpu_get_by_minor(unsigned int minor)
{
	struct hmmgpu_pool *pool = NULL;

	mutex_lock(&hmmgpu_devices_lock);
	if (minor < HMMGPU_MAX_MINORS && hmmgpu_devices[minor]) {
		pool = hmmgpu_devices[minor];
		kref_get(&pool->gpu->ref);
	}
	mutex_unlock(&hmmgpu_devices_lock);
	return pool;
}

static irqreturn_t hmmgpu_irq(int irq, void *data)
{
	struct hmmgpu_vector *v = data;
	struct hmmgpu *gpu = v->gpu;

	atomic64_inc(&v->count);
	switch (v - gpu->vec) {
	case HMMGPU_IRQ_COMPLETION:
		wake_up_all(&gpu->fence_wq);
		break;
	case HMMGPU_IRQ_FAULT:
		schedule_work(&gpu->fault_work);
		break;
	case HMMGPU_IRQ_ERROR:
		dev_err_ratelimited(&gpu->pdev->dev,
				    "device error %u (queue %d, address 0x%08x%08x)\n",
				    hmmgpu_read(gpu, HMMGPU_REG_ERROR),
				    (int)hmmgpu_read(gpu, HMMGPU_REG_ERROR_QUEUE),
				    hmmgpu_read(gpu, HMMGPU_REG_ERROR_ADDR_HI),
				    hmmgpu_read(gpu, HMMGPU_REG_ERROR_ADDR_LO));
		/* waiters re-check their queue and return -EIO if it halted */
		wake_up_all(&gpu->fence_wq);
		break;
	}
	return IRQ_HANDLED;
}

static ssize_t id_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "0x%08x\n", hmmgpu_read(dev_get_drvdata(dev), HMMGPU_REG_ID));
}
static DEVICE_ATTR_RO(id);

static ssize_t version_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	u32 v = hmmgpu_read(dev_get_drvdata(dev), HMMGPU_REG_VERSION);

	return sysfs_emit(buf, "%u.%u\n", v >> 16, v & 0xffff);
}
static DEVICE_ATTR_RO(version);

static ssize_t scratch_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "0x%08x\n",
			  hmmgpu_read(dev_get_drvdata(dev), HMMGPU_REG_SCRATCH));
}

/* Parse a number written to a sysfs attribute and store it in register @reg. */
static ssize_t hmmgpu_store_reg(struct device *dev, u32 reg, const char *buf, size_t count)
{
	u32 val;
	int ret = kstrtou32(buf, 0, &val);

	if (ret)
		return ret;
	hmmgpu_write(dev_get_drvdata(dev), reg, val);
	return count;
}

static ssize_t scratch_store(struct device *dev, struct device_attribute *attr,
			     const char *buf, size_t count)
{
	return hmmgpu_store_reg(dev, HMMGPU_REG_SCRATCH, buf, count);
}
static DEVICE_ATTR_RW(scratch);

static ssize_t test_doorbell_store(struct device *dev, struct device_attribute *attr,
				   const char *buf, size_t count)
{
	return hmmgpu_store_reg(dev, HMMGPU_REG_TEST_DOORBELL, buf, count);
}
static DEVICE_ATTR_WO(test_doorbell);

static ssize_t irq_counts_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	struct hmmgpu *gpu = dev_get_drvdata(dev);
	int i, len = 0;

	for (i = 0; i < HMMGPU_IRQ_VECTORS; i++)
		len += sysfs_emit_at(buf, len, "%s%lld", i ? " " : "",
				     (long long)atomic64_read(&gpu->vec[i].count));
	len += sysfs_emit_at(buf, len, "\n");
	return len;
}
static DEVICE_ATTR_RO(irq_counts);

static ssize_t irq_held_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%u\n", hmmgpu_read(dev_get_drvdata(dev), HMMGPU_REG_IRQ_HELD));
}
static DEVICE_ATTR_RO(irq_held);

static ssize_t replays_watched_show(struct device *dev, struct device_attribute *attr,
				    char *buf)
{
	return sysfs_emit(buf, "%u\n",
			  hmmgpu_read(dev_get_drvdata(dev), HMMGPU_REG_REPLAYS_WATCHED));
}
static DEVICE_ATTR_RO(replays_watched);

/* "free total" device pages: a leak shows as free < total once nothing is migrated */
static ssize_t vram_pages_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	struct hmmgpu *gpu = dev_get_drvdata(dev);

	hmmgpu_san_flush(gpu);	/* the device's sanitizer sees the same picture */
	return sysfs_emit(buf, "%lu %llu\n", hmmgpu_vram_free_pages(gpu),
			  gpu->vram_size >> PAGE_SHIFT);
}
static DEVICE_ATTR_RO(vram_pages);

static struct attribute *hmmgpu_attrs[] = {
	&dev_attr_id.attr,
	&dev_attr_version.attr,
	&dev_attr_scratch.attr,
	&dev_attr_test_doorbell.attr,
	&dev_attr_irq_counts.attr,
	&dev_attr_irq_held.attr,
	&dev_attr_replays_watched.attr,
	&dev_attr_vram_pages.attr,
	NULL,
};
ATTRIBUTE_GROUPS(hmmgpu);

static void hmmgpu_engine_fini(struct hmmgpu *gpu)
{
	unsigned int i;

	hmmgpu_write(gpu, HMMGPU_REG_FAULT_SIZE, 0);
	for (i = 0; i < HMMGPU_NUM_CONTEXTS; i++)
		hmmgpu_queue_fini(&gpu->cq[i]);
	hmmgpu_queue_fini(&gpu->kq);
	hmmgpu_write(gpu, HMMGPU_REG_POLL_BASE_LO, 0);
	hmmgpu_write(gpu, HMMGPU_REG_POLL_BASE_HI, 0);
	if (gpu->poll)
		dma_free_coherent(&gpu->pdev->dev, HMMGPU_POLL_AREA_SIZE, gpu->poll,
				  gpu->poll_dma);
	gpu->poll = NULL;
	if (gpu->faults)
		dma_free_coherent(&gpu->pdev->dev,
				  HMMGPU_FAULT_ENTRIES * sizeof(*gpu->faults), gpu->faults,
				  gpu->faults_dma);
	gpu->faults = NULL;
}

/* Queues and the fault buffer; the device must be idle (just reset). */
static int hmmgpu_engine_init(struct hmmgpu *gpu)
{
	unsigned int i;
	int ret;

	init_waitqueue_head(&gpu->fence_wq);
	INIT_WORK(&gpu->fault_work, hmmgpu_fault_work);
	mutex_init(&gpu->fault_lock);
	spin_lock_init(&gpu->ctx_lock);
	gpu->faults = dma_alloc_coherent(&gpu->pdev->dev,
					 HMMGPU_FAULT_ENTRIES * sizeof(*gpu->faults),
					 &gpu->faults_dma, GFP_KERNEL);
	if (!gpu->faults)
		return -ENOMEM;
	hmmgpu_write(gpu, HMMGPU_REG_FAULT_BASE_LO, lower_32_bits(gpu->faults_dma));
	hmmgpu_write(gpu, HMMGPU_REG_FAULT_BASE_HI, upper_32_bits(gpu->faults_dma));
	hmmgpu_write(gpu, HMMGPU_REG_FAULT_SIZE, HMMGPU_FAULT_ENTRIES);
	gpu->fault_get = 0;
	gpu->fault_get_told = 0;
	gpu->fault_overflow = hmmgpu_read(gpu, HMMGPU_REG_FAULT_OVERFLOW);
	/* zeroed: nobody polls, no replay count, nothing watched */
	gpu->poll = dma_alloc_coherent(&gpu->pdev->dev, HMMGPU_POLL_AREA_SIZE, &gpu->poll_dma,
				       GFP_KERNEL);
	if (!gpu->poll) {
		hmmgpu_engine_fini(gpu);
		return -ENOMEM;
	}
	hmmgpu_write(gpu, HMMGPU_REG_POLL_BASE_LO, lower_32_bits(gpu->poll_dma));
	hmmgpu_write(gpu, HMMGPU_REG_POLL_BASE_HI, upper_32_bits(gpu->poll_dma));

	ret = hmmgpu_queue_init(gpu, &gpu->kq, HMMGPU_KERNEL_QUEUE);
	for (i = 0; i < HMMGPU_NUM_CONTEXTS && !ret; i++)
		ret = hmmgpu_queue_init(gpu, &gpu->cq[i], i);
	if (ret)
		hmmgpu_engine_fini(gpu);
	return ret;
}

/* Free the first @nreq requested interrupts and the vectors themselves. */
static void hmmgpu_free_vectors(struct hmmgpu *gpu, int nreq)
{
	int i;

	for (i = 0; i < nreq; i++)
		free_irq(pci_irq_vector(gpu->pdev, i), &gpu->vec[i]);
	pci_free_irq_vectors(gpu->pdev);
	gpu->nvec = 0;
}

static int hmmgpu_setup_vectors(struct hmmgpu *gpu)
{
	struct pci_dev *pdev = gpu->pdev;
	int i, nvec, ret;

	/* A device can be built without MSI-X (the lab does so for hot-unplug). */
	nvec = pci_alloc_irq_vectors(pdev, HMMGPU_IRQ_VECTORS, HMMGPU_IRQ_VECTORS,
				     PCI_IRQ_MSIX);
	if (nvec < 0) {
		dev_warn(&pdev->dev, "no MSI-X (%d): polling instead of interrupts\n", nvec);
		return 0;
	}
	for (i = 0; i < nvec; i++) {
		gpu->vec[i].gpu = gpu;
		/* not devm: the handler's data goes with the kref'd gpu, not the binding */
		ret = request_irq(pci_irq_vector(pdev, i), hmmgpu_irq, 0, "hmmgpu",
				  &gpu->vec[i]);
		if (ret) {
			hmmgpu_free_vectors(gpu, i);
			return ret;
		}
	}
	gpu->nvec = nvec;
	return 0;
}

/*
 * The char device is allocated on its own (cdev_alloc()): open files keep it
 * alive after removal, and __fput() drops its reference only after our
 * ->release (fs/file_table.c:515), so it must not live inside struct hmmgpu.
 */
static int hmmgpu_chardev_add(struct hmmgpu_pool *pool, int minor)
{
	struct hmmgpu *gpu = pool->gpu;
	dev_t devt = MKDEV(MAJOR(hmmgpu_devt), minor);
	int ret;

	pool->minor = minor;
	pool->cdev = cdev_alloc();
	if (!pool->cdev)
		return -ENOMEM;
	pool->cdev->ops = &hmmgpu_mirror_fops;
	pool->cdev->owner = THIS_MODULE;
	mutex_lock(&hmmgpu_devices_lock);
	hmmgpu_devices[minor] = pool;
	mutex_unlock(&hmmgpu_devices_lock);
	ret = cdev_add(pool->cdev, devt, 1);
	if (ret) {
		kobject_put(&pool->cdev->kobj);	/* nobody else has it yet */
		goto unlist;
	}
	/* the name the kernel's hmm-tests open */
	pool->chardev = device_create(&hmmgpu_class, &gpu->pdev->dev, devt, gpu,
				      "hmm_dmirror%d", minor);
	if (IS_ERR(pool->chardev)) {
		ret = PTR_ERR(pool->chardev);
		cdev_del(pool->cdev);
		goto unlist;
	}
	return 0;
unlist:
	mutex_lock(&hmmgpu_devices_lock);
	hmmgpu_devices[minor] = NULL;
	mutex_unlock(&hmmgpu_devices_lock);
	pool->cdev = NULL;
	return ret;
}

/* No new opens; files already open keep the cdev (and their gpu reference). */
static void hmmgpu_chardev_del(struct hmmgpu_pool *pool)
{
	if (!pool->cdev)
		return;
	mutex_lock(&hmmgpu_devices_lock);
	hmmgpu_devices[pool->minor] = NULL;
	mutex_unlock(&hmmgpu_devices_lock);
	device_destroy(&hmmgpu_class, MKDEV(MAJOR(hmmgpu_devt), pool->minor));
	cdev_del(pool->cdev);
	pool->cdev = NULL;
}

static void hmmgpu_chardevs_del(struct hmmgpu *gpu)
{
	hmmgpu_chardev_del(&gpu->coh);
	hmmgpu_chardev_del(&gpu->priv);
	ida_free(&hmmgpu_slots, gpu->slot);
}

/* The private minor, and the coherent one when that pool exists (HMMGPU_MAX_MINORS). */
static int hmmgpu_chardevs_add(struct hmmgpu *gpu)
{
	int minor, ret;

	gpu->slot = ida_alloc_max(&hmmgpu_slots, HMMGPU_MAX_DEVICES - 1, GFP_KERNEL);
	if (gpu->slot < 0)
		return gpu->slot;
	minor = (gpu->slot / 2) * 4 + gpu->slot % 2;
	ret = hmmgpu_chardev_add(&gpu->priv, minor);
	if (!ret && gpu->coh.ready)
		ret = hmmgpu_chardev_add(&gpu->coh, minor + 2);
	if (ret)
		hmmgpu_chardevs_del(gpu);
	return ret;
}

static int hmmgpu_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct hmmgpu *gpu;
	u32 magic;
	int ret;

	/* refcounted: open files outlive an unbind (hmmgpu_remove()) */
	gpu = kzalloc_obj(*gpu);
	if (!gpu)
		return -ENOMEM;
	kref_init(&gpu->ref);
	gpu->pdev = pci_dev_get(pdev);
	mutex_init(&gpu->mirrors_lock);
	mutex_init(&gpu->vram_mms_lock);
	INIT_LIST_HEAD(&gpu->vram_mms);
	spin_lock_init(&gpu->timing_lock);
	/* a debugging aid: no samples kept, rather than no device */
	gpu->timing = kcalloc(HMMGPU_TIMING_SAMPLES, sizeof(*gpu->timing), GFP_KERNEL);

	ret = pcim_enable_device(pdev);
	if (ret)
		goto put;
	gpu->bar0 = pcim_iomap_region(pdev, 0, "hmmgpu");
	if (IS_ERR(gpu->bar0)) {
		ret = PTR_ERR(gpu->bar0);
		goto put;
	}
	magic = hmmgpu_read(gpu, HMMGPU_REG_ID);
	if (magic != HMMGPU_ID_MAGIC) {
		dev_err(&pdev->dev, "bad ID register 0x%08x\n", magic);
		ret = -ENODEV;
		goto put;
	}
	ret = dma_set_mask_and_coherent(&pdev->dev, DMA_BIT_MASK(HMMGPU_DMA_ADDR_BITS));
	if (ret)
		goto put;
	hmmgpu_write(gpu, HMMGPU_REG_DEVICE_RESET, 1);
	gpu->vram_size = (u64)hmmgpu_read(gpu, HMMGPU_REG_VRAM_SIZE_HI) << 32 |
			 hmmgpu_read(gpu, HMMGPU_REG_VRAM_SIZE_LO);
	gpu->fabric_id = hmmgpu_read(gpu, HMMGPU_REG_FABRIC_ID);
	gpu->peer_links = hmmgpu_read(gpu, HMMGPU_REG_PEER_LINKS);
	pci_set_master(pdev);

	ret = hmmgpu_setup_vectors(gpu);
	if (ret)
		goto clear_master;
	ret = hmmgpu_engine_init(gpu);
	if (ret)
		goto free_vectors;
	pci_set_drvdata(pdev, gpu);
	ret = hmmgpu_devmem_init(gpu);
	if (ret)
		goto engine_fini;
	hmmgpu_debugfs_add(gpu);
	ret = hmmgpu_chardevs_add(gpu);
	if (ret)
		goto debugfs_del;
	dev_info(&pdev->dev,
		 "hmmgpu %u.%u, %llu MiB VRAM, %d MSI-X vectors, fabric id %u, /dev/hmm_dmirror%d (private)\n",
		 hmmgpu_read(gpu, HMMGPU_REG_VERSION) >> 16,
		 hmmgpu_read(gpu, HMMGPU_REG_VERSION) & 0xffff, gpu->vram_size >> 20,
		 gpu->nvec, gpu->fabric_id, gpu->priv.minor);
	if (gpu->coh.cdev)
		dev_info(&pdev->dev, "/dev/hmm_dmirror%d (coherent)\n", gpu->coh.minor);
	return 0;

debugfs_del:
	hmmgpu_debugfs_del(gpu);
	hmmgpu_devmem_fini(gpu);
engine_fini:
	hmmgpu_engine_fini(gpu);
free_vectors:
	if (gpu->nvec)
		hmmgpu_free_vectors(gpu, gpu->nvec);
clear_master:
	pci_clear_master(pdev);
put:
	hmmgpu_put(gpu);
	return ret;
}

/*
 * Unbind or removal, possibly while processes hold /dev/hmm_dmirrorN open.
 * The order: no new opens; no new requests, and the ones in flight finish
 * (SRCU); every open mirror loses its device page table while the GPU can
 * still flush its TLB; VRAM is evicted with the copy engine; only then the
 * hardware goes. Files still open see -ENODEV and free their mirror on close;
 * the last of them drops the final reference to struct hmmgpu.
 */
static void hmmgpu_remove(struct pci_dev *pdev)
{
	struct hmmgpu *gpu = pci_get_drvdata(pdev);

	hmmgpu_debugfs_del(gpu);
	hmmgpu_chardevs_del(gpu);
	WRITE_ONCE(gpu->gone, true);
	synchronize_srcu(&hmmgpu_srcu);
	hmmgpu_mirrors_detach(gpu);
	hmmgpu_devmem_fini(gpu);
	hmmgpu_write(gpu, HMMGPU_REG_DEVICE_RESET, 1);
	cancel_work_sync(&gpu->fault_work);
	if (gpu->nvec)
		hmmgpu_free_vectors(gpu, gpu->nvec);
	hmmgpu_engine_fini(gpu);
	pci_clear_master(pdev);
	hmmgpu_put(gpu);
}

static const struct pci_device_id hmmgpu_ids[] = {
	{ PCI_DEVICE(HMMGPU_PCI_VENDOR_ID, HMMGPU_PCI_DEVICE_ID) },
	{ }
};
MODULE_DEVICE_TABLE(pci, hmmgpu_ids);

static struct pci_driver hmmgpu_driver = {
	.name = "hmmgpu",
	.id_table = hmmgpu_ids,
	.probe = hmmgpu_probe,
	.remove = hmmgpu_remove,
	.dev_groups = hmmgpu_groups,
};
static int __init hmmgpu_init(void)
{
	int ret;

	ret = alloc_chrdev_region(&hmmgpu_devt, 0, HMMGPU_MAX_MINORS, "hmm_dmirror");
	if (ret)
		return ret;
	ret = class_register(&hmmgpu_class);
	if (ret)
		goto unregister_region;
	hmmgpu_debugfs_init();
	ret = pci_register_driver(&hmmgpu_driver);
	if (ret)
		goto unregister_class;
	return 0;

unregister_class:
	hmmgpu_debugfs_exit();
	class_unregister(&hmmgpu_class);
unregister_region:
	unregister_chrdev_region(hmmgpu_devt, HMMGPU_MAX_MINORS);
	return ret;
}

static void __exit hmmgpu_exit(void)
{
	pci_unregister_driver(&hmmgpu_driver);
	hmmgpu_debugfs_exit();
	class_unregister(&hmmgpu_class);
	unregister_chrdev_region(hmmgpu_devt, HMMGPU_MAX_MINORS);
}

module_init(hmmgpu_init);
module_exit(hmmgpu_exit);

MODULE_DESCRIPTION("Driver for the hmmgpu emulated GPU");
MODULE_LICENSE("GPL");
