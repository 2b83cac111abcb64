"""The emulated GPU's device model: BAR0 register file and interrupts.

Pure Python, no libvfio-user: the server (server.py) wires `mmio_read` /
`mmio_write` to BAR0 and gives the model a `raise_irq` function, so tests can
drive the model in-process. All state is protected by `lock` because MMIO
arrives on the vfio-user thread while device work may run elsewhere.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from . import hwdef as hw

log = logging.getLogger("hmmgpu.device")


class Gpu:
    def __init__(self, raise_irq: Callable[[int], bool] | None = None) -> None:
        # raise_irq(vector) -> True when the interrupt was delivered
        self._raise_irq = raise_irq or (lambda _v: False)
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Return every register to its documented reset value."""
        with self.lock:
            self.scratch = 0
            self.irq_count = 0
            self.irq_dropped = 0
            self.error = hw.ErrorCode.NONE

    # ---- interrupts ------------------------------------------------------

    def raise_irq(self, vector: int) -> None:
        self.irq_count += 1
        if not self._raise_irq(vector):
            # MSI-X not enabled by the guest yet: a real device would leave the
            # PBA bit pending; we count it so tests can see it.
            self.irq_dropped += 1

    def set_error(self, code: hw.ErrorCode) -> None:
        self.error = code
        self.raise_irq(hw.IrqVector.ERROR)

    # ---- MMIO --------------------------------------------------------------

    def mmio_read(self, offset: int, size: int) -> int:
        if size != 4 or offset % 4:
            return self._bad_access("read", offset, size)
        with self.lock:
            match offset:
                case hw.Reg.ID:
                    return hw.ID_MAGIC
                case hw.Reg.VERSION:
                    return (hw.VERSION_MAJOR << 16) | hw.VERSION_MINOR
                case hw.Reg.SCRATCH:
                    return self.scratch
                case hw.Reg.IRQ_COUNT:
                    return self.irq_count & 0xFFFFFFFF
                case hw.Reg.ERROR:
                    return int(self.error)
                case _:
                    return 0  # undefined and write-only offsets read as zero

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        if size != 4 or offset % 4:
            self._bad_access("write", offset, size)
            return
        with self.lock:
            match offset:
                case hw.Reg.SCRATCH:
                    self.scratch = value
                case hw.Reg.TEST_DOORBELL:
                    if value < hw.IRQ_VECTORS:
                        self.raise_irq(value)
                    else:
                        self.set_error(hw.ErrorCode.BAD_VECTOR)
                case hw.Reg.ERROR:
                    if value == 0:
                        self.error = hw.ErrorCode.NONE
                case _:
                    pass  # writes to read-only or undefined registers are ignored

    def _bad_access(self, what: str, offset: int, size: int) -> int:
        log.warning("bad %s of %d bytes at BAR0+%#x", what, size, offset)
        with self.lock:
            self.set_error(hw.ErrorCode.BAD_REGISTER)
        return 0
