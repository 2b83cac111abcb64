/* SPDX-License-Identifier: GPL-2.0 */
/*
 * hmmgpu hardware interface. GENERATED from device/hwdef.py by
 * 'hmmgpu hwdef --write': do not edit by hand.
 */
#ifndef HMMGPU_HW_H
#define HMMGPU_HW_H

#define HMMGPU_PCI_VENDOR_ID            0x1234
#define HMMGPU_PCI_DEVICE_ID            0x4847
#define HMMGPU_PCI_CLASS_BASE           0x3
#define HMMGPU_PCI_CLASS_SUB            0x2
#define HMMGPU_BAR0_SIZE                0x4000
#define HMMGPU_MSIX_BAR                 0x2
#define HMMGPU_MSIX_BAR_SIZE            0x1000
#define HMMGPU_MSIX_TABLE_OFFSET        0x0
#define HMMGPU_MSIX_PBA_OFFSET          0x800
#define HMMGPU_ID_MAGIC                 0x4d4d4748
#define HMMGPU_VERSION_MAJOR            0x0
#define HMMGPU_VERSION_MINOR            0x1
#define HMMGPU_REG_ID                   0x0
#define HMMGPU_REG_VERSION              0x4
#define HMMGPU_REG_SCRATCH              0x8
#define HMMGPU_REG_TEST_DOORBELL        0xc
#define HMMGPU_REG_IRQ_COUNT            0x10
#define HMMGPU_REG_ERROR                0x14
#define HMMGPU_IRQ_COMPLETION           0x0
#define HMMGPU_IRQ_FAULT                0x1
#define HMMGPU_IRQ_ERROR                0x2
#define HMMGPU_IRQ_TEST                 0x3
#define HMMGPU_IRQ_VECTORS              0x4
#define HMMGPU_ERR_NONE                 0x0
#define HMMGPU_ERR_BAD_VECTOR           0x1
#define HMMGPU_ERR_BAD_REGISTER         0x2

#endif /* HMMGPU_HW_H */
