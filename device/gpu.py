"""The emulated GPU's register file: BAR0 decoding on top of the engine.

Pure Python, no libvfio-user: the server (server.py) wires `mmio_read` /
`mmio_write` to BAR0 and gives the model guest memory, a `raise_irq` function
and a Bus Master probe, so tests can drive the whole device in-process. The
register semantics are those of docs/hardware.md; state lives in the engine
and is protected by the engine's lock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from . import hwdef as hw
from . import trace as tr
from .engine import Engine
from .hwdef import QReg, Reg
from .memory import GuestMemory, Vram

log = logging.getLogger("hmmgpu.device")

QUEUE_END = hw.QUEUE_BASE + hw.NUM_QUEUES * hw.QUEUE_STRIDE


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
                 bus_master: Callable[[], bool] = lambda: True) -> None:
        # raise_irq(vector) -> True when the interrupt was delivered
        self._deliver = raise_irq or (lambda _v: False)
        self.mem = mem or GuestMemory()
        self.vram = Vram(vram_size)
        self.engine = Engine(self.mem, self.vram, self.raise_irq, bus_master)
        self.lock = self.engine.lock
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
        delivered = self._deliver(vector)
        if self.engine.trace.on:
            self.engine.trace.emit(tr.IRQ, flags=int(delivered), aux=vector)
        if not delivered:
            # MSI-X not enabled by the guest: a real device would leave the PBA
            # bit pending; we count it so tests can see it.
            with self.lock:
                self.irq_dropped += 1

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
        if size != 4 or offset % 4:
            return self._bad_access("read", offset, size)
        with self.lock:
            if hw.QUEUE_BASE <= offset < QUEUE_END:
                return self._queue_read(*divmod(offset - hw.QUEUE_BASE, hw.QUEUE_STRIDE))
            e = self.engine
            match offset:
                case Reg.ID:
                    return hw.ID_MAGIC
                case Reg.VERSION:
                    return (hw.VERSION_MAJOR << 16) | hw.VERSION_MINOR
                case Reg.SCRATCH:
                    return self.scratch
                case Reg.IRQ_COUNT:
                    return _lo(self.irq_count)
                case Reg.ERROR:
                    return int(e.error)
                case Reg.ERROR_QUEUE:
                    return e.error_queue
                case Reg.ERROR_COUNT:
                    return _lo(e.error_count)
                case Reg.ERROR_ADDR_LO:
                    return _lo(e.error_addr)
                case Reg.ERROR_ADDR_HI:
                    return _hi(e.error_addr)
                case Reg.VRAM_SIZE_LO:
                    return _lo(self.vram.size)
                case Reg.VRAM_SIZE_HI:
                    return _hi(self.vram.size)
                case Reg.NUM_CONTEXTS:
                    return hw.NUM_CONTEXTS
                case Reg.INTR_STATUS:
                    return int(e.intr_status)
                case Reg.FAULT_BASE_LO:
                    return _lo(e.fault_base)
                case Reg.FAULT_BASE_HI:
                    return _hi(e.fault_base)
                case Reg.FAULT_SIZE:
                    return e.fault_size
                case Reg.FAULT_PUT:
                    return e.fault_put
                case Reg.FAULT_GET:
                    return e.fault_get
                case Reg.FAULT_OVERFLOW:
                    return _lo(e.fault_overflow)
                case Reg.TIMESTAMP_LO:
                    now = e.now()
                    self.timestamp_latch = _hi(now)
                    return _lo(now)
                case Reg.TIMESTAMP_HI:
                    return self.timestamp_latch
                case Reg.SAN_REPORTS:
                    return _lo(e.sanitizer.count - self.san_reports_base)
                case _:
                    return 0  # undefined and write-only offsets read as zero

    def _mmio_write(self, offset: int, size: int, value: int) -> None:
        if size != 4 or offset % 4:
            self._bad_access("write", offset, size)
            return
        with self.lock:
            if hw.QUEUE_BASE <= offset < QUEUE_END:
                self._queue_write(*divmod(offset - hw.QUEUE_BASE, hw.QUEUE_STRIDE), value)
                return
            e = self.engine
            match offset:
                case Reg.SCRATCH:
                    self.scratch = value
                case Reg.TEST_DOORBELL:
                    if value < hw.IRQ_VECTORS:
                        self.raise_irq(value)
                    else:
                        e.record_error(hw.ErrorCode.BAD_VECTOR, None, value,
                                       "TEST_DOORBELL vector")
                case Reg.ERROR:
                    if value == 0:
                        e.error = hw.ErrorCode.NONE
                case Reg.INTR_STATUS:
                    e.intr_status &= ~hw.IntrStatus(value & 0x7)
                case Reg.DEVICE_RESET:
                    if value & 1:
                        self.reset()
                case Reg.SAN_VRAM:
                    e.sanitizer.vram_write(value)
                case Reg.FAULT_BASE_LO:
                    e.fault_base = _set_lo(e.fault_base, value)
                case Reg.FAULT_BASE_HI:
                    e.fault_base = _set_hi(e.fault_base, value)
                case Reg.FAULT_SIZE:
                    e.fault_size, e.fault_put, e.fault_get = value, 0, 0
                case Reg.FAULT_GET:
                    if e.fault_size and value < e.fault_size:
                        e.fault_get = value
                    else:
                        e.record_error(hw.ErrorCode.BAD_REGISTER, None, value,
                                       f"FAULT_GET past FAULT_SIZE {e.fault_size}")
                case _:
                    pass  # writes to read-only or undefined registers are ignored

    def _queue_read(self, q: int, reg: int) -> int:
        queue = self.engine.queues[q]
        match reg:
            case QReg.RING_BASE_LO:
                return _lo(queue.ring_base)
            case QReg.RING_BASE_HI:
                return _hi(queue.ring_base)
            case QReg.RING_SIZE:
                return queue.ring_size
            case QReg.HEAD:
                return queue.head
            case QReg.TAIL:
                return queue.tail
            case QReg.STATUS:
                return queue.status_register
            case QReg.ERROR:
                return int(queue.error)
            case QReg.PT_BASE_LO:
                return _lo(queue.pt_base)
            case QReg.PT_BASE_HI:
                return _hi(queue.pt_base)
            case QReg.COMPLETED:
                return queue.completed
            case _:
                return 0

    def _queue_write(self, q: int, reg: int, value: int) -> None:
        queue = self.engine.queues[q]
        match reg:
            case QReg.RING_BASE_LO:
                queue.ring_base = _set_lo(queue.ring_base, value)
            case QReg.RING_BASE_HI:
                queue.ring_base = _set_hi(queue.ring_base, value)
            case QReg.RING_SIZE:
                queue.ring_size = value
            case QReg.TAIL:
                self.engine.write_tail(q, value)
            case QReg.CONTROL:
                self.engine.control(q, value)
            case QReg.PT_BASE_LO if q != hw.KERNEL_QUEUE:
                queue.pt_base = _set_lo(queue.pt_base, value)
            case QReg.PT_BASE_HI if q != hw.KERNEL_QUEUE:
                queue.pt_base = _set_hi(queue.pt_base, value)
            case _:
                pass

    def _bad_access(self, what: str, offset: int, size: int) -> int:
        self.engine.record_error(hw.ErrorCode.BAD_REGISTER, None, offset,
                                 f"{what} of {size} bytes")
        return 0
