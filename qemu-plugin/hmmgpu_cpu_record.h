/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The CPU-trace file format. GENERATED from host/cputrace.py by
 * 'hmmgpu hwdef --write': do not edit by hand.
 */
#ifndef HMMGPU_CPU_RECORD_H
#define HMMGPU_CPU_RECORD_H

#include <assert.h>
#include <stddef.h>
#include <stdint.h>

#define HMMGPU_CPU_MAGIC       "HMMGPUCP"
#define HMMGPU_CPU_HEADER_SIZE 64
#define HMMGPU_CPU_VERSION     1

/* One guest CPU access to I/O memory, as the plugin writes it. */
struct hmmgpu_cpu_record {
	uint64_t t_ns;         /* host CLOCK_MONOTONIC */
	uint64_t pc;           /* guest virtual address of the instruction */
	uint64_t phys;         /* guest physical address accessed */
	uint64_t value;
	uint32_t size;         /* bytes */
	uint8_t store;
	uint8_t vcpu;
	uint16_t pad;
};
static_assert(sizeof(struct hmmgpu_cpu_record) == 40, "hmmgpu_cpu_record size");
static_assert(offsetof(struct hmmgpu_cpu_record, t_ns) == 0, "t_ns");
static_assert(offsetof(struct hmmgpu_cpu_record, pc) == 8, "pc");
static_assert(offsetof(struct hmmgpu_cpu_record, phys) == 16, "phys");
static_assert(offsetof(struct hmmgpu_cpu_record, value) == 24, "value");
static_assert(offsetof(struct hmmgpu_cpu_record, size) == 32, "size");
static_assert(offsetof(struct hmmgpu_cpu_record, store) == 36, "store");
static_assert(offsetof(struct hmmgpu_cpu_record, vcpu) == 37, "vcpu");
static_assert(offsetof(struct hmmgpu_cpu_record, pad) == 38, "pad");

#endif /* HMMGPU_CPU_RECORD_H */
