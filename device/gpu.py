"""The emulated GPU's register file: BAR0 decoding on top of the engine.

Pure Python, no libvfio-user: the server (server.py) wires `mmio_read` /
`mmio_write` to BAR0 and gives the model guest memory, a `raise_irq` function
and a Bus Master probe, so tests can drive the whole device in-process. The
register semantics are those of docs/hardware.md; each register is a reader
and/or writer in a table checked against hwdef at start-up. State lives with
the unit that uses it (engine, fault unit, queues, sanitizer), protected by
the engine's lock.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Callable

from . import hwdef as hw
from . import trace as tr
from .engine import Engine
from .hwdef import QReg, Reg
from .inject import InjectKind
from .memory import Fabric, GuestMemory, Vram
from .queue import Queue

log = logging.getLogger("hmmgpu.device")

QUEUE_END = hw.QUEUE_BASE + hw.NUM_QUEUES * hw.QUEUE_STRIDE
# the kernel queue has no address space of its own: no page-table root
_CONTEXT_ONLY = {int(QReg.PT_BASE_LO), int(QReg.PT_BASE_HI)}


def _lo(v: int) -> int:
    return v & 0xFFFFFFFF


def _hi(v: int) -> int:
    return (v >> 32) & 0xFFFFFFFF


def _set_lo(v: int, lo: int) -> int:
    return (v & ~0xFFFFFFFF) | lo


def _set_hi(v: int, hi: int) -> int:
    return (v & 0xFFFFFFFF) | (hi << 32)


class Gpu:
    def __init__(self, raise_irq: Callable[[int], bool] | None = None,
                 mem: GuestMemory | None = None, vram_size: int = hw.DEFAULT_VRAM_SIZE,
                 bus_master: Callable[[], bool] = lambda: True, vram_bar: bool = True,
                 vram_path: str | None = None, fabric: Fabric | None = None) -> None:
        # raise_irq(vector) -> True when the interrupt was delivered
        self._deliver = raise_irq or (lambda _v: False)
        self.mem = mem or GuestMemory()
        self.vram = Vram(vram_size, vram_path)
        self.caps = hw.Caps.VRAM_BAR if vram_bar else hw.Caps(0)
        self.fabric = fabric or Fabric()
        self.engine = Engine(self.mem, self.vram, self.raise_irq, bus_master, self.fabric)
        self.lock = self.engine.lock
        self._register_file()
        self.reset()

    def reset(self) -> None:
        """Return every register to its documented reset value."""
        with self.lock:
            self.scratch = 0
            self.irq_count = 0
            self.irq_dropped = 0
            self.timestamp_latch = 0
            # the report list outlives a reset (the harness reads it later); the
            # register counts from the reset, as every register restarts at 0
            self.san_reports_base = self.engine.sanitizer.count
            self.engine.reset()

    # ---- interrupts ------------------------------------------------------

    def raise_irq(self, vector: int) -> None:
        with self.lock:
            self.irq_count += 1
        inject, where = self.engine.inject, self.engine.where()[:2]
        if inject.active and (late := inject.hit(InjectKind.IRQ_DELAY, *where, vector=vector)):
            timer = threading.Timer(late.delay_us / 1e6, self._deliver_irq, (vector,))
            timer.daemon = True
            timer.start()
            return
        lost = inject.active and inject.hit(InjectKind.IRQ_LOST, *where, vector=vector)
        self._deliver_irq(vector, lost=bool(lost))

    def _deliver_irq(self, vector: int, lost: bool = False) -> None:
        delivered = not lost and self._deliver(vector)
        if self.engine.trace.on:
            self.engine.trace.emit(tr.IRQ, flags=int(delivered), aux=vector)
        if not delivered:
            # MSI-X not enabled by the guest: a real device would leave the PBA
            # bit pending; we count it so tests can see it.
            with self.lock:
                self.irq_dropped += 1

    # ---- BAR accesses, as the vfio-user region callbacks deliver them ------------

    def bar0_access(self, offset: int, data: bytes | None, count: int) -> bytes | None:
        """One BAR0 access of `count` bytes: a read (data None) returns
        exactly `count` bytes. An aligned 64-bit access is two registers."""
        if data is None:
            if count == 8 and offset % 8 == 0:
                lo = self.mmio_read(offset, 4)
                hi = self.mmio_read(offset + 4, 4)
                return struct.pack("<II", lo, hi)
            value = self.mmio_read(offset, count)  # any other width reads as 0
            return value.to_bytes(max(count, 8), "little")[:count]
        if count == 8 and offset % 8 == 0:
            lo, hi = struct.unpack("<II", data)
            self.mmio_write(offset, 4, lo)
            self.mmio_write(offset + 4, 4, hi)
        else:
            self.mmio_write(offset, count, int.from_bytes(data, "little"))
        return None

    def vram_bar_access(self, offset: int, data: bytes | None, count: int) -> bytes | None:
        """The VRAM BAR for a client that does not map it: the BAR's tail past
        the VRAM (it is a power of two) reads 0 and ignores writes."""
        vram = self.vram
        inside = max(0, min(count, vram.size - offset))
        if data is None:
            return vram.array[offset:offset + inside].tobytes() + bytes(count - inside)
        vram.array[offset:offset + inside] = memoryview(data)[:inside]
        return None

    # ---- MMIO --------------------------------------------------------------

    def mmio_read(self, offset: int, size: int) -> int:
        value = self._mmio_read(offset, size)
        if self.engine.trace.on:
            self.engine.trace.emit(tr.MMIO_READ, addr=offset, va=value, length=size)
        return value

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        if self.engine.trace.on:
            self.engine.trace.emit(tr.MMIO_WRITE, addr=offset, va=value, length=size)
        self._mmio_write(offset, size, value)

    def _mmio_read(self, offset: int, size: int) -> int:
        if self.engine.inject.gone:
            return (1 << 8 * min(size, 8)) - 1  # a device off the bus reads all-ones
        if size != 4 or offset % 4:
            return self._bad_access("read", offset, size)
        with self.lock:
            if hw.QUEUE_BASE <= offset < QUEUE_END:
                q, reg = divmod(offset - hw.QUEUE_BASE, hw.QUEUE_STRIDE)
                read = self._queue_readers.get(reg)
                return read(self.engine.queues[q]) if read else 0
            read = self._readers.get(offset)
            return read() if read else 0  # undefined and write-only offsets read as zero

    def _mmio_write(self, offset: int, size: int, value: int) -> None:
        if self.engine.inject.gone:
            return
        if size != 4 or offset % 4:
            self._bad_access("write", offset, size)
            return
        with self.lock:
            if hw.QUEUE_BASE <= offset < QUEUE_END:
                q, reg = divmod(offset - hw.QUEUE_BASE, hw.QUEUE_STRIDE)
                write_q = self._queue_writers.get(reg)
                if write_q and (q != hw.KERNEL_QUEUE or reg not in _CONTEXT_ONLY):
                    write_q(q, self.engine.queues[q], value)
                return
            write = self._writers.get(offset)
            if write:
                write(value)  # writes to read-only or undefined registers are ignored

    # ---- the register file ----------------------------------------------------------

    def _register_file(self) -> None:
        """Reader and writer of every register, checked against hwdef.REGISTERS
        (and QReg) so that a register defined there cannot go unimplemented."""
        e, f = self.engine, self.engine.faults

        def timestamp_lo() -> int:
            now = e.now()
            self.timestamp_latch = _hi(now)
            return _lo(now)

        def set_scratch(v: int) -> None:
            self.scratch = v

        def set_error(v: int) -> None:
            if v == 0:
                e.error = hw.ErrorCode.NONE

        def clear_intr(v: int) -> None:
            e.intr_status &= ~(v & 0x7)

        def set_fault_base_lo(v: int) -> None:
            f.base = _set_lo(f.base, v)

        def set_fault_base_hi(v: int) -> None:
            f.base = _set_hi(f.base, v)

        def set_poll_base_lo(v: int) -> None:
            e.poll.base = _set_lo(e.poll.base, v & ~3)  # 4-byte aligned

        def set_poll_base_hi(v: int) -> None:
            e.poll.base = _set_hi(e.poll.base, v)

        def set_fault_get(v: int) -> None:
            if not f.set_get(v):
                e.record_error(hw.ErrorCode.BAD_REGISTER, None, v,
                               f"FAULT_GET past FAULT_SIZE {f.size}")

        self._readers: dict[int, Callable[[], int]] = {
            Reg.ID: lambda: hw.ID_MAGIC,
            Reg.VERSION: lambda: (hw.VERSION_MAJOR << 16) | hw.VERSION_MINOR,
            Reg.SCRATCH: lambda: self.scratch,
            Reg.IRQ_COUNT: lambda: _lo(self.irq_count),
            Reg.ERROR: lambda: int(e.error),
            Reg.ERROR_QUEUE: lambda: e.error_queue,
            Reg.ERROR_COUNT: lambda: _lo(e.error_count),
            Reg.ERROR_ADDR_LO: lambda: _lo(e.error_addr),
            Reg.ERROR_ADDR_HI: lambda: _hi(e.error_addr),
            Reg.VRAM_SIZE_LO: lambda: _lo(self.vram.size),
            Reg.VRAM_SIZE_HI: lambda: _hi(self.vram.size),
            Reg.NUM_CONTEXTS: lambda: hw.NUM_CONTEXTS,
            Reg.INTR_STATUS: lambda: int(e.intr_status),
            Reg.FAULT_BASE_LO: lambda: _lo(f.base),
            Reg.FAULT_BASE_HI: lambda: _hi(f.base),
            Reg.FAULT_SIZE: lambda: f.size,
            Reg.FAULT_PUT: lambda: f.put,
            Reg.FAULT_GET: lambda: f.get,
            Reg.FAULT_OVERFLOW: lambda: _lo(f.overflow),
            Reg.TIMESTAMP_LO: timestamp_lo,
            Reg.TIMESTAMP_HI: lambda: self.timestamp_latch,
            Reg.SAN_REPORTS: lambda: _lo(e.sanitizer.count - self.san_reports_base),
            Reg.CAPS: lambda: int(self.caps),
            Reg.FABRIC_ID: lambda: self.fabric.own_id,
            Reg.PEER_LINKS: lambda: self.fabric.links,
            Reg.POLL_BASE_LO: lambda: _lo(e.poll.base),
            Reg.POLL_BASE_HI: lambda: _hi(e.poll.base),
            Reg.IRQ_HELD: lambda: _lo(e.irq_held),
            Reg.REPLAYS_WATCHED: lambda: _lo(e.replays_watched),
        }
        self._writers: dict[int, Callable[[int], None]] = {
            Reg.SCRATCH: set_scratch,
            Reg.TEST_DOORBELL: self._test_doorbell,
            Reg.ERROR: set_error,
            Reg.INTR_STATUS: clear_intr,
            Reg.DEVICE_RESET: lambda v: self.reset() if v & 1 else None,
            Reg.SAN_VRAM: e.sanitizer.vram_write,
            Reg.FAULT_BASE_LO: set_fault_base_lo,
            Reg.FAULT_BASE_HI: set_fault_base_hi,
            Reg.FAULT_SIZE: f.set_size,
            Reg.FAULT_GET: set_fault_get,
            Reg.POLL_BASE_LO: set_poll_base_lo,
            Reg.POLL_BASE_HI: set_poll_base_hi,
        }
        for r in hw.REGISTERS:
            assert (r.reg in self._readers) == ("R" in r.access), f"{r.reg.name} read"
            assert (r.reg in self._writers) == (r.access != "RO"), f"{r.reg.name} write"

        self._queue_readers: dict[int, Callable[[Queue], int]] = {
            QReg.RING_BASE_LO: lambda q: _lo(q.ring_base),
            QReg.RING_BASE_HI: lambda q: _hi(q.ring_base),
            QReg.RING_SIZE: lambda q: q.ring_size,
            QReg.HEAD: lambda q: q.head,
            QReg.TAIL: lambda q: q.tail,
            QReg.STATUS: lambda q: q.status_register,
            QReg.ERROR: lambda q: int(q.error),
            QReg.PT_BASE_LO: lambda q: _lo(q.pt_base),
            QReg.PT_BASE_HI: lambda q: _hi(q.pt_base),
            QReg.COMPLETED: lambda q: q.completed,
        }

        def ring_base_lo(_i: int, q: Queue, v: int) -> None:
            q.ring_base = _set_lo(q.ring_base, v)

        def ring_base_hi(_i: int, q: Queue, v: int) -> None:
            q.ring_base = _set_hi(q.ring_base, v)

        def ring_size(_i: int, q: Queue, v: int) -> None:
            q.ring_size = v

        def pt_base_lo(_i: int, q: Queue, v: int) -> None:
            q.pt_base = _set_lo(q.pt_base, v)

        def pt_base_hi(_i: int, q: Queue, v: int) -> None:
            q.pt_base = _set_hi(q.pt_base, v)

        self._queue_writers: dict[int, Callable[[int, Queue, int], None]] = {
            QReg.RING_BASE_LO: ring_base_lo,
            QReg.RING_BASE_HI: ring_base_hi,
            QReg.RING_SIZE: ring_size,
            QReg.TAIL: lambda i, _q, v: e.write_tail(i, v),
            QReg.CONTROL: lambda i, _q, v: e.control(i, v),
            QReg.PT_BASE_LO: pt_base_lo,
            QReg.PT_BASE_HI: pt_base_hi,
        }
        assert set(self._queue_readers) | set(self._queue_writers) == set(hw.QReg)

    def _test_doorbell(self, value: int) -> None:
        if value < hw.IRQ_VECTORS:
            self.raise_irq(value)
        else:
            self.engine.record_error(hw.ErrorCode.BAD_VECTOR, None, value,
                                     "TEST_DOORBELL vector")

    def _bad_access(self, what: str, offset: int, size: int) -> int:
        self.engine.record_error(hw.ErrorCode.BAD_REGISTER, None, offset,
                                 f"{what} of {size} bytes")
        return 0
