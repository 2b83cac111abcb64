// SPDX-License-Identifier: GPL-2.0
/*
 * gpu_smoke: drive the emulated GPU from guest user space, without a driver.
 *
 *   gpu_smoke /sys/bus/pci/devices/0000:01:00.0
 *
 * Enables memory decoding and bus mastering, maps BAR0, takes physical
 * addresses of locked pages from /proc/self/pagemap (no IOMMU: bus address ==
 * physical address), and on the kernel queue submits COPY system->VRAM, COPY
 * VRAM->system and a FENCE. Prints "ok <microseconds>" when the fence value
 * arrives and the data came back intact; exits 1 otherwise.
 */
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "hmmgpu_hw.h"

#define PAGE 4096UL

static volatile uint32_t *bar0;

static void wr(uint32_t reg, uint32_t val)
{
	bar0[reg / 4] = val;
}

static uint32_t rd(uint32_t reg)
{
	return bar0[reg / 4];
}

static uint64_t phys(void *p)
{
	uint64_t entry;
	int fd = open("/proc/self/pagemap", O_RDONLY);

	if (fd < 0 || pread(fd, &entry, 8, ((uintptr_t)p / PAGE) * 8) != 8) {
		perror("pagemap");
		exit(1);
	}
	close(fd);
	if (!(entry >> 63) || !(entry & ((1ULL << 55) - 1))) {
		fprintf(stderr, "page not present or PFN hidden\n");
		exit(1);
	}
	return (entry & ((1ULL << 55) - 1)) * PAGE;
}

static void command(struct hmmgpu_command *c, uint32_t op, uint32_t flags, uint64_t a0,
		    uint64_t a1, uint64_t a2)
{
	memset(c, 0, sizeof(*c));
	c->opcode = op;
	c->flags = flags;
	c->args[0] = a0;
	c->args[1] = a1;
	c->args[2] = a2;
}

static double now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

int main(int argc, char **argv)
{
	char path[512];
	uint16_t cmd = 0x6;	/* memory space + bus master */
	struct hmmgpu_command *ring;
	volatile uint64_t *fence;
	uint8_t *pages, *src, *dst;
	uint32_t q = HMMGPU_KERNEL_QUEUE;
	uint64_t value = 0x600dda7a5eedULL;
	double t0, t1;
	int fd, i;

	if (argc != 2) {
		fprintf(stderr, "usage: %s SYSFS_PCI_DEVICE_DIR\n", argv[0]);
		return 2;
	}
	snprintf(path, sizeof(path), "%s/config", argv[1]);
	fd = open(path, O_RDWR);
	if (fd < 0 || pwrite(fd, &cmd, 2, 4) != 2) {
		perror(path);
		return 1;
	}
	close(fd);
	snprintf(path, sizeof(path), "%s/resource0", argv[1]);
	fd = open(path, O_RDWR | O_SYNC);
	bar0 = mmap(NULL, HMMGPU_BAR0_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (fd < 0 || bar0 == MAP_FAILED) {
		perror(path);
		return 1;
	}
	if (rd(HMMGPU_REG_ID) != HMMGPU_ID_MAGIC) {
		fprintf(stderr, "bad ID 0x%08x\n", rd(HMMGPU_REG_ID));
		return 1;
	}
	pages = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS | MAP_LOCKED | MAP_POPULATE, -1, 0);
	if (pages == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	ring = (struct hmmgpu_command *)pages;
	fence = (volatile uint64_t *)(pages + PAGE);
	src = pages + 2 * PAGE;
	dst = pages + 3 * PAGE;
	for (i = 0; i < (int)PAGE; i++)
		src[i] = (uint8_t)(i * 7 + 3);
	memset(dst, 0, PAGE);
	*fence = 0;

	command(&ring[0], HMMGPU_OP_COPY,
		HMMGPU_APERTURE_SYS << HMMGPU_SRC_APERTURE_SHIFT |
		HMMGPU_APERTURE_VRAM << HMMGPU_DST_APERTURE_SHIFT, phys(src), 0x1000, PAGE);
	command(&ring[1], HMMGPU_OP_COPY,
		HMMGPU_APERTURE_VRAM << HMMGPU_SRC_APERTURE_SHIFT |
		HMMGPU_APERTURE_SYS << HMMGPU_DST_APERTURE_SHIFT, 0x1000, phys(dst), PAGE);
	command(&ring[2], HMMGPU_OP_FENCE, 0, phys((void *)fence), value, 0);
	__sync_synchronize();

	wr(HMMGPU_QUEUE_REG(q, HMMGPU_QREG_CONTROL), HMMGPU_QCTRL_RESET);
	wr(HMMGPU_QUEUE_REG(q, HMMGPU_QREG_RING_BASE_LO), (uint32_t)phys(ring));
	wr(HMMGPU_QUEUE_REG(q, HMMGPU_QREG_RING_BASE_HI), (uint32_t)(phys(ring) >> 32));
	wr(HMMGPU_QUEUE_REG(q, HMMGPU_QREG_RING_SIZE), PAGE / HMMGPU_COMMAND_SIZE);
	t0 = now_us();
	wr(HMMGPU_QUEUE_REG(q, HMMGPU_QREG_TAIL), 3);
	while (*fence != value) {
		if (now_us() - t0 > 10e6) {
			fprintf(stderr, "timeout: head %u status 0x%x error %u\n",
				rd(HMMGPU_QUEUE_REG(q, HMMGPU_QREG_HEAD)),
				rd(HMMGPU_QUEUE_REG(q, HMMGPU_QREG_STATUS)),
				rd(HMMGPU_QUEUE_REG(q, HMMGPU_QREG_ERROR)));
			return 1;
		}
	}
	t1 = now_us();
	if (memcmp(src, dst, PAGE)) {
		fprintf(stderr, "data mismatch after COPY round trip\n");
		return 1;
	}
	printf("ok %.0f\n", t1 - t0);
	return 0;
}
