// SPDX-License-Identifier: GPL-2.0
/*
 * gpu_atomic: device atomics on device-exclusive pages, through hmmgpu.ko.
 *
 *   gpu_atomic /dev/hmm_dmirror0
 *
 * The device adds to and swaps a word of an anonymous page with
 * HMMGPU_IOC_ATOMIC. The first atomic faults and the driver makes the page
 * device-exclusive; a second one finds it mapped; a CPU read revokes the
 * exclusive mapping (CHECK_EXCLUSIVE reports none) and the next device atomic
 * faults again. Prints "ok" and the fault counts; exits 1 on the first
 * surprise.
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

#include "hmmgpu_hw.h"
#include "hmmgpu_uapi.h"
#include "test_hmm_uapi.h"

static int fd;

static void fail(const char *what, uint64_t got, uint64_t want)
{
	printf("FAIL %s: got %llu, want %llu\n", what, (unsigned long long)got,
	       (unsigned long long)want);
	exit(1);
}

/* One device atomic; returns the old value and checks the fault count. */
static uint64_t atomic_op(volatile uint64_t *word, uint32_t op, uint64_t operand,
			  uint32_t want_faults, const char *what)
{
	struct hmmgpu_atomic a = { .addr = (uintptr_t)word, .operand = operand, .op = op };

	if (ioctl(fd, HMMGPU_IOC_ATOMIC, &a)) {
		printf("FAIL %s: ioctl: %s\n", what, strerror(errno));
		exit(1);
	}
	if (a.faults != want_faults)
		fail(what, a.faults, want_faults);
	return a.old;
}

static int device_holds_exclusive(void *page)
{
	struct hmm_dmirror_cmd cmd = { .addr = (uintptr_t)page, .npages = 1 };

	return ioctl(fd, HMM_DMIRROR_CHECK_EXCLUSIVE, &cmd) != 0;
}

int main(int argc, char **argv)
{
	volatile uint64_t *word;
	void *page;

	if (argc != 2) {
		fprintf(stderr, "usage: %s /dev/hmm_dmirrorN\n", argv[0]);
		return 2;
	}
	fd = open(argv[1], O_RDWR);
	if (fd < 0) {
		perror(argv[1]);
		return 1;
	}
	page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (page == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	word = (volatile uint64_t *)page + 3;
	*word = 5;

	if (atomic_op(word, HMMGPU_ATOMIC_FETCH_ADD, 3, 1, "first add") != 5)
		fail("first add old value", 0, 5);
	if (!device_holds_exclusive(page))
		fail("exclusive after the first atomic", 0, 1);
	if (atomic_op(word, HMMGPU_ATOMIC_FETCH_ADD, 2, 0, "second add") != 8)
		fail("second add old value", 0, 8);
	if (*word != 10)		/* the CPU read takes the page back */
		fail("CPU read", *word, 10);
	if (device_holds_exclusive(page))
		fail("exclusive after a CPU read", 1, 0);
	if (atomic_op(word, HMMGPU_ATOMIC_SWAP, 100, 1, "swap") != 10)
		fail("swap old value", 0, 10);
	if (*word != 100)
		fail("CPU read after swap", *word, 100);
	printf("ok faults 1 0 1\n");
	return 0;
}
