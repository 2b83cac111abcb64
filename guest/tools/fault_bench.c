// SPDX-License-Identifier: GPL-2.0
/*
 * fault_bench: device fault round trip through /dev/hmm_dmirrorN.
 *
 *   fault_bench /dev/hmm_dmirror0 ITERATIONS
 *
 * Each iteration maps a fresh page, touches it with the CPU, and asks the
 * device to READ it: the device finds no PTE, faults, the driver runs
 * hmm_range_fault, writes the PTE and replays, and the READ completes. The
 * same READ again (PTE present, no fault) is the anchor. Prints
 * "fault <median_us> <p99_us> nofault <median_us> <p99_us>".
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "test_hmm_uapi.h"

static double now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double read_page(int fd, void *page, void *out)
{
	struct hmm_dmirror_cmd cmd = {
		.addr = (uintptr_t)page, .ptr = (uintptr_t)out, .npages = 1,
	};
	double t0 = now_us();

	if (ioctl(fd, HMM_DMIRROR_READ, &cmd)) {
		perror("HMM_DMIRROR_READ");
		exit(1);
	}
	return now_us() - t0;
}

int main(int argc, char **argv)
{
	long page_size = sysconf(_SC_PAGESIZE);
	int n, i, fd;
	double *fault, *nofault;
	char *out;

	if (argc != 3) {
		fprintf(stderr, "usage: %s /dev/hmm_dmirrorN ITERATIONS\n", argv[0]);
		return 2;
	}
	n = atoi(argv[2]);
	fd = open(argv[1], O_RDWR);
	if (fd < 0 || n < 1) {
		perror(argv[1]);
		return 1;
	}
	fault = calloc(n, sizeof(*fault));
	nofault = calloc(n, sizeof(*nofault));
	out = malloc(page_size);
	for (i = 0; i < n; i++) {
		char *page = mmap(NULL, page_size, PROT_READ | PROT_WRITE,
				  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

		memset(page, i, page_size);
		fault[i] = read_page(fd, page, out);
		nofault[i] = read_page(fd, page, out);
		if (out[0] != (char)i) {
			fprintf(stderr, "device read wrong data\n");
			return 1;
		}
		munmap(page, page_size);
	}
	qsort(fault, n, sizeof(*fault), cmp);
	qsort(nofault, n, sizeof(*nofault), cmp);
	printf("fault %.0f %.0f nofault %.0f %.0f\n", fault[n / 2], fault[n * 99 / 100],
	       nofault[n / 2], nofault[n * 99 / 100]);
	return 0;
}
