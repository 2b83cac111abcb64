"""Fuzzing everything a guest can write to the emulated GPU.

One input is a byte string. `run_input` builds a fresh in-process GPU with a
driver's usual set-up (a context and the kernel queue with rings, page
tables mapping guest pages, VRAM and a 2 MiB page, the fault buffer), then
decodes the bytes into operations through the entry points the vfio-user
callbacks use (`Gpu.bar0_access`, `Gpu.vram_bar_access`) and into the guest
RAM the device reads: ring slots, commands, PTEs and table pointers,
fault-buffer and status words. The same decoder serves atheris
(coverage-guided, `bench/bench_fuzz.py`) and a seeded random run (the test
suite).

After every operation and at the end of an input the invariants are checked
(`Finding` says which failed):
- no Python exception escapes the device;
- the engine caught no internal error, and the queues go idle;
- every error the device reports is a documented ErrorCode;
- guard bytes around guest RAM and a read-only DMA region never change;
- after DEVICE_RESET, a good COPY and FENCE work.
"""

from __future__ import annotations

import logging
import random
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..device import hwdef as hw
from ..device.gpu import Gpu
from ..device.hwdef import ErrorCode, Opcode, Pte, QReg, Reg
from ..device.memory import GuestMemory
from .userdrv import ModelMmio, UserDriver

BUS = 0x1_0000_0000  # guest RAM
ROM_BUS = 0x2_0000_0000  # a read-only DMA region (QEMU maps ROM that way)
RAM_SIZE = 1 << 20
VRAM_SIZE = 4 << 20
GUARD = hw.PAGE_SIZE
GUARD_BYTE, ROM_BYTE = 0xA5, 0x5A
CTX = 1  # the context the set-up maps for
K = hw.KERNEL_QUEUE
VA_SYS, VA_VRAM, VA_LARGE = 0x1000, 0x4000, 0x20_0000
DOCUMENTED = frozenset(int(c) for c in ErrorCode)
OPCODES = frozenset(int(o) for o in Opcode)
ENGINE_STEPS = 20_000  # more than the rings' commands: a queue still runnable after it hangs


class Finding(Exception):
    """An invariant the device broke, with the input that broke it."""

    def __init__(self, what: str, data: bytes = b"") -> None:
        super().__init__(what)
        self.what = what
        self.data = data


