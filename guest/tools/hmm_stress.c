// SPDX-License-Identifier: GPL-2.0
/*
 * hmm_stress: random HMM work on one /dev/hmm_dmirrorN, with every byte checked.
 *
 *   hmm_stress /dev/hmm_dmirrorN SECONDS SEED
 *
 * The process owns a 2 MiB anonymous region (THP allowed) and a shadow copy of
 * what it must hold. Until SECONDS pass it picks, at random, a range and one
 * of: CPU write, CPU check, device READ (checked), device WRITE, migrate to
 * the device, migrate back, device-exclusive access followed by a CPU check,
 * or a fresh region. Run several at once on both GPUs while the kernel
 * compacts and reclaims. Prints "ok OPS busy=N per-op counts" (N: device
 * commands the kernel refused for now with EBUSY/EAGAIN/ENOMEM, whose data
 * was not checked) or the first FAIL; exits 1 on a mismatch or any other
 * ioctl error.
 */
#include <errno.h>
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

#define PAGE		4096UL
#define NPAGES		512UL	/* 2 MiB */
#define WORDS		(PAGE / sizeof(uint64_t))

enum op { CPU_WRITE, CPU_CHECK, DEV_READ, DEV_WRITE, TO_DEV, TO_SYS, EXCL, REMAP, NOPS };
static const char *const op_name[NOPS] = {
	"cpu_write", "cpu_check", "dev_read", "dev_write", "to_dev", "to_sys", "exclusive",
	"remap",
};

static uint64_t rng;
static int fd;
static uint64_t *region, *shadow, *bounce;
static unsigned long counts[NOPS], ops, busy;

static uint64_t next(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void fail(const char *what, unsigned long first, unsigned long n)
{
	printf("FAIL op %lu: %s at pages %lu..%lu (%s)\n", ops, what, first, first + n - 1,
	       strerror(errno));
	exit(1);
}

static void new_region(void)
{
	if (region)
		munmap(region, NPAGES * PAGE);
	region = mmap(NULL, NPAGES * PAGE, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (region == MAP_FAILED) {
		printf("FAIL: mmap: %s\n", strerror(errno));
		exit(1);
	}
	madvise(region, NPAGES * PAGE, MADV_HUGEPAGE);
	memset(shadow, 0, NPAGES * PAGE);	/* fresh anonymous memory reads as 0 */
}

/* Device command on pages [first, first + n); EBUSY/EAGAIN/ENOMEM are the kernel's to give. */
static int dmirror(unsigned long req, unsigned long first, unsigned long n, void *buf)
{
	struct hmm_dmirror_cmd cmd = { .addr = (uintptr_t)(region + first * WORDS),
				       .ptr = (uintptr_t)buf, .npages = n };
	int ret;

	do
		ret = ioctl(fd, req, &cmd);
	while (ret && errno == EINTR);
	if (ret && errno != EBUSY && errno != EAGAIN && errno != ENOMEM)
		return -1;
	return ret ? 1 : 0;
}

static void check(const uint64_t *got, unsigned long first, unsigned long n, const char *what)
{
	if (memcmp(got, shadow + first * WORDS, n * PAGE)) {
		unsigned long i;

		for (i = 0; i < n * WORDS; i++)
			if (got[i] != shadow[first * WORDS + i])
				break;
		printf("FAIL op %lu: %s: page %lu word %lu is %#llx, want %#llx\n", ops, what,
		       first + i / WORDS, i % WORDS, (unsigned long long)got[i],
		       (unsigned long long)shadow[first * WORDS + i]);
		exit(1);
	}
}

static void fill(uint64_t *dst, unsigned long n)
{
	unsigned long i;
	uint64_t tag = next();

	for (i = 0; i < n * WORDS; i++)
		dst[i] = tag + i;
}

int main(int argc, char **argv)
{
	double end;
	int i;

	if (argc != 4) {
		fprintf(stderr, "usage: hmm_stress /dev/hmm_dmirrorN SECONDS SEED\n");
		return 2;
	}
	fd = open(argv[1], O_RDWR);
	if (fd < 0) {
		perror(argv[1]);
		return 1;
	}
	end = now() + atof(argv[2]);
	rng = strtoull(argv[3], NULL, 0) * 2654435761ULL + 1;
	shadow = malloc(NPAGES * PAGE);
	bounce = malloc(NPAGES * PAGE);
	if (!shadow || !bounce)
		return 1;
	new_region();
	while (now() < end) {
		enum op op = next() % NOPS;
		unsigned long n = 1 + next() % (next() % 4 ? 16 : NPAGES);
		unsigned long first = next() % (NPAGES - n + 1);
		int r;

		ops++;
		counts[op]++;
		switch (op) {
		case CPU_WRITE:
			fill(shadow + first * WORDS, n);
			memcpy(region + first * WORDS, shadow + first * WORDS, n * PAGE);
			break;
		case CPU_CHECK:
			check(region + first * WORDS, first, n, "CPU read");
			break;
		case DEV_READ:
			r = dmirror(HMM_DMIRROR_READ, first, n, bounce);
			if (r < 0)
				fail("READ", first, n);
			if (r == 0)
				check(bounce, first, n, "device READ");
			busy += r;
			break;
		case DEV_WRITE:
			fill(bounce, n);
			r = dmirror(HMM_DMIRROR_WRITE, first, n, bounce);
			if (r < 0)
				fail("WRITE", first, n);
			if (r == 0) {
				memcpy(shadow + first * WORDS, bounce, n * PAGE);
				check(region + first * WORDS, first, n, "CPU read after device WRITE");
			} else {
				/* not done, or done in part: what the CPU sees is the truth */
				memcpy(shadow + first * WORDS, region + first * WORDS, n * PAGE);
				busy++;
			}
			break;
		case TO_DEV:
			/* ENOENT: nothing there could move (all on this device already) */
			if (dmirror(HMM_DMIRROR_MIGRATE_TO_DEV, first, n, bounce) < 0 &&
			    errno != ENOENT)
				fail("MIGRATE_TO_DEV", first, n);
			break;
		case TO_SYS:
			if (dmirror(HMM_DMIRROR_MIGRATE_TO_SYS, first, n, bounce) < 0)
				fail("MIGRATE_TO_SYS", first, n);
			break;
		case EXCL:
			if (dmirror(HMM_DMIRROR_EXCLUSIVE, first, n, bounce) < 0)
				fail("EXCLUSIVE", first, n);
			check(region + first * WORDS, first, n, "CPU read after EXCLUSIVE");
			break;
		case REMAP:
			if (next() % 8 == 0)
				new_region();
			break;
		default:
			break;
		}
	}
	printf("ok %lu busy=%lu", ops, busy);
	for (i = 0; i < NOPS; i++)
		printf(" %s=%lu", op_name[i], counts[i]);
	printf("\n");
	return 0;
}
