// SPDX-License-Identifier: GPL-2.0
/*
 * mirror_threads: two threads issue READs on one open /dev/hmm_dmirrorN.
 *
 *   mirror_threads /dev/hmm_dmirror0 ROUNDS
 *
 * Each round, each thread READs 64 fresh pages of its own through the device
 * and checks the data and the fault count the dmirror ABI reports (1: the
 * whole request is faulted in as one batch). The requests of the two threads
 * must not see each other's faults or ranges. Prints "ok ROUNDS" or the
 * first FAIL; exits 1 on failure.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "test_hmm_uapi.h"

#define NPAGES 64

static int fd, rounds;

static void *reader(void *arg)
{
	long id = (long)arg;
	size_t size = NPAGES * 4096UL;
	int r;

	for (r = 0; r < rounds; r++) {
		uint32_t *data = mmap(NULL, size, PROT_READ | PROT_WRITE,
				      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		uint32_t *mirror = malloc(size);
		struct hmm_dmirror_cmd cmd = { .addr = (uintptr_t)data,
					       .ptr = (uintptr_t)mirror, .npages = NPAGES };
		size_t i;

		if (data == MAP_FAILED || !mirror) {
			printf("FAIL thread %ld: out of memory\n", id);
			exit(1);
		}
		for (i = 0; i < size / 4; i++)
			data[i] = id << 24 | r << 12 | (i & 0xfff);
		if (ioctl(fd, HMM_DMIRROR_READ, &cmd)) {
			printf("FAIL thread %ld round %d: READ: %s\n", id, r, strerror(errno));
			exit(1);
		}
		if (memcmp(data, mirror, size)) {
			printf("FAIL thread %ld round %d: data differs\n", id, r);
			exit(1);
		}
		if (cmd.cpages != NPAGES || cmd.faults != 1) {
			printf("FAIL thread %ld round %d: cpages %llu faults %llu, want %d 1\n", id,
			       r, (unsigned long long)cmd.cpages, (unsigned long long)cmd.faults,
			       NPAGES);
			exit(1);
		}
		munmap(data, size);
		free(mirror);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	pthread_t t[2];
	long i;

	if (argc != 3) {
		fprintf(stderr, "usage: mirror_threads /dev/hmm_dmirrorN ROUNDS\n");
		return 2;
	}
	fd = open(argv[1], O_RDWR);
	if (fd < 0) {
		printf("FAIL open %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	rounds = atoi(argv[2]);
	for (i = 0; i < 2; i++)
		pthread_create(&t[i], NULL, reader, (void *)i);
	for (i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	printf("ok %d\n", rounds);
	return 0;
}
