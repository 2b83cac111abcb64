"""The fault unit: the fault buffer registers and the records it writes.

A command whose VA range faults hands its faults here (all of them, as one
batch, under the engine's lock); each becomes a 32-byte record at FAULT_PUT in
the driver's ring buffer, or is counted in FAULT_OVERFLOW when the buffer is
full. Without a valid buffer a fault cannot be reported, so the command fails
with FAULT_BUFFER instead of stalling forever (docs/hardware.md, Replayable
faults).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from . import hwdef as hw
from . import trace as tr
from .hwdef import Access, ErrorCode, SanCheck
from .inject import InjectKind, Injector
from .memory import DeviceError, GuestMemory
from .mmu import Fault
from .sanitizer import Sanitizer
from .trace import Recorder

_U32 = struct.Struct("<I")
_RECORD, _RECORD_SIZE, _ACCESS_OFFSET = (hw.FAULT_RECORD, hw.FAULT_RECORD_SIZE,
                                         hw.FAULT_ACCESS_OFFSET)
_FAULT_LAST, _FAULT_VALID = hw.FAULT_LAST, hw.FAULT_VALID


class FaultUnit:
    def __init__(self, mem: GuestMemory, trace: Recorder, sanitizer: Sanitizer,
                 clock: Callable[[], int], inject: Injector) -> None:
        self.mem = mem
        self.inject = inject
        self.trace = trace
        self.sanitizer = sanitizer
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        self.base = 0
        self.size = 0
        self.put = 0
        self.get = 0
        self.overflow = 0

    # ---- registers (the caller holds the engine's lock) ----------------------------

    def set_size(self, value: int) -> None:
        """FAULT_SIZE: a new buffer starts empty."""
        self.size, self.put, self.get = value, 0, 0

    def set_get(self, value: int) -> bool:
        """FAULT_GET; False (the write is dropped) when past FAULT_SIZE."""
        if self.size and value < self.size:
            self.get = value
            return True
        return False

    def usable(self) -> bool:
        size = self.size
        return bool(size) and not size & (size - 1) and size <= hw.MAX_FAULT_ENTRIES \
            and not self.base % hw.PAGE_SIZE

    # ---- reporting --------------------------------------------------------------------

    def record(self, queue: int, ctx: int, command: int, faults: list[Fault],
               access: Access) -> None:
        """Write one record per fault. Raises DeviceError(FAULT_BUFFER) when
        there is no valid buffer or it is not in guest RAM."""
        if not self.usable():
            raise DeviceError(ErrorCode.FAULT_BUFFER, self.base,
                              f"fault at {faults[0].va:#x} with no valid fault buffer")
        size, get = self.size, self.get % self.size
        kept: list[Fault] = []
        put = self.put
        injecting = self.inject.active
        for f in faults:
            if injecting and self.inject.hit(InjectKind.FAULT_BUFFER_FULL, queue, ctx, f.va):
                self.overflow += 1  # as if full: lost, and not the driver's doing
                continue
            if (put + 1) % size == get:
                self.overflow += 1
                self.sanitizer.report(
                    SanCheck.FAULT_OVERFLOW, queue, ctx, command, f.va,
                    f"fault at {f.va:#x} lost: the fault buffer ({size} entries) is full; "
                    f"PUT {put} GET {self.get}")
                continue
            kept.append(f)
            put = (put + 1) % size
        # the last record written gets FAULT_LAST: the batch is whole
        last = kept[-1] if kept else None
        access_bits, tracing, put = int(access), self.trace.on, self.put
        for f in kept:
            flags = access_bits | _FAULT_LAST if f is last else access_bits
            slot = self.base + put * _RECORD_SIZE
            if tracing:  # the fault, and the record's DMA write
                self.trace.emit(tr.FAULT, queue, ctx, command, flags=access_bits, va=f.va,
                                addr=slot, length=_RECORD_SIZE, aux=int(f.reason))
            try:
                view = self.mem.view(slot, _RECORD_SIZE, write=True)
            except DeviceError as e:
                raise DeviceError(ErrorCode.FAULT_BUFFER, e.addr,
                                  "fault buffer not in guest memory") from e
            _RECORD.pack_into(view, 0, f.va, self.clock(), ctx, flags, queue, int(f.reason))
            # VALID last: a driver that sees it sees the whole record
            # (x86-TSO on the host keeps the stores in order)
            _U32.pack_into(view, _ACCESS_OFFSET, flags | _FAULT_VALID)
            put = self.put = (put + 1) % size
