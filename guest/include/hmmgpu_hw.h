/* SPDX-License-Identifier: GPL-2.0 */
/*
 * hmmgpu hardware interface. GENERATED from device/hwdef.py by
 * 'hmmgpu hwdef --write': do not edit by hand.
 */
#ifndef HMMGPU_HW_H
#define HMMGPU_HW_H

#ifdef __KERNEL__
#include <linux/build_bug.h>
#include <linux/stddef.h>
#include <linux/types.h>
#else
#include <assert.h>
#include <stddef.h>
#include <linux/types.h>
#endif

#define HMMGPU_PCI_VENDOR_ID            0x1234
#define HMMGPU_PCI_DEVICE_ID            0x4847
#define HMMGPU_PCI_CLASS_BASE           0x3
#define HMMGPU_PCI_CLASS_SUB            0x2
#define HMMGPU_BAR0_SIZE                0x4000
#define HMMGPU_MSIX_BAR                 0x2
#define HMMGPU_MSIX_BAR_SIZE            0x1000
#define HMMGPU_MSIX_TABLE_OFFSET        0x0
#define HMMGPU_MSIX_PBA_OFFSET          0x800
#define HMMGPU_VRAM_BAR                 0x4
#define HMMGPU_ID_MAGIC                 0x4d4d4748
#define HMMGPU_VERSION_MAJOR            0x0
#define HMMGPU_VERSION_MINOR            0x5
#define HMMGPU_PAGE_SHIFT               0xc
#define HMMGPU_LARGE_PAGE_SHIFT         0x15
#define HMMGPU_NUM_CONTEXTS             0x10
#define HMMGPU_KERNEL_QUEUE             0x10
#define HMMGPU_NUM_QUEUES               0x11
#define HMMGPU_VA_BITS                  0x30
#define HMMGPU_PT_LEVELS                0x4
#define HMMGPU_PT_INDEX_BITS            0x9
#define HMMGPU_PT_ENTRIES               0x200
#define HMMGPU_DMA_ADDR_BITS            0x34
#define HMMGPU_MAX_RING_ENTRIES         0x10000
#define HMMGPU_MAX_FAULT_ENTRIES        0x10000
#define HMMGPU_QUEUE_BASE               0x1000
#define HMMGPU_QUEUE_STRIDE             0x40
#define HMMGPU_COMMAND_SIZE             0x40
#define HMMGPU_FAULT_RECORD_SIZE        0x20
#define HMMGPU_FAULT_VALID              0x80000000
#define HMMGPU_FAULT_LAST               0x40000000
#define HMMGPU_SRC_APERTURE_SHIFT       0x8
#define HMMGPU_DST_APERTURE_SHIFT       0xa
#define HMMGPU_APERTURE_MASK            0x3
#define HMMGPU_ATOMIC_OP_SHIFT          0x10
#define HMMGPU_ATOMIC_OP_MASK           0xf
#define HMMGPU_PTE_ADDR_MASK            0xffffffffff000ULL
#define HMMGPU_PTE_FLAGS_MASK           0x7ff
#define HMMGPU_PTE_RESERVED_MASK        0xfff0000000000800ULL
#define HMMGPU_PTE_PEER_SHIFT           0x7
#define HMMGPU_PTE_PEER_MASK            0xf
#define HMMGPU_SAN_VRAM_ALLOC           0x1
#define HMMGPU_SAN_ORDER_SHIFT          0x1
#define HMMGPU_SAN_ORDER_MASK           0xf
#define HMMGPU_SAN_PAGE_SHIFT           0x5
#define HMMGPU_POLL_WORDS_OFFSET        0x0
#define HMMGPU_REPLAY_WORDS_OFFSET      0x44
#define HMMGPU_WATCH_WORDS_OFFSET       0x88
#define HMMGPU_POLL_AREA_SIZE           0xcc
#define HMMGPU_WATCH_ACTIVE             0x1
#define HMMGPU_REPLAY_COUNT_SHIFT       0x10
#define HMMGPU_REPLAY_COUNT_MASK        0xffff
#define HMMGPU_REG_ID                   0x0
#define HMMGPU_REG_VERSION              0x4
#define HMMGPU_REG_SCRATCH              0x8
#define HMMGPU_REG_TEST_DOORBELL        0xc
#define HMMGPU_REG_IRQ_COUNT            0x10
#define HMMGPU_REG_ERROR                0x14
#define HMMGPU_REG_ERROR_QUEUE          0x18
#define HMMGPU_REG_ERROR_COUNT          0x1c
#define HMMGPU_REG_ERROR_ADDR_LO        0x20
#define HMMGPU_REG_ERROR_ADDR_HI        0x24
#define HMMGPU_REG_VRAM_SIZE_LO         0x28
#define HMMGPU_REG_VRAM_SIZE_HI         0x2c
#define HMMGPU_REG_NUM_CONTEXTS         0x30
#define HMMGPU_REG_INTR_STATUS          0x34
#define HMMGPU_REG_DEVICE_RESET         0x38
#define HMMGPU_REG_FAULT_BASE_LO        0x40
#define HMMGPU_REG_FAULT_BASE_HI        0x44
#define HMMGPU_REG_FAULT_SIZE           0x48
#define HMMGPU_REG_FAULT_PUT            0x4c
#define HMMGPU_REG_FAULT_GET            0x50
#define HMMGPU_REG_FAULT_OVERFLOW       0x54
#define HMMGPU_REG_TIMESTAMP_LO         0x58
#define HMMGPU_REG_TIMESTAMP_HI         0x5c
#define HMMGPU_REG_SAN_VRAM             0x60
#define HMMGPU_REG_SAN_REPORTS          0x64
#define HMMGPU_REG_CAPS                 0x68
#define HMMGPU_REG_FABRIC_ID            0x6c
#define HMMGPU_REG_PEER_LINKS           0x70
#define HMMGPU_REG_POLL_BASE_LO         0x74
#define HMMGPU_REG_POLL_BASE_HI         0x78
#define HMMGPU_REG_IRQ_HELD             0x7c
#define HMMGPU_REG_REPLAYS_WATCHED      0x80
#define HMMGPU_QREG_RING_BASE_LO        0x0
#define HMMGPU_QREG_RING_BASE_HI        0x4
#define HMMGPU_QREG_RING_SIZE           0x8
#define HMMGPU_QREG_HEAD                0xc
#define HMMGPU_QREG_TAIL                0x10
#define HMMGPU_QREG_STATUS              0x14
#define HMMGPU_QREG_ERROR               0x18
#define HMMGPU_QREG_CONTROL             0x1c
#define HMMGPU_QREG_PT_BASE_LO          0x20
#define HMMGPU_QREG_PT_BASE_HI          0x24
#define HMMGPU_QREG_COMPLETED           0x28
#define HMMGPU_QSTATUS_RUNNING          0x1
#define HMMGPU_QSTATUS_STALLED          0x2
#define HMMGPU_QSTATUS_HALTED           0x4
#define HMMGPU_QCTRL_REPLAY             0x1
#define HMMGPU_QCTRL_CANCEL             0x2
#define HMMGPU_QCTRL_RESET              0x3
#define HMMGPU_INTR_COMPLETION          0x1
#define HMMGPU_INTR_FAULT               0x2
#define HMMGPU_INTR_ERROR               0x4
#define HMMGPU_IRQ_COMPLETION           0x0
#define HMMGPU_IRQ_FAULT                0x1
#define HMMGPU_IRQ_ERROR                0x2
#define HMMGPU_IRQ_TEST                 0x3
#define HMMGPU_IRQ_VECTORS              0x4
#define HMMGPU_ERR_NONE                 0x0
#define HMMGPU_ERR_BAD_VECTOR           0x1
#define HMMGPU_ERR_BAD_REGISTER         0x2
#define HMMGPU_ERR_BAD_OPCODE           0x3
#define HMMGPU_ERR_BAD_COMMAND          0x4
#define HMMGPU_ERR_DMA_UNMAPPED         0x5
#define HMMGPU_ERR_VRAM_RANGE           0x6
#define HMMGPU_ERR_PTE_INVALID          0x7
#define HMMGPU_ERR_PT_LOOP              0x8
#define HMMGPU_ERR_QUEUE_CONFIG         0x9
#define HMMGPU_ERR_FAULT_CANCELLED      0xa
#define HMMGPU_ERR_BUS_MASTER_OFF       0xb
#define HMMGPU_ERR_FAULT_BUFFER         0xc
#define HMMGPU_ERR_CONTEXT              0xd
#define HMMGPU_OP_NOP                   0x0
#define HMMGPU_OP_COPY                  0x1
#define HMMGPU_OP_FILL                  0x2
#define HMMGPU_OP_READ                  0x3
#define HMMGPU_OP_WRITE                 0x4
#define HMMGPU_OP_ATOMIC                0x5
#define HMMGPU_OP_TLB_INVALIDATE        0x6
#define HMMGPU_OP_FENCE                 0x7
#define HMMGPU_OP_COPY_PAGES            0x8
#define HMMGPU_APERTURE_SYS             0x0
#define HMMGPU_APERTURE_VRAM            0x1
#define HMMGPU_APERTURE_VA              0x2
#define HMMGPU_CMD_IRQ                  0x1
#define HMMGPU_CMD_TO_SYS               0x1000
#define HMMGPU_CMD_LEAF                 0x2000
#define HMMGPU_MAX_COPY_PAGES           0x200
#define HMMGPU_ATOMIC_FETCH_ADD         0x0
#define HMMGPU_ATOMIC_SWAP              0x1
#define HMMGPU_PTE_VALID                0x1
#define HMMGPU_PTE_READ                 0x2
#define HMMGPU_PTE_WRITE                0x4
#define HMMGPU_PTE_ATOMIC               0x8
#define HMMGPU_PTE_VRAM                 0x10
#define HMMGPU_PTE_LARGE                0x20
#define HMMGPU_PTE_PEER                 0x40
#define HMMGPU_CAPS_VRAM_BAR            0x1
#define HMMGPU_POLL_COMPLETION          0x1
#define HMMGPU_POLL_FAULT               0x2
#define HMMGPU_ACCESS_READ              0x1
#define HMMGPU_ACCESS_WRITE             0x2
#define HMMGPU_ACCESS_ATOMIC            0x4
#define HMMGPU_FAULT_NOT_PRESENT        0x1
#define HMMGPU_FAULT_PERMISSION         0x2
#define HMMGPU_SAN_STALE_TLB            0x1
#define HMMGPU_SAN_DMA_UNMAPPED         0x2
#define HMMGPU_SAN_VRAM_PTE             0x3
#define HMMGPU_SAN_FAULT_OVERFLOW       0x4
#define HMMGPU_SAN_BUS_MASTER_OFF       0x5
#define HMMGPU_SAN_STALE_PATH           0x6
#define HMMGPU_QUEUE_REG(q, r)         (HMMGPU_QUEUE_BASE + (q) * HMMGPU_QUEUE_STRIDE + (r))
/* VA bit where a level's table index starts (level 0: the 4 KiB leaf) */
#define HMMGPU_PT_LEVEL_SHIFT(l)       (HMMGPU_PAGE_SHIFT + (l) * HMMGPU_PT_INDEX_BITS)
#define HMMGPU_PT_INDEX(va, l)         (((va) >> HMMGPU_PT_LEVEL_SHIFT(l)) & (HMMGPU_PT_ENTRIES - 1))