class Bytes:
    """Reads integers off the input; past its end everything is 0."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def int(self, n: int) -> int:
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return int.from_bytes(chunk, "little")

    def pick(self, seq):
        return seq[self.int(1) % len(seq)]


class Target:
    """A fresh GPU with a driver's set-up, guest RAM between guard pages."""

    def __init__(self) -> None:
        self.backing = np.full(GUARD + RAM_SIZE + GUARD, GUARD_BYTE, dtype=np.uint8)
        self.ram = self.backing[GUARD:GUARD + RAM_SIZE]
        self.ram[:] = 0
        self.rom = np.full(hw.PAGE_SIZE, ROM_BYTE, dtype=np.uint8)
        mem = GuestMemory()
        mem.add_array(BUS, self.ram)
        mem.add_array(ROM_BUS, self.rom, writable=False)
        self.irqs: Counter[int] = Counter()
        self.opcodes: Counter[str] = Counter()  # commands submitted, by opcode
        self.bus_master = True  # the PCI COMMAND register's Bus Master Enable
        self.gpu = Gpu(raise_irq=self._irq, mem=mem, vram_size=VRAM_SIZE,
                       bus_master=lambda: self.bus_master)
        self.setup()

    def _irq(self, vector: int) -> bool:
        self.irqs[vector] += 1
        return True

    def setup(self) -> None:
        """What a driver does after a reset: rings, tables, fault buffer."""
        drv = self.drv = UserDriver(ModelMmio(self.gpu), self.ram, BUS)
        drv.enable_faults(16)
        for q in (CTX, K):
            drv.queue(q)
        self.page = drv.alloc(hw.PAGE_SIZE)
        ptes = [drv.map(CTX, VA_SYS, self.page, Pte.READ | Pte.WRITE | Pte.ATOMIC),
                drv.map(CTX, VA_VRAM, 0x3000, Pte.READ | Pte.WRITE | Pte.VRAM),
                drv.map(CTX, VA_LARGE, hw.LARGE_PAGE_SIZE, Pte.READ | Pte.VRAM, large=True)]
        self.ptes = {slot: drv.u64(slot) for slot in ptes}  # as mapped
        self.status = drv.alloc(8, 8)
        # the guest RAM words worth corrupting: every ring slot's fields, PTEs
        # and the tables above them, fault records, the status word
        words = [drv.rings[q] + i * hw.COMMAND_SIZE + off for q in (CTX, K)
                 for i in range(4) for off in range(0, hw.COMMAND_SIZE, 8)]
        tables = [drv.pte_slot(CTX, VA_SYS, lvl) for lvl in (0, 1, 2, 3)]
        words += ptes + tables[1:]
        words += [drv.fault_buffer + i * 8 for i in range(8)] + [self.status]
        self.words = words
        # values that reach the edges: mapped and unmapped addresses, VAs, sizes
        self.values = [0, 1, 8, 0xFFF, hw.PAGE_SIZE, VA_SYS, VA_VRAM, VA_LARGE, VA_LARGE + 8,
                       self.page, self.page + hw.PAGE_SIZE - 8, BUS, BUS + RAM_SIZE - 8,
                       BUS + RAM_SIZE, BUS - 8, ROM_BUS, ROM_BUS + 8, VRAM_SIZE - 8, VRAM_SIZE,
                       hw.LARGE_PAGE_SIZE, 1 << 47, 1 << 48, 1 << 63, (1 << 64) - 1,
                       0xFFFF_FFFF, self.status,
                       *(t - t % hw.PAGE_SIZE for t in tables)]  # tables: loops

    # ---- operations ------------------------------------------------------------

    def value(self, b: Bytes) -> int:
        return b.pick(self.values) if b.int(1) < 192 else b.int(8)

    def op_register(self, b: Bytes) -> None:
        """A BAR0 access of any width at a register, a queue register or anywhere."""
        kind = b.int(1) % 3
        if kind == 0:
            offset = b.pick(list(Reg))
        elif kind == 1:
            offset = hw.queue_reg(b.int(1) % hw.NUM_QUEUES, b.pick(list(QReg)))
        else:
            offset = b.int(2) % hw.BAR0_SIZE
        count = b.pick([4, 4, 4, 8, 1, 2, 3, 16])
        count = min(count, hw.BAR0_SIZE - offset)  # libvfio-user checks the region's bounds
        if b.int(1) % 4 == 0:
            got = self.gpu.bar0_access(offset, None, count)
            if got is None or len(got) != count:
                raise Finding(f"BAR0 read of {count} bytes at {offset:#x} returned "
                              f"{None if got is None else len(got)}")
        else:
            value = self.value(b)
            if offset == Reg.DEVICE_RESET:
                value &= ~1  # a reset is the end-of-input check's job
            self.gpu.bar0_access(offset, value.to_bytes(16, "little")[:count], count)

    def op_vram_bar(self, b: Bytes) -> None:
        size = 1 << (VRAM_SIZE - 1).bit_length()  # the BAR is a power of two
        count = b.pick([1, 2, 4, 8, 64])
        offset = min(self.value(b) % size, size - count)
        if b.int(1) % 2:
            got = self.gpu.vram_bar_access(offset, None, count)
            if got is None or len(got) != count:
                raise Finding(f"VRAM BAR read of {count} bytes at {offset:#x}")
        else:
            self.gpu.vram_bar_access(offset, bytes(count), count)

    def op_command(self, b: Bytes) -> None:
        """A command, structured but with any field wrong, at the tail."""
        q = b.pick([CTX, K, CTX, K, 0, 15])
        opcode = b.pick(list(Opcode)) if b.int(1) < 224 else b.int(1)
        flags = hw.cmd_flags(src=b.pick(list(hw.Aperture)), dst=b.pick(list(hw.Aperture)),
                             irq=bool(b.int(1) & 1)) if b.int(1) < 200 else b.int(4)
        ctx = b.pick([CTX, 0, K, 15, 16, 1 << 31])
        args = tuple(self.value(b) for _ in range(5))
        self.opcodes[hw.opcode_name(opcode) if opcode in OPCODES else "unknown"] += 1
        self.drv.submit(q, opcode, args, flags=flags, ctx=ctx,
                        status=self.status if b.int(1) < 200 else self.value(b))

    def op_translate(self, b: Bytes) -> None:
        """A command through the context's page table after dropping its TLB,
        so that the walk reads whatever the tables hold now."""
        self.drv.submit(CTX, Opcode.TLB_INVALIDATE, (0, 0), ctx=CTX)
        opcode = b.pick([Opcode.READ, Opcode.WRITE, Opcode.ATOMIC, Opcode.COPY, Opcode.FILL])
        va = b.pick([VA_SYS, VA_VRAM, VA_LARGE, VA_LARGE + hw.PAGE_SIZE]) + (b.int(1) & 0xF8)
        sys_page, length = self.page, b.pick([8, 64, hw.PAGE_SIZE - 256])
        args = {Opcode.READ: (va, sys_page, length), Opcode.WRITE: (va, sys_page, length),
                Opcode.ATOMIC: (va, 1, 0), Opcode.COPY: (va, sys_page, length),
                Opcode.FILL: (va, length, 0x5A5A)}[opcode]
        flags = hw.cmd_flags(src=hw.Aperture.VA) if opcode == Opcode.COPY else \
            hw.cmd_flags(dst=hw.Aperture.VA) if opcode == Opcode.FILL else 0
        self.opcodes[opcode.name] += 1
        self.drv.submit(CTX, opcode, args, flags=flags, ctx=CTX, status=self.status)

    def op_memory(self, b: Bytes) -> None:
        """A guest write to RAM the device reads: a ring slot, a PTE, a table."""
        addr = b.pick(self.words)
        value = self.value(b) if b.int(1) < 160 else \
            (b.pick(self.values) & hw.PTE_ADDR_MASK) | (b.int(2) & ~hw.PTE_ADDR_MASK)
        self.drv.set_u64(addr, value & 0xFFFF_FFFF_FFFF_FFFF)

    def op_run(self, _b: Bytes) -> None:
        self.run()

    def op_bus_master(self, b: Bytes) -> None:
        """The guest clears or sets Bus Master Enable (PCI config space)."""
        self.bus_master = b.int(1) >= 32  # mostly back on: off halts everything

    def op_faults(self, b: Bytes) -> None:
        """Service faults the way a driver might, or wrongly: consume the
        records (whatever they say), maybe make the pages valid again, then
        replay or cancel a queue."""
        put = self.gpu.bar0_access(Reg.FAULT_PUT, None, 4)
        self.gpu.bar0_access(Reg.FAULT_GET, put if b.int(1) % 4 else bytes(4), 4)
        if b.int(1) % 2:
            for slot, pte in self.ptes.items():
                self.drv.set_u64(slot, pte)
        q = b.pick([CTX, K, 0])
        (self.drv.replay if b.int(1) % 2 else self.drv.cancel)(q)

    OPS: list[Callable[[Target, Bytes], None]] = [op_register, op_command, op_command,
                                                  op_memory, op_memory, op_run, op_faults,
                                                  op_vram_bar, op_bus_master, op_translate]

    # ---- invariants --------------------------------------------------------------

    def run(self) -> None:
        try:
            self.gpu.engine.run_until_idle(ENGINE_STEPS)
        except RuntimeError as e:
            raise Finding(f"the engine did not go idle: {e}") from None

    def check(self) -> None:
        e = self.gpu.engine
        if e.internal_errors:
            raise Finding(f"{e.internal_errors} internal error(s) in the engine")
        codes = [int(e.error)] + [int(q.error) for q in e.queues]
        bad = [c for c in codes if c not in DOCUMENTED]
        if bad:
            raise Finding(f"undocumented error code(s) {bad}")
        if (self.backing[:GUARD] != GUARD_BYTE).any() or \
                (self.backing[GUARD + RAM_SIZE:] != GUARD_BYTE).any():
            raise Finding("a write landed outside guest RAM")
        if (self.rom != ROM_BYTE).any():
            raise Finding("a write landed in a read-only DMA region")

    def recovers(self) -> None:
        """DEVICE_RESET, the driver's set-up again, then a COPY and a FENCE."""
        self.bus_master = True
        self.gpu.bar0_access(Reg.DEVICE_RESET, (1).to_bytes(4, "little"), 4)
        self.ram[:] = 0
        self.setup()
        src, dst = self.drv.alloc(hw.PAGE_SIZE), self.drv.alloc(hw.PAGE_SIZE)
        self.drv.view(src, hw.PAGE_SIZE)[:] = 0x3C
        self.drv.submit(K, Opcode.COPY, (src, dst, hw.PAGE_SIZE), status=self.status)
        addr, value = self.drv.fence(K)
        self.run()
        if self.drv.u64(self.status) != ErrorCode.NONE or self.drv.u64(addr) != value or \
                (self.drv.view(dst, hw.PAGE_SIZE) != 0x3C).any():
            raise Finding(f"after DEVICE_RESET a COPY and FENCE failed (status "
                          f"{self.drv.u64(self.status)})")


