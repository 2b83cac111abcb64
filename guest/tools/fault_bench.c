// SPDX-License-Identifier: GPL-2.0
/*
 * fault_bench: device fault round trip through /dev/hmm_dmirrorN.
 *
 *   fault_bench /dev/hmm_dmirror0 ITERATIONS [PAGES]
 *
 * Each iteration maps fresh pages (PAGES, default 1, 4 KiB pages from a 2 MiB
 * boundary), touches them with the CPU, and asks the device to READ them: the
 * device finds no PTE, faults, the driver runs hmm_range_fault, writes the
 * PTEs and replays, and the READ completes. The same READ again (PTEs
 * present, no fault) is the anchor. Prints "fault <median_us> <p99_us>
 * nofault <median_us> <p99_us> faults <median per READ>", the last as the
 * dmirror ABI counts them (how many batches the driver served).
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

static double read_pages(int fd, void *pages, void *out, long npages, double *faults)
{
	struct hmm_dmirror_cmd cmd = {
		.addr = (uintptr_t)pages, .ptr = (uintptr_t)out, .npages = npages,
	};
	double t0 = now_us();

	if (ioctl(fd, HMM_DMIRROR_READ, &cmd)) {
		perror("HMM_DMIRROR_READ");
		exit(1);
	}
	if (faults)
		*faults = cmd.faults;
	return now_us() - t0;
}

int main(int argc, char **argv)
{
	long page_size = sysconf(_SC_PAGESIZE), npages = 1, size;
	const long align = 2L << 20;
	double *fault, *nofault, *faults;
	int n, i, fd;
	char *out;

	if (argc != 3 && argc != 4) {
		fprintf(stderr, "usage: %s /dev/hmm_dmirrorN ITERATIONS [PAGES]\n", argv[0]);
		return 2;
	}
	n = atoi(argv[2]);
	if (argc == 4)
		npages = atol(argv[3]);
	fd = open(argv[1], O_RDWR);
	if (fd < 0 || n < 1 || npages < 1) {
		perror(argv[1]);
		return 1;
	}
	size = npages * page_size;
	fault = calloc(n, sizeof(*fault));
	nofault = calloc(n, sizeof(*nofault));
	faults = calloc(n, sizeof(*faults));
	out = malloc(size);
	for (i = 0; i < n; i++) {
		char *map = mmap(NULL, size + align, PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		char *pages = (char *)(((uintptr_t)map + align - 1) & ~(uintptr_t)(align - 1));

		/* 4 KiB pages, so the fault counts do not depend on THP */
		madvise(map, size + align, MADV_NOHUGEPAGE);
		memset(pages, i, size);
		fault[i] = read_pages(fd, pages, out, npages, &faults[i]);
		nofault[i] = read_pages(fd, pages, out, npages, NULL);
		if (out[0] != (char)i || out[size - 1] != (char)i) {
			fprintf(stderr, "device read wrong data\n");
			return 1;
		}
		munmap(map, size + align);
	}
	qsort(fault, n, sizeof(*fault), cmp);
	qsort(nofault, n, sizeof(*nofault), cmp);
	qsort(faults, n, sizeof(*faults), cmp);
	printf("fault %.0f %.0f nofault %.0f %.0f faults %.0f\n", fault[n / 2],
	       fault[n * 99 / 100], nofault[n / 2], nofault[n * 99 / 100], faults[n / 2]);
	return 0;
}
