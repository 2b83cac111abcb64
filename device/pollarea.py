"""The driver's poll area (POLL_BASE): per queue a poll, a replay and a
watch word, u32s in guest RAM (docs/hardware.md, Poll words).

The engine reads these on every fault and completion, and on every look of
a replay watch, so the area's place in guest RAM is found once per base and
DMA map rather than per access. A base that leaves the area across two DMA
regions, or partly outside guest RAM, is served word by word through
GuestMemory (the same answers, slower). The window is used only by the
executing thread and the MMIO thread, which never run while libvfio-user
changes the DMA map (the engine is paused then), and a change of the map
moves GuestMemory.epoch, so no stale window is used after it.
"""

from __future__ import annotations

import struct

import numpy as np

from . import hwdef as hw
from .memory import DeviceError, GuestMemory

_U32 = struct.Struct("<I")


class PollArea:
    def __init__(self, mem: GuestMemory) -> None:
        self.mem = mem
        self._base = 0
        self._epoch = -1  # the DMA map the window was found in
        self._window: np.ndarray | None = None

    @property
    def base(self) -> int:
        """POLL_BASE; 0: the driver polls nothing."""
        return self._base

    @base.setter
    def base(self, value: int) -> None:
        self._base, self._epoch = value, -1

    def _find(self) -> np.ndarray | None:
        mem = self.mem
        if self._epoch != mem.epoch:
            try:
                self._window = mem.view(self._base, hw.POLL_AREA_SIZE, write=True)
            except DeviceError:
                self._window = None  # word by word
            self._epoch = mem.epoch
        return self._window

    def read(self, offset: int) -> int:
        """The word at byte `offset` of the area (hwdef's *_WORDS_OFFSET + 4q);
        DeviceError when it is not in guest RAM."""
        window = self._find()
        if window is not None:
            return _U32.unpack_from(window, offset)[0]
        return self.mem.read_u32(self._base + offset)

    def write(self, offset: int, value: int) -> None:
        """Store the word at byte `offset`; DeviceError when it is not in
        writable guest RAM."""
        window = self._find()
        if window is not None:
            _U32.pack_into(window, offset, value & 0xFFFF_FFFF)
        else:
            self.mem.write_u32(self._base + offset, value)
