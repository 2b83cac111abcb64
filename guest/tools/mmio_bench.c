// SPDX-License-Identifier: GPL-2.0
/*
 * mmio_bench: time register round trips to a PCI BAR from guest user space.
 *
 *   mmio_bench RESOURCE_FILE OFFSET COUNT read|write
 *
 * A memory BAR's sysfs resource file is mmapped and accessed with volatile
 * 32-bit loads/stores; an I/O BAR's resource file (which cannot be mapped) is
 * accessed with 1-byte pread/pwrite. Prints "<ns per access> <accesses>".
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	long offset, count, i;
	int fd, write_mode;
	volatile uint32_t *reg;
	uint8_t byte = 0;
	double t0, t1;
	void *map;

	if (argc != 5) {
		fprintf(stderr, "usage: %s RESOURCE_FILE OFFSET COUNT read|write\n", argv[0]);
		return 2;
	}
	offset = strtol(argv[2], NULL, 0);
	count = strtol(argv[3], NULL, 0);
	write_mode = !strcmp(argv[4], "write");
	fd = open(argv[1], O_RDWR | O_SYNC);
	if (fd < 0) {
		perror(argv[1]);
		return 1;
	}
	map = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	t0 = now_ns();
	if (map != MAP_FAILED) {
		reg = (volatile uint32_t *)((char *)map + offset);
		for (i = 0; i < count; i++) {
			if (write_mode)
				*reg = (uint32_t)i;
			else
				(void)*reg;
		}
		if (write_mode)
			(void)*reg; /* posted writes complete before the clock stops */
	} else {
		for (i = 0; i < count; i++) {
			if ((write_mode ? pwrite(fd, &byte, 1, offset) : pread(fd, &byte, 1, offset)) != 1) {
				perror("I/O BAR access");
				return 1;
			}
		}
	}
	t1 = now_ns();
	printf("%.0f %ld\n", (t1 - t0) / count, count);
	return 0;
}
