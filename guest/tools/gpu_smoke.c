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
#include "rawgpu.h"

int main(int argc, char **argv)
{
	struct hmmgpu_command *ring;
	volatile uint64_t *fence;
	uint8_t *pages, *src, *dst;
	uint32_t q = HMMGPU_KERNEL_QUEUE;
	uint64_t value = 0x600dda7a5eedULL;
	double t0, t1;
	int i;

	if (argc != 2) {
		fprintf(stderr, "usage: %s SYSFS_PCI_DEVICE_DIR\n", argv[0]);
		return 2;
	}
	raw_open(argv[1]);
	pages = raw_pages(4);
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
	t0 = now_us();
	raw_submit(q, ring, 3);	/* the FENCE value says when it is done */
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