@dataclass
class Stats:
    inputs: int = 0
    operations: int = 0
    findings: list[Finding] = field(default_factory=list)
    # what the device answered: error codes in ERROR and queue ERROR registers
    codes: Counter[str] = field(default_factory=Counter)
    opcodes: Counter[str] = field(default_factory=Counter)


def run_input(data: bytes, stats: Stats | None = None) -> None:
    """Decode and run one input; raise Finding on a broken invariant."""
    stats = stats or Stats()
    b = Bytes(data)
    try:
        t = Target()
        while b.left > 0:
            Target.OPS[b.int(1) % len(Target.OPS)](t, b)
            stats.operations += 1
            t.check()
        t.run()
        t.check()
        e = t.gpu.engine
        for c in {int(e.error), *(int(q.error) for q in e.queues)}:
            stats.codes[ErrorCode(c).name] += 1
        stats.opcodes.update(t.opcodes)
        t.recovers()
        t.check()
    except Finding as f:
        f.data = data
        raise
    except Exception as ex:  # noqa: BLE001 - anything escaping the device is the finding
        where = traceback.extract_tb(ex.__traceback__)[-1]
        raise Finding(f"{type(ex).__name__}: {ex} at {where.filename}:{where.lineno}",
                      data) from ex
    finally:
        stats.inputs += 1


def quiet() -> None:
    """The device logs every error it reports: fuzzing makes millions."""
    logging.getLogger("hmmgpu").setLevel(logging.CRITICAL)


def seeded(seed: int, inputs: int, size: int = 256, stop_after: int = 10) -> Stats:
    """A random run, reproducible from its seed; stops after `stop_after` findings."""
    quiet()
    rng = random.Random(seed)
    stats = Stats()
    for _ in range(inputs):
        data = rng.randbytes(rng.randint(1, size))
        try:
            run_input(data, stats)
        except Finding as f:
            stats.findings.append(f)
            if len(stats.findings) >= stop_after:
                break
    return stats
