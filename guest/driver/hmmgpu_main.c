// SPDX-License-Identifier: GPL-2.0
/*
 * hmmgpu: PCI driver for the emulated hmmgpu device.
 *
 * DOC: overview
 * Probe maps BAR0, checks the ID register, enables bus mastering and
 * allocates one MSI-X vector per interrupt cause (see hmmgpu_hw.h). The
 * device's basic registers are exposed as sysfs attributes of the PCI device
 * so the lab can exercise the device from the shell:
 *
 *   id, version      RO  the ID and VERSION registers
 *   scratch          RW  the SCRATCH register
 *   test_doorbell    WO  write N: the device raises MSI-X vector N
 *   irq_counts       RO  interrupts this driver received, per vector
 *
 * DOC: locking
 * The per-vector counters are atomics written from the IRQ handler; MMIO
 * accesses are single 32-bit reads and writes and need no lock.
 */
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/interrupt.h>
#include <linux/atomic.h>
#include <linux/io.h>

#include "hmmgpu_hw.h"

struct hmmgpu_vector {
	struct hmmgpu *gpu;
	atomic64_t count;
};

struct hmmgpu {
	struct pci_dev *pdev;
	void __iomem *bar0;
	int nvec;		/* MSI-X vectors allocated: 0 or HMMGPU_IRQ_VECTORS */
	struct hmmgpu_vector vec[HMMGPU_IRQ_VECTORS];
};

static u32 hmmgpu_read(struct hmmgpu *gpu, u32 reg)
{
	return ioread32(gpu->bar0 + reg);
}

static void hmmgpu_write(struct hmmgpu *gpu, u32 reg, u32 val)
{
	iowrite32(val, gpu->bar0 + reg);
}

static irqreturn_t hmmgpu_irq(int irq, void *data)
{
	struct hmmgpu_vector *v = data;

	atomic64_inc(&v->count);
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

static struct attribute *hmmgpu_attrs[] = {
	&dev_attr_id.attr,
	&dev_attr_version.attr,
	&dev_attr_scratch.attr,
	&dev_attr_test_doorbell.attr,
	&dev_attr_irq_counts.attr,
	NULL,
};
ATTRIBUTE_GROUPS(hmmgpu);

static int hmmgpu_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct hmmgpu *gpu;
	u32 magic;
	int i, nvec, ret;

	gpu = devm_kzalloc(&pdev->dev, sizeof(*gpu), GFP_KERNEL);
	if (!gpu)
		return -ENOMEM;
	gpu->pdev = pdev;

	ret = pcim_enable_device(pdev);
	if (ret)
		return ret;
	gpu->bar0 = pcim_iomap_region(pdev, 0, "hmmgpu");
	if (IS_ERR(gpu->bar0))
		return PTR_ERR(gpu->bar0);

	magic = hmmgpu_read(gpu, HMMGPU_REG_ID);
	if (magic != HMMGPU_ID_MAGIC) {
		dev_err(&pdev->dev, "bad ID register 0x%08x\n", magic);
		return -ENODEV;
	}
	pci_set_master(pdev);

	/* A device can be built without MSI-X (the lab does so for hot-unplug). */
	nvec = pci_alloc_irq_vectors(pdev, HMMGPU_IRQ_VECTORS, HMMGPU_IRQ_VECTORS,
				     PCI_IRQ_MSIX);
	if (nvec < 0) {
		dev_warn(&pdev->dev, "no MSI-X (%d): running without interrupts\n", nvec);
		nvec = 0;
	}
	gpu->nvec = nvec;
	for (i = 0; i < nvec; i++) {
		gpu->vec[i].gpu = gpu;
		ret = devm_request_irq(&pdev->dev, pci_irq_vector(pdev, i), hmmgpu_irq, 0,
				       "hmmgpu", &gpu->vec[i]);
		if (ret)
			goto err_vectors;
	}
	pci_set_drvdata(pdev, gpu);
	dev_info(&pdev->dev, "hmmgpu %u.%u, %d MSI-X vectors\n",
		 hmmgpu_read(gpu, HMMGPU_REG_VERSION) >> 16,
		 hmmgpu_read(gpu, HMMGPU_REG_VERSION) & 0xffff, nvec);
	return 0;

err_vectors:
	while (--i >= 0)
		devm_free_irq(&pdev->dev, pci_irq_vector(pdev, i), &gpu->vec[i]);
	pci_free_irq_vectors(pdev);
	return ret;
}

static void hmmgpu_remove(struct pci_dev *pdev)
{
	struct hmmgpu *gpu = pci_get_drvdata(pdev);
	int i;

	for (i = 0; i < gpu->nvec; i++)
		devm_free_irq(&pdev->dev, pci_irq_vector(pdev, i), &gpu->vec[i]);
	if (gpu->nvec)
		pci_free_irq_vectors(pdev);
	pci_clear_master(pdev);
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
module_pci_driver(hmmgpu_driver);

MODULE_DESCRIPTION("Driver for the hmmgpu emulated GPU");
MODULE_LICENSE("GPL");
