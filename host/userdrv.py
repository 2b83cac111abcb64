"""A minimal driver for the emulated GPU in Python, for tests and benchmarks.

It plays the guest driver's part against any register interface (the model
in-process, or the real server over vfio-user) and any guest RAM it can write
(a numpy array, or the memfd shared with the server): it allocates pages,
builds page tables, writes commands into rings, rings doorbells and reads the
fault buffer. It follows docs/hardware.md and nothing else, so it doubles as a
check that the manual is enough to drive the device.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..device import hwdef as hw
from ..device.hwdef import Pte, QReg, Reg


class Mmio(Protocol):
    def read32(self, offset: int) -> int: ...
    def write32(self, offset: int, value: int) -> None: ...


class ModelMmio:
    """Registers of an in-process Gpu model."""

    def __init__(self, gpu) -> None:
        self.gpu = gpu

    def read32(self, offset: int) -> int:
        return self.gpu.mmio_read(offset, 4)

    def write32(self, offset: int, value: int) -> None:
        self.gpu.mmio_write(offset, 4, value)


class ClientMmio:
    """BAR0 of a device server reached through a VfioUserClient."""

    def __init__(self, client) -> None:
        self.client = client

    def read32(self, offset: int) -> int:
        return self.client.read32(0, offset)

    def write32(self, offset: int, value: int) -> None:
        self.client.write32(0, offset, value)


@dataclass
class FaultRecord:
    va: int
    timestamp: int
    ctx: int
    access: hw.Access
    queue: int
    reason: hw.FaultReason
    last: bool = False  # FAULT_LAST: the last record of its command's batch


class UserDriver:
    RING_ENTRIES = 256
    FAULT_ENTRIES = 256

    def __init__(self, mmio: Mmio, ram: np.ndarray, ram_bus: int) -> None:
        """`ram` is guest memory the driver may use, at bus address `ram_bus`."""
        self.mmio = mmio
        self.ram = ram.reshape(-1).view(np.uint8)
        self.ram_bus = ram_bus
        self._next = 0
        self.roots: dict[int, int] = {}
        self.tails: dict[int, int] = {}
        self.rings: dict[int, int] = {}
        self.fault_buffer = 0
        self.fault_get = 0

    # ---- memory ------------------------------------------------------------------

    def alloc(self, size: int, align: int = hw.PAGE_SIZE) -> int:
        """Bus address of `size` fresh zeroed bytes."""
        start = -(-self._next // align) * align
        if start + size > len(self.ram):
            raise MemoryError("user driver out of guest memory")
        self._next = start + size
        self.ram[start:start + size] = 0
        return self.ram_bus + start

    def view(self, bus: int, size: int) -> np.ndarray:
        off = bus - self.ram_bus
        return self.ram[off:off + size]

    def write(self, bus: int, data: bytes) -> None:
        self.view(bus, len(data))[:] = np.frombuffer(data, dtype=np.uint8)

    def read(self, bus: int, size: int) -> bytes:
        return self.view(bus, size).tobytes()

    def u64(self, bus: int) -> int:
        return int.from_bytes(self.read(bus, 8), "little")

    def set_u64(self, bus: int, value: int) -> None:
        self.write(bus, value.to_bytes(8, "little"))

    # ---- page tables ---------------------------------------------------------------

    def context(self, ctx: int) -> int:
        """Create ctx's root table (once) and point the queue's PT_BASE at it."""
        if ctx not in self.roots:
            root = self.alloc(hw.PAGE_SIZE)
            self.roots[ctx] = root
            self.mmio.write32(hw.queue_reg(ctx, QReg.PT_BASE_LO), root & 0xFFFFFFFF)
            self.mmio.write32(hw.queue_reg(ctx, QReg.PT_BASE_HI), root >> 32)
        return self.roots[ctx]

    def pte_slot(self, ctx: int, va: int, level: int) -> int:
        """Bus address of the entry for `va` at `level`, creating tables above."""
        table = self.context(ctx)
        for lvl in range(3, level, -1):
            slot = table + hw.pt_index(va, lvl) * 8
            entry = self.u64(slot)
            if not entry & Pte.VALID:
                entry = self.alloc(hw.PAGE_SIZE) | Pte.VALID
                self.set_u64(slot, entry)
            table = entry & hw.PTE_ADDR_MASK
        return table + hw.pt_index(va, level) * 8

    def map(self, ctx: int, va: int, addr: int, flags: Pte, large: bool = False) -> int:
        """Map one 4 KiB (or 2 MiB) page; returns the PTE's bus address."""
        slot = self.pte_slot(ctx, va, 1 if large else 0)
        self.set_u64(slot, addr | flags | Pte.VALID | (Pte.LARGE if large else 0))
        return slot

    def unmap(self, ctx: int, va: int, large: bool = False) -> None:
        self.set_u64(self.pte_slot(ctx, va, 1 if large else 0), 0)

    # ---- queues and commands ----------------------------------------------------------

    def queue(self, q: int) -> int:
        if q not in self.rings:
            ring = self.alloc(self.RING_ENTRIES * hw.COMMAND_SIZE)
            self.rings[q] = ring
            self.tails[q] = 0
            self.mmio.write32(hw.queue_reg(q, QReg.RING_BASE_LO), ring & 0xFFFFFFFF)
            self.mmio.write32(hw.queue_reg(q, QReg.RING_BASE_HI), ring >> 32)
            self.mmio.write32(hw.queue_reg(q, QReg.RING_SIZE), self.RING_ENTRIES)
        return self.rings[q]

    def submit(self, q: int, opcode: int, args: tuple[int, ...] = (), flags: int = 0,
               ctx: int = 0, status: int = 0, ring_doorbell: bool = True) -> int:
        """Write one command at the queue's tail; returns its slot index."""
        ring = self.queue(q)
        slot = self.tails[q]
        a = (tuple(args) + (0,) * 5)[:5]
        self.write(ring + slot * hw.COMMAND_SIZE,
                   hw.COMMAND.pack(int(opcode), flags, ctx, 0, *a, status))
        self.tails[q] = (slot + 1) % self.RING_ENTRIES
        if ring_doorbell:
            self.doorbell(q)
        return slot

    def doorbell(self, q: int) -> None:
        self.mmio.write32(hw.queue_reg(q, QReg.TAIL), self.tails[q])

    def fence(self, q: int, irq: bool = False, ctx: int = 0) -> tuple[int, int]:
        """Submit a FENCE; returns (address, value) to wait for."""
        addr = self.alloc(8, 8)
        value = int(time.monotonic_ns()) & 0xFFFF_FFFF_FFFF or 1
        self.submit(q, hw.Opcode.FENCE, (addr, value), flags=hw.cmd_flags(irq=irq), ctx=ctx)
        return addr, value

    def wait(self, addr: int, value: int, timeout: float = 10.0) -> None:
        """Poll a fence: yield the CPU at first (sleep(0) also lets an in-process
        engine thread take the GIL), then back off."""
        deadline = time.monotonic() + timeout
        spins = 0
        while self.u64(addr) != value:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fence at {addr:#x} did not reach {value:#x}")
            spins += 1
            time.sleep(0 if spins < 2000 else 0.0002)

    def idle(self, q: int, timeout: float = 10.0) -> None:
        """Wait until HEAD reaches TAIL or the queue stalls or halts."""
        deadline = time.monotonic() + timeout
        while True:
            head = self.mmio.read32(hw.queue_reg(q, QReg.HEAD))
            status = hw.QueueStatus(self.mmio.read32(hw.queue_reg(q, QReg.STATUS)))
            if head == self.tails[q] or status & (hw.QueueStatus.STALLED |
                                                  hw.QueueStatus.HALTED):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"queue {q} still busy (head {head}, status {status!r})")
            time.sleep(0.0005)

    # ---- faults ---------------------------------------------------------------------------

    def enable_faults(self, entries: int = FAULT_ENTRIES) -> None:
        self.fault_buffer = self.alloc(entries * hw.FAULT_RECORD_SIZE)
        self.fault_entries = entries
        self.mmio.write32(Reg.FAULT_BASE_LO, self.fault_buffer & 0xFFFFFFFF)
        self.mmio.write32(Reg.FAULT_BASE_HI, self.fault_buffer >> 32)
        self.mmio.write32(Reg.FAULT_SIZE, entries)
        self.fault_get = 0

    def faults(self) -> list[FaultRecord]:
        """Drain the fault buffer."""
        put = self.mmio.read32(Reg.FAULT_PUT)
        out = []
        while self.fault_get != put:
            raw = self.read(self.fault_buffer + self.fault_get * hw.FAULT_RECORD_SIZE,
                            hw.FAULT_RECORD_SIZE)
            va, ts, ctx, access, queue, reason = hw.FAULT_RECORD.unpack(raw)
            if not access & hw.FAULT_VALID:
                raise AssertionError(f"fault record {self.fault_get} below FAULT_PUT is not VALID")
            kind = hw.Access(access & ~(hw.FAULT_VALID | hw.FAULT_LAST))
            out.append(FaultRecord(va, ts, ctx, kind, queue, hw.FaultReason(reason),
                                   bool(access & hw.FAULT_LAST)))
            self.fault_get = (self.fault_get + 1) % self.fault_entries
        self.mmio.write32(Reg.FAULT_GET, self.fault_get)
        return out

    def replay(self, q: int) -> None:
        self.mmio.write32(hw.queue_reg(q, QReg.CONTROL), hw.QueueControl.REPLAY)

    def cancel(self, q: int) -> None:
        self.mmio.write32(hw.queue_reg(q, QReg.CONTROL), hw.QueueControl.CANCEL)

    def qreg(self, q: int, reg: QReg) -> int:
        return self.mmio.read32(hw.queue_reg(q, reg))
