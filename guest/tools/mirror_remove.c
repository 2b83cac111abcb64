// SPDX-License-Identifier: GPL-2.0
/*
 * mirror_remove: hold /dev/hmm_dmirrorN open across the GPU's removal.
 *
 *   mirror_remove /dev/hmm_dmirror0 GO_FILE
 *
 * Opens the mirror, migrates 16 pages to VRAM and READs them back through
 * the device, prints "ready", then waits until GO_FILE exists (the caller
 * unbinds the driver meanwhile). After that every ioctl must fail with
 * ENODEV, and the migrated pages must still hold their data in system memory
 * (removal evicts VRAM). Prints "ok enodev" or the first FAIL.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "test_hmm_uapi.h"

#define NPAGES 16

static int fd;

static int request(unsigned long op, void *addr, void *ptr)
{
	struct hmm_dmirror_cmd cmd = { .addr = (uintptr_t)addr, .ptr = (uintptr_t)ptr,
				       .npages = NPAGES };

	return ioctl(fd, op, &cmd) ? errno : 0;
}

int main(int argc, char **argv)
{
	size_t size = NPAGES * 4096UL, i;
	uint64_t *data, *copy;
	int err;

	if (argc != 3) {
		fprintf(stderr, "usage: mirror_remove /dev/hmm_dmirrorN GO_FILE\n");
		return 2;
	}
	fd = open(argv[1], O_RDWR);
	data = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	copy = malloc(size);
	if (fd < 0 || data == MAP_FAILED || !copy) {
		printf("FAIL setup: %s\n", strerror(errno));
		return 1;
	}
	for (i = 0; i < size / 8; i++)
		data[i] = 0x5a5a000000000000ULL | i;
	err = request(HMM_DMIRROR_MIGRATE_TO_DEV, data, copy);
	if (!err)
		err = request(HMM_DMIRROR_READ, data, copy);
	if (err) {
		printf("FAIL before removal: %s\n", strerror(err));
		return 1;
	}
	printf("ready\n");
	fflush(stdout);
	while (access(argv[2], F_OK))
		usleep(100 * 1000);

	err = request(HMM_DMIRROR_READ, data, copy);
	if (err != ENODEV) {
		printf("FAIL READ after removal: %s, want ENODEV\n", strerror(err));
		return 1;
	}
	err = request(HMM_DMIRROR_MIGRATE_TO_DEV, data, copy);
	if (err != ENODEV) {
		printf("FAIL MIGRATE_TO_DEV after removal: %s, want ENODEV\n", strerror(err));
		return 1;
	}
	for (i = 0; i < size / 8; i++)
		if (data[i] != (0x5a5a000000000000ULL | i)) {
			printf("FAIL page %zu lost its data after eviction\n", i / 512);
			return 1;
		}
	close(fd);
	printf("ok enodev\n");
	return 0;
}
