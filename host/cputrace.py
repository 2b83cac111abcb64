"""Guest CPU accesses to the GPUs' BARs, from the TCG plugin (qemu-plugin/).

The plugin writes every guest load/store to I/O memory with the guest PC; the
lab saves the GPUs' BAR0 ranges (gpu-bars.json) and the guest's kernel and
module symbols (kallsyms.txt) next to it, so the accesses can be narrowed to
the GPUs and each PC named ("hmmgpu_queue_run+0x5c [hmmgpu]").
"""

from __future__ import annotations

import bisect
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..device.layout import Field, Layout

CPU_FILE = "cpu-mmio.bin"
BARS_FILE = "gpu-bars.json"
SYMBOLS_FILE = "kallsyms.txt"
MAGIC = b"HMMGPUCP"
HEADER_SIZE = 64  # MAGIC, u32 version, u32 record size, zeros
VERSION = 1
# the plugin's record, defined once: qemu-plugin/hmmgpu_cpu_record.h is
# generated from it ('hmmgpu hwdef --write'), and a test checks the file
CPU_RECORD_LAYOUT = Layout("hmmgpu_cpu_record", (
    Field("t_ns", "u64", doc="host CLOCK_MONOTONIC"),
    Field("pc", "u64", doc="guest virtual address of the instruction"),
    Field("phys", "u64", doc="guest physical address accessed"),
    Field("value", "u64"),
    Field("size", "u32", doc="bytes"),
    Field("store", "u8"),
    Field("vcpu", "u8"),
    Field("pad", "u16"),
), 40, "One guest CPU access to I/O memory, as the plugin writes it.")
CPU_RECORD = CPU_RECORD_LAYOUT.dtype()


def render_plugin_header() -> str:
    return "\n".join([
        "/* SPDX-License-Identifier: GPL-2.0-or-later */",
        "/*",
        " * The CPU-trace file format. GENERATED from host/cputrace.py by",
        " * 'hmmgpu hwdef --write': do not edit by hand.",
        " */",
        "#ifndef HMMGPU_CPU_RECORD_H",
        "#define HMMGPU_CPU_RECORD_H",
        "",
        "#include <assert.h>",
        "#include <stddef.h>",
        "#include <stdint.h>",
        "",
        f'#define HMMGPU_CPU_MAGIC       "{MAGIC.decode()}"',
        f"#define HMMGPU_CPU_HEADER_SIZE {HEADER_SIZE}",
        f"#define HMMGPU_CPU_VERSION     {VERSION}",
        "",
        *CPU_RECORD_LAYOUT.c_struct(endian_types=False),
        "",
        "#endif /* HMMGPU_CPU_RECORD_H */",
        "",
    ])


def load_cpu(path: Path) -> np.ndarray:
    """The plugin's records (a file cut short by a killed QEMU loads up to its
    last whole record)."""
    data = Path(path).read_bytes()
    if data[:8] != MAGIC:
        raise ValueError(f"{path}: not an hmmgpu CPU trace")
    version, rsize = struct.unpack_from("<II", data, 8)
    if (version, rsize) != (VERSION, CPU_RECORD.itemsize):
        raise ValueError(f"{path}: CPU trace version {version} with {rsize}-byte records; "
                         f"this hmmgpu reads version {VERSION}, {CPU_RECORD.itemsize} bytes")
    n = (len(data) - HEADER_SIZE) // CPU_RECORD.itemsize
    return np.frombuffer(data, dtype=CPU_RECORD, offset=HEADER_SIZE, count=n)


class Symbols:
    """Text symbols from a /proc/kallsyms dump."""

    def __init__(self, text: str) -> None:
        syms = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1] in "tT" and int(parts[0], 16):
                module = parts[3] if len(parts) > 3 else ""
                syms.append((int(parts[0], 16), parts[2] + (f" {module}" if module else "")))
        syms.sort()
        self.addrs = [a for a, _ in syms]
        self.names = [n for _, n in syms]

    def name(self, pc: int) -> str:
        i = bisect.bisect_right(self.addrs, pc) - 1
        if i < 0:
            return hex(pc)
        sym, _, module = self.names[i].partition(" ")
        return f"{sym}+{pc - self.addrs[i]:#x}" + (f" {module}" if module else "")


@dataclass
class BarAccess:
    t_ns: int  # host CLOCK_MONOTONIC, like the device trace's clock
    gpu: int
    offset: int
    value: int
    size: int
    store: bool
    pc: int
    symbol: str


def bar_accesses(run_dir: Path) -> list[BarAccess]:
    """The CPU accesses to the GPUs' BAR0s recorded in a run directory."""
    run_dir = Path(run_dir)
    recs = load_cpu(run_dir / CPU_FILE)
    bars = json.loads((run_dir / BARS_FILE).read_text())
    syms_path = run_dir / SYMBOLS_FILE
    syms = Symbols(syms_path.read_text() if syms_path.exists() else "")
    out = []
    for bar in bars:
        base, size = bar["base"], bar["size"]
        sel = recs[(recs["phys"] >= base) & (recs["phys"] < base + size)]
        for r in sel.tolist():
            t_ns, pc, phys, value, nbytes, store, _, _ = r
            out.append(BarAccess(t_ns, bar["gpu"], phys - base, value, nbytes, bool(store),
                                 pc, syms.name(pc)))
    out.sort(key=lambda a: a.t_ns)
    return out
