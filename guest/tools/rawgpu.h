/* SPDX-License-Identifier: GPL-2.0 */
/*
 * rawgpu.h: drive the emulated GPU from guest user space, without a driver
 * (for gpu_smoke and san_bugs). No IOMMU: bus address == physical address,
 * taken from /proc/self/pagemap for locked pages.
 */
#ifndef RAWGPU_H
#define RAWGPU_H

#include <fcntl.h>
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
static char pci_dir[256];

static inline void wr(uint32_t reg, uint32_t val)
{
	bar0[reg / 4] = val;
}

static inline uint32_t rd(uint32_t reg)
{
	return bar0[reg / 4];
}

static inline void qwr(uint32_t q, uint32_t reg, uint32_t val)
{
	wr(HMMGPU_QUEUE_REG(q, reg), val);
}

static inline uint64_t phys(void *p)
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
	return (entry & ((1ULL << 55) - 1)) * PAGE + ((uintptr_t)p & (PAGE - 1));
}

/* Locked, populated, zeroed pages whose bus addresses we can take. */
static inline void *raw_pages(unsigned long n)
{
	void *p = mmap(NULL, n * PAGE, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_LOCKED | MAP_POPULATE, -1, 0);

	if (p == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	memset(p, 0, n * PAGE);
	return p;
}

/* PCI command register: memory space and (optionally) bus mastering. */
static inline void raw_set_bus_master(int on)
{
	char path[300];
	uint16_t cmd = on ? 0x6 : 0x2;
	int fd;

	snprintf(path, sizeof(path), "%s/config", pci_dir);
	fd = open(path, O_RDWR);
	if (fd < 0 || pwrite(fd, &cmd, 2, 4) != 2) {
		perror(path);
		exit(1);
	}
	close(fd);
}

/* Enable the device and map BAR0; exits on failure. */
static inline void raw_open(const char *sysfs_dir)
{
	char path[300];
	int fd;

	snprintf(pci_dir, sizeof(pci_dir), "%s", sysfs_dir);
	raw_set_bus_master(1);
	snprintf(path, sizeof(path), "%s/resource0", sysfs_dir);
	fd = open(path, O_RDWR | O_SYNC);
	bar0 = mmap(NULL, HMMGPU_BAR0_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (fd < 0 || bar0 == MAP_FAILED) {
		perror(path);
		exit(1);
	}
	if (rd(HMMGPU_REG_ID) != HMMGPU_ID_MAGIC) {
		fprintf(stderr, "bad ID 0x%08x\n", rd(HMMGPU_REG_ID));
		exit(1);
	}
}

static inline void command(struct hmmgpu_command *c, uint32_t op, uint32_t flags, uint64_t a0,
			   uint64_t a1, uint64_t a2)
{
	memset(c, 0, sizeof(*c));
	c->opcode = op;
	c->flags = flags;
	c->args[0] = a0;
	c->args[1] = a1;
	c->args[2] = a2;
}

static inline double now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

/*
 * Point queue @q at @ring (emptied) and ring the doorbell for @n commands.
 * Returns the queue's COMPLETED count to wait for (it survives queue resets).
 */
static inline uint32_t raw_submit(uint32_t q, struct hmmgpu_command *ring, uint32_t n)
{
	uint32_t done = rd(HMMGPU_QUEUE_REG(q, HMMGPU_QREG_COMPLETED));

	__sync_synchronize();
	qwr(q, HMMGPU_QREG_CONTROL, HMMGPU_QCTRL_RESET);
	qwr(q, HMMGPU_QREG_RING_BASE_LO, (uint32_t)phys(ring));
	qwr(q, HMMGPU_QREG_RING_BASE_HI, (uint32_t)(phys(ring) >> 32));
	qwr(q, HMMGPU_QREG_RING_SIZE, PAGE / HMMGPU_COMMAND_SIZE);
	qwr(q, HMMGPU_QREG_TAIL, n);
	return done + n;
}

/* After 10 s of waiting: say where queue @q stands, return -1. */
static inline int raw_timeout(uint32_t q)
{
	fprintf(stderr, "timeout: queue %u head %u status 0x%x error %u\n", q,
		rd(HMMGPU_QUEUE_REG(q, HMMGPU_QREG_HEAD)),
		rd(HMMGPU_QUEUE_REG(q, HMMGPU_QREG_STATUS)),
		rd(HMMGPU_QUEUE_REG(q, HMMGPU_QREG_ERROR)));
	return -1;
}

/* Wait until queue @q's COMPLETED reaches @target; 0, or -1 after 10 s. */
static inline int raw_wait(uint32_t q, uint32_t target)
{
	double t0 = now_us();

	while ((int32_t)(rd(HMMGPU_QUEUE_REG(q, HMMGPU_QREG_COMPLETED)) - target) < 0)
		if (now_us() - t0 > 10e6)
			return raw_timeout(q);
	return 0;
}

/* Wait until queue @q's STATUS shows @bit; 0, or -1 after 10 s. */
static inline int raw_wait_status(uint32_t q, uint32_t bit)
{
	double t0 = now_us();

	while (!(rd(HMMGPU_QUEUE_REG(q, HMMGPU_QREG_STATUS)) & bit))
		if (now_us() - t0 > 10e6)
			return raw_timeout(q);
	return 0;
}

#endif
