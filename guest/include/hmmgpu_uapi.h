/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * hmmgpu's own ioctls on /dev/hmm_dmirrorN, next to the dmirror ABI of
 * lib/test_hmm_uapi.h (which uses numbers 0x00-0x3f of type 'H').
 */
#ifndef HMMGPU_UAPI_H
#define HMMGPU_UAPI_H

#include <linux/ioctl.h>
#include <linux/types.h>

/*
 * HMMGPU_IOC_ATOMIC: the device performs one 64-bit atomic at @addr in the
 * caller's address space, through its MMU. The first atomic on a page faults;
 * the driver makes the page device-exclusive (make_device_exclusive()) and
 * maps it for atomics. A CPU access revokes that, and the next device atomic
 * faults again.
 */
struct hmmgpu_atomic {
	__u64 addr;	/* in: 8-byte aligned virtual address */
	__u64 operand;	/* in: addend (FETCH_ADD) or new value (SWAP) */
	__u64 old;	/* out: the value before the operation */
	__u32 op;	/* in: HMMGPU_ATOMIC_FETCH_ADD or HMMGPU_ATOMIC_SWAP */
	__u32 faults;	/* out: device faults the operation took */
};

#define HMMGPU_IOC_ATOMIC	_IOWR('H', 0x40, struct hmmgpu_atomic)

#endif
