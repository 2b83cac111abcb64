// SPDX-License-Identifier: GPL-2.0
/*
 * mmio_anchor: the C anchor for hmmgpu's register round trip.
 *
 *   mmio_anchor SOCKET VENDOR DEVICE BAR0_SIZE [MAPPED_BAR]
 *
 * A libvfio-user server shaped like hmmgpu's BAR0 and nothing more: a PCIe
 * endpoint whose BAR0 is a memory BAR of BAR0_SIZE bytes that stores what is
 * written and returns it on read. The guest's mapped loads and stores reach
 * it the way they reach the Python server (QEMU's vfio-user client, a region
 * read or write message on the socket), and it is served by the same loop
 * (poll fd, vfu_run_ctx), so the two differ only in what answers the access.
 *
 * MAPPED_BAR adds a 1 MiB BAR backed by a memfd the client maps, as hmmgpu's
 * VRAM BAR is. It matters: QEMU's client posts BAR writes (no reply awaited)
 * only for a device with no mapped region (hw/vfio-user/device.c, region
 * info: a mapped region disables posted writes for the whole device).
 * Built by bench/bench_lab.py against the project's libvfio-user.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "libvfio-user.h"

#define PCI_CAP_ID_EXP		0x10
#define PCI_EXP_CAP_SIZE	0x3c
#define PCI_EXP_FLAGS_V2	0x0002	/* version 2, endpoint */
#define MAPPED_BAR_SIZE		(1 << 20)

static uint8_t *bar0;
static size_t bar0_size;

static ssize_t bar0_access(vfu_ctx_t *ctx, char *buf, size_t count, loff_t offset,
			   bool is_write)
{
	if (offset < 0 || (size_t)offset > bar0_size || count > bar0_size - offset) {
		errno = EINVAL;
		return -1;
	}
	if (is_write)
		memcpy(bar0 + offset, buf, count);
	else
		memcpy(buf, bar0 + offset, count);
	return count;
}

/* Reached only by a client that does not map the BAR. */
static ssize_t mapped_bar_access(vfu_ctx_t *ctx, char *buf, size_t count, loff_t offset,
				 bool is_write)
{
	if (!is_write)
		memset(buf, 0, count);
	return count;
}

/* QEMU maps guest RAM for DMA; the anchor does none but must accept it. */
static void dma_register(vfu_ctx_t *ctx, vfu_dma_info_t *info)
{
}

static void dma_unregister(vfu_ctx_t *ctx, vfu_dma_info_t *info)
{
}

static int fail(const char *what)
{
	fprintf(stderr, "mmio_anchor: %s: %s\n", what, strerror(errno));
	return 1;
}

int main(int argc, char **argv)
{
	uint8_t cap[PCI_EXP_CAP_SIZE] = { PCI_CAP_ID_EXP, 0, PCI_EXP_FLAGS_V2 };
	struct pollfd pfd;
	vfu_ctx_t *ctx;

	if (argc != 5 && argc != 6) {
		fprintf(stderr, "usage: %s SOCKET VENDOR DEVICE BAR0_SIZE [MAPPED_BAR]\n", argv[0]);
		return 2;
	}
	bar0_size = strtoul(argv[4], NULL, 0);
	bar0 = calloc(1, bar0_size);
	if (!bar0)
		return fail("calloc");
	ctx = vfu_create_ctx(VFU_TRANS_SOCK, argv[1], LIBVFIO_USER_FLAG_ATTACH_NB, NULL,
			     VFU_DEV_TYPE_PCI);
	if (!ctx)
		return fail("vfu_create_ctx");
	if (vfu_pci_init(ctx, VFU_PCI_TYPE_EXPRESS, PCI_HEADER_TYPE_NORMAL, 0))
		return fail("vfu_pci_init");
	vfu_pci_set_id(ctx, strtoul(argv[2], NULL, 16), strtoul(argv[3], NULL, 16), 0, 0);
	if (vfu_pci_add_capability(ctx, 0, 0, cap) < 0)
		return fail("vfu_pci_add_capability");
	if (vfu_setup_region(ctx, VFU_PCI_DEV_BAR0_REGION_IDX, bar0_size, bar0_access,
			     VFU_REGION_FLAG_RW | VFU_REGION_FLAG_MEM, NULL, 0, -1, 0))
		return fail("vfu_setup_region");
	if (argc == 6) {
		int fd = memfd_create("mmio_anchor", MFD_CLOEXEC);

		if (fd < 0 || ftruncate(fd, MAPPED_BAR_SIZE))
			return fail("memfd");
		if (vfu_setup_region(ctx, VFU_PCI_DEV_BAR0_REGION_IDX + atoi(argv[5]),
				     MAPPED_BAR_SIZE, mapped_bar_access,
				     VFU_REGION_FLAG_RW | VFU_REGION_FLAG_MEM, NULL, 0, fd, 0))
			return fail("vfu_setup_region (mapped BAR)");
	}
	if (vfu_setup_device_dma(ctx, dma_register, dma_unregister))
		return fail("vfu_setup_device_dma");
	if (vfu_realize_ctx(ctx))
		return fail("vfu_realize_ctx");
	pfd.events = POLLIN;
	for (;;) {
		pfd.fd = vfu_get_poll_fd(ctx);
		if (poll(&pfd, 1, -1) < 0 && errno != EINTR)
			return fail("poll");
		if (vfu_attach_ctx(ctx) == 0)
			break;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return fail("vfu_attach_ctx");
	}
	for (;;) {
		pfd.fd = vfu_get_poll_fd(ctx);
		if (poll(&pfd, 1, -1) < 0 && errno != EINTR)
			return fail("poll");
		if (vfu_run_ctx(ctx) < 0 && errno != EAGAIN && errno != EBUSY) {
			if (errno == ENOTCONN)
				break;	/* the client went away: done */
			return fail("vfu_run_ctx");
		}
	}
	vfu_destroy_ctx(ctx);
	return 0;
}
