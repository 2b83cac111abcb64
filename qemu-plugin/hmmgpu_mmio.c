// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * hmmgpu_mmio: a QEMU TCG plugin that records guest CPU accesses to device
 * memory (MMIO), with the guest PC of the instruction, so a DMA trace can say
 * which driver function rang a doorbell.
 *
 *   -plugin hmmgpu_mmio.so,out=FILE[,lo=ADDR,hi=ADDR]
 *
 * Every load or store that QEMU resolves to I/O memory (not RAM), with a
 * physical address in [lo, hi) when given, becomes one 40-byte record in FILE
 * (format in qemu-plugin/README.md). The harness keeps the accesses that hit
 * the GPUs' BARs and symbolizes the PCs.
 */
#include <glib.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <qemu-plugin.h>

#include "hmmgpu_cpu_record.h"

/*
 * Built against the qemu-plugin.h of the QEMU source package we can fetch
 * (API 5), loaded by a QEMU that accepts API 7 at least. We export 7; the one
 * difference that matters here is the translation callback's arguments (see
 * on_tb_trans and README.md), and a harness test compares what we record with
 * what the guest wrote.
 */
#define HMMGPU_PLUGIN_API 7
QEMU_PLUGIN_EXPORT int qemu_plugin_version = HMMGPU_PLUGIN_API;

static FILE *out;
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t lo, hi = UINT64_MAX;
static uint64_t records;

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static uint64_t mem_value(qemu_plugin_meminfo_t info)
{
	qemu_plugin_mem_value v = qemu_plugin_mem_get_value(info);

	switch (v.type) {
	case QEMU_PLUGIN_MEM_VALUE_U8:
		return v.data.u8;
	case QEMU_PLUGIN_MEM_VALUE_U16:
		return v.data.u16;
	case QEMU_PLUGIN_MEM_VALUE_U32:
		return v.data.u32;
	case QEMU_PLUGIN_MEM_VALUE_U64:
		return v.data.u64;
	default:
		return v.data.u128.low;
	}
}

static void on_mem(unsigned int vcpu, qemu_plugin_meminfo_t info, uint64_t vaddr, void *udata)
{
	struct qemu_plugin_hwaddr *hw = qemu_plugin_get_hwaddr(info, vaddr);
	struct hmmgpu_cpu_record r;

	if (!hw || !qemu_plugin_hwaddr_is_io(hw))
		return;		/* RAM: the common case, keep it cheap */
	r.phys = qemu_plugin_hwaddr_phys_addr(hw);
	if (r.phys < lo || r.phys >= hi)
		return;
	r.t_ns = now_ns();
	r.pc = (uint64_t)(uintptr_t)udata;
	r.value = mem_value(info);
	r.size = 1u << qemu_plugin_mem_size_shift(info);
	r.store = qemu_plugin_mem_is_store(info);
	r.vcpu = vcpu;
	r.pad = 0;
	pthread_mutex_lock(&out_lock);
	fwrite(&r, sizeof(r), 1, out);
	records++;
	pthread_mutex_unlock(&out_lock);
}

/*
 * API 7 passes the translation block as the first and only argument of this
 * callback (API 5 had the plugin id first), as measured: see README.md.
 */
static void on_tb_trans(struct qemu_plugin_tb *tb)
{
	size_t i, n = qemu_plugin_tb_n_insns(tb);

	for (i = 0; i < n; i++) {
		struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);

		qemu_plugin_register_vcpu_mem_cb(insn, on_mem, QEMU_PLUGIN_CB_NO_REGS,
						 QEMU_PLUGIN_MEM_RW,
						 (void *)(uintptr_t)qemu_plugin_insn_vaddr(insn));
	}
}

static void on_qemu_exit(qemu_plugin_id_t id, void *p)
{
	pthread_mutex_lock(&out_lock);
	fflush(out);
	fclose(out);
	out = NULL;
	pthread_mutex_unlock(&out_lock);
}

static int parse_u64(const char *s, uint64_t *v)
{
	char *end;

	*v = strtoull(s, &end, 0);
	return *s && !*end ? 0 : -1;
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
					   int argc, char **argv)
{
	const char *file = NULL;
	char header[HMMGPU_CPU_HEADER_SIZE] = HMMGPU_CPU_MAGIC;
	uint32_t version = HMMGPU_CPU_VERSION, rsize = sizeof(struct hmmgpu_cpu_record);
	int i;

	for (i = 0; i < argc; i++) {
		if (!strncmp(argv[i], "out=", 4)) {
			file = argv[i] + 4;
		} else if (!strncmp(argv[i], "lo=", 3) ? parse_u64(argv[i] + 3, &lo) :
			   !strncmp(argv[i], "hi=", 3) ? parse_u64(argv[i] + 3, &hi) : -1) {
			fprintf(stderr, "hmmgpu_mmio: bad argument %s\n", argv[i]);
			return -1;
		}
	}
	if (!file) {
		fprintf(stderr, "hmmgpu_mmio: out=FILE is required\n");
		return -1;
	}
	out = fopen(file, "wb");
	if (!out) {
		perror(file);
		return -1;
	}
	setvbuf(out, NULL, _IOFBF, 1 << 20);
	memcpy(header + 8, &version, 4);
	memcpy(header + 12, &rsize, 4);
	fwrite(header, sizeof(header), 1, out);
	qemu_plugin_register_vcpu_tb_trans_cb(id, (qemu_plugin_vcpu_tb_trans_cb_t)(void *)on_tb_trans);
	qemu_plugin_register_atexit_cb(id, on_qemu_exit, NULL);
	return 0;
}