/* A command: 64 bytes, little-endian, in a queue's ring. */
struct hmmgpu_command {
	__le32 opcode;
	__le32 flags;          /* IRQ, apertures, atomic op */
	__le32 ctx;            /* the command's context */
	__le32 reserved;       /* must be 0 */
	__le64 args[5];
	__le64 status;         /* bus address for the status, or 0 */
};
static_assert(sizeof(struct hmmgpu_command) == 64, "hmmgpu_command size");
static_assert(offsetof(struct hmmgpu_command, opcode) == 0, "opcode");
static_assert(offsetof(struct hmmgpu_command, flags) == 4, "flags");
static_assert(offsetof(struct hmmgpu_command, ctx) == 8, "ctx");
static_assert(offsetof(struct hmmgpu_command, reserved) == 12, "reserved");
static_assert(offsetof(struct hmmgpu_command, args) == 16, "args");
static_assert(offsetof(struct hmmgpu_command, status) == 56, "status");

/* A fault record: 32 bytes, written by the device into the fault buffer. */
struct hmmgpu_fault_record {
	__le64 va;
	__le64 timestamp;      /* device clock, ns */
	__le32 ctx;
	__le32 access;         /* Access bits, FAULT_LAST; FAULT_VALID set last by the device */
	__le32 queue;
	__le32 reason;         /* FaultReason */
};
static_assert(sizeof(struct hmmgpu_fault_record) == 32, "hmmgpu_fault_record size");
static_assert(offsetof(struct hmmgpu_fault_record, va) == 0, "va");
static_assert(offsetof(struct hmmgpu_fault_record, timestamp) == 8, "timestamp");
static_assert(offsetof(struct hmmgpu_fault_record, ctx) == 16, "ctx");
static_assert(offsetof(struct hmmgpu_fault_record, access) == 20, "access");
static_assert(offsetof(struct hmmgpu_fault_record, queue) == 24, "queue");
static_assert(offsetof(struct hmmgpu_fault_record, reason) == 28, "reason");

#endif /* HMMGPU_HW_H */
