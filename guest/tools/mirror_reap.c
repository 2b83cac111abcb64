// SPDX-License-Identifier: GPL-2.0
/*
 * mirror_reap: reap a killed process whose memory the GPU still maps.
 *
 *   mirror_reap /dev/hmm_dmirrorN TRIES
 *
 * A child maps 64 pages and READs pages 8-15 of them into pages 32-39 of the
 * same mapping, so the device maps 16 pages of one VMA, none at its start.
 * The parent SIGKILLs it and calls process_mrelease(), which zaps the VMAs
 * as the OOM reaper does, with a non-blockable mmu notifier range
 * (mm/oom_kill.c:533 __oom_reap_task_mm, mm/memory.c:2266 in the pinned
 * linux-source). Flushing the device TLB sleeps, so the driver must refuse
 * that range (process_mrelease fails with EAGAIN) and leave the teardown to
 * the child's own exit, which may block.
 *
 * The child must not start exiting before the reap, or its exit would hold
 * the mirror and make the reap fail for a reason of its own: both run on
 * CPU 0 and the parent is SCHED_FIFO (the child is reset to SCHED_OTHER at
 * fork), so the killed child runs only once the parent sleeps.
 *
 * Prints "eagain N reaped M other K" (other: any other error).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test_hmm_uapi.h"

#define NPAGES 64

static void child(const char *dev, int ready)
{
	size_t size = NPAGES * 4096UL;
	char *data = mmap(NULL, size, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct hmm_dmirror_cmd cmd = { .addr = (uintptr_t)data + 8 * 4096,
				       .ptr = (uintptr_t)data + 32 * 4096, .npages = 8 };
	int fd = open(dev, O_RDWR);

	if (fd < 0 || data == MAP_FAILED)
		_exit(1);
	memset(data, 1, size);
	if (ioctl(fd, HMM_DMIRROR_READ, &cmd) || cmd.faults != 1)
		_exit(1);
	if (write(ready, "r", 1) != 1)
		_exit(1);
	for (;;)
		pause();
}

int main(int argc, char **argv)
{
	struct sched_param fifo = { .sched_priority = 10 };
	int tries, i, eagain = 0, reaped = 0, other = 0;
	cpu_set_t cpu0;

	if (argc != 3) {
		fprintf(stderr, "usage: mirror_reap /dev/hmm_dmirrorN TRIES\n");
		return 2;
	}
	tries = atoi(argv[2]);
	CPU_ZERO(&cpu0);
	CPU_SET(0, &cpu0);
	if (sched_setaffinity(0, sizeof(cpu0), &cpu0) ||
	    sched_setscheduler(0, SCHED_FIFO | SCHED_RESET_ON_FORK, &fifo)) {
		perror("FAIL sched");
		return 1;
	}
	for (i = 0; i < tries; i++) {
		int p[2], pidfd, status;
		pid_t pid;
		char c;

		if (pipe(p))
			return 1;
		pid = fork();
		if (!pid)
			child(argv[1], p[1]);
		close(p[1]);
		if (read(p[0], &c, 1) != 1) {
			printf("FAIL child could not map its pages through the device\n");
			return 1;
		}
		close(p[0]);
		pidfd = syscall(SYS_pidfd_open, pid, 0);
		kill(pid, SIGKILL);
		if (syscall(SYS_process_mrelease, pidfd, 0) == 0)
			reaped++;
		else if (errno == EAGAIN)
			eagain++;
		else
			other++;
		close(pidfd);
		waitpid(pid, &status, 0);
		if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL) {
			printf("FAIL child ended with status %#x\n", status);
			return 1;
		}
	}
	printf("eagain %d reaped %d other %d\n", eagain, reaped, other);
	return 0;
}
