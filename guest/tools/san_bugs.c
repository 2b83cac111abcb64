// SPDX-License-Identifier: GPL-2.0
/*
 * san_bugs: commit one driver bug against the emulated GPU, on purpose, so
 * the device's driver sanitizer has something to catch. Runs without hmmgpu.ko
 * (raw BAR access, like gpu_smoke).
 *
 *   san_bugs SYSFS_PCI_DEVICE_DIR BUG
 *
 * BUG is one of:
 *   stale-tlb       context 1 reads a page, its PTE is changed, no TLB_INVALIDATE, read again
 *   dma-unmapped    FILL at a bus address far past guest RAM
 *   vram-past-end   a PTE pointing at the first byte after VRAM
 *   vram-freed      a PTE at a VRAM page reported allocated, then freed (SAN_VRAM)
 *   fault-overflow  8 faults into a 2-entry fault buffer
 *   bus-master-off  a command with Bus Master Enable clear
 * Prints "done BUG" once the device has seen it; exits 1 if the device hangs.
 */
#include "rawgpu.h"

#define CTX	1
#define VA	0x10000000ULL	/* device-virtual address the bugs use */
#define RW	(HMMGPU_PTE_VALID | HMMGPU_PTE_READ | HMMGPU_PTE_WRITE)

static struct hmmgpu_command *ring;
static uint64_t *tables;	/* four page-table pages: levels 3, 2, 1, 0 */
static uint8_t *data;		/* two data pages */

/* Context CTX's page table: one path down to the level-0 table for VA. */
static uint64_t *build_page_table(void)
{
	int level;

	for (level = 3; level > 0; level--) {
		uint64_t *t = tables + (3 - level) * HMMGPU_PT_ENTRIES;
		int idx = HMMGPU_PT_INDEX(VA, level);

		t[idx] = phys(tables + (4 - level) * HMMGPU_PT_ENTRIES) | HMMGPU_PTE_VALID;
	}
	qwr(CTX, HMMGPU_QREG_PT_BASE_LO, (uint32_t)phys(tables));
	qwr(CTX, HMMGPU_QREG_PT_BASE_HI, (uint32_t)(phys(tables) >> 32));
	/* a new table for the context: what it cached from an earlier run must go */
	command(&ring[0], HMMGPU_OP_TLB_INVALIDATE, 0, 0, 0, 0);
	ring[0].ctx = CTX;
	if (raw_wait(HMMGPU_KERNEL_QUEUE, raw_submit(HMMGPU_KERNEL_QUEUE, ring, 1)))
		exit(1);
	return &tables[3 * HMMGPU_PT_ENTRIES + HMMGPU_PT_INDEX(VA, 0)];
}

/* Context CTX copies @len bytes at VA into the second data page; returns the wait target. */
static uint32_t read_va(uint64_t len)
{
	command(&ring[0], HMMGPU_OP_COPY,
		HMMGPU_APERTURE_VA << HMMGPU_SRC_APERTURE_SHIFT |
		HMMGPU_APERTURE_SYS << HMMGPU_DST_APERTURE_SHIFT, VA, phys(data + PAGE), len);
	return raw_submit(CTX, ring, 1);
}

static int bug(const char *name)
{
	uint64_t vram = (uint64_t)rd(HMMGPU_REG_VRAM_SIZE_HI) << 32 | rd(HMMGPU_REG_VRAM_SIZE_LO);
	uint64_t *pte;

	if (!strcmp(name, "stale-tlb")) {
		pte = build_page_table();
		*pte = phys(data) | RW;
		if (raw_wait(CTX, read_va(64)))
			return 1;
		*pte = phys(data + PAGE) | RW;	/* the bug: no TLB_INVALIDATE */
		return raw_wait(CTX, read_va(64));
	}
	if (!strcmp(name, "dma-unmapped")) {
		command(&ring[0], HMMGPU_OP_FILL, HMMGPU_APERTURE_SYS << HMMGPU_DST_APERTURE_SHIFT,
			0x7f00000000ULL, 64, 0);
		return raw_wait(HMMGPU_KERNEL_QUEUE, raw_submit(HMMGPU_KERNEL_QUEUE, ring, 1));
	}
	if (!strcmp(name, "vram-past-end") || !strcmp(name, "vram-freed")) {
		uint64_t target = vram;

		if (!strcmp(name, "vram-freed")) {
			target = 0x200000;	/* VRAM page 512 */
			wr(HMMGPU_REG_SAN_VRAM, 512 << HMMGPU_SAN_PAGE_SHIFT | HMMGPU_SAN_VRAM_ALLOC);
			wr(HMMGPU_REG_SAN_VRAM, 512 << HMMGPU_SAN_PAGE_SHIFT);	/* freed */
		}
		pte = build_page_table();
		*pte = target | RW | HMMGPU_PTE_VRAM;
		return raw_wait(CTX, read_va(64));
	}
	if (!strcmp(name, "fault-overflow")) {
		uint64_t fb = phys(data);
		uint32_t target;

		build_page_table();	/* nothing mapped at VA */
		wr(HMMGPU_REG_FAULT_BASE_LO, (uint32_t)fb);
		wr(HMMGPU_REG_FAULT_BASE_HI, (uint32_t)(fb >> 32));
		wr(HMMGPU_REG_FAULT_SIZE, 2);
		target = read_va(8 * PAGE);
		if (raw_wait_status(CTX, HMMGPU_QSTATUS_STALLED))
			return 1;
		qwr(CTX, HMMGPU_QREG_CONTROL, HMMGPU_QCTRL_CANCEL);
		wr(HMMGPU_REG_FAULT_SIZE, 0);
		return raw_wait(CTX, target);
	}
	if (!strcmp(name, "bus-master-off")) {
		raw_set_bus_master(0);
		command(&ring[0], HMMGPU_OP_NOP, 0, 0, 0, 0);
		raw_submit(HMMGPU_KERNEL_QUEUE, ring, 1);
		/* the queue halts instead of running the command */
		if (raw_wait_status(HMMGPU_KERNEL_QUEUE, HMMGPU_QSTATUS_HALTED)) {
			raw_set_bus_master(1);
			return 1;
		}
		raw_set_bus_master(1);
		return 0;
	}
	fprintf(stderr, "unknown bug %s\n", name);
	return 2;
}

int main(int argc, char **argv)
{
	uint8_t *mem;
	int ret;

	if (argc != 3) {
		fprintf(stderr, "usage: %s SYSFS_PCI_DEVICE_DIR BUG\n", argv[0]);
		return 2;
	}
	raw_open(argv[1]);
	mem = raw_pages(7);
	ring = (struct hmmgpu_command *)mem;
	tables = (uint64_t *)(mem + PAGE);
	data = mem + 5 * PAGE;
	ret = bug(argv[2]);
	if (!ret)
		printf("done %s\n", argv[2]);
	return ret;
}
