"""A command queue's registers and a command as read from its ring."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import hwdef as hw
from .hwdef import ErrorCode, QueueStatus

_STALLED_OR_HALTED = int(QueueStatus.STALLED | QueueStatus.HALTED)
_RUNNING = int(QueueStatus.RUNNING)


@dataclass
class Queue:
    index: int
    ring_base: int = 0
    ring_size: int = 0
    head: int = 0
    tail: int = 0
    status: int = int(QueueStatus.IDLE)  # STALLED and HALTED; RUNNING is derived
    error: ErrorCode = ErrorCode.NONE
    pt_base: int = 0
    completed: int = 0
    # bumped by CONTROL=RESET: a command the worker was executing when the
    # driver reset the queue belongs to the old ring and must not complete
    generation: int = 0
    hung: bool = False  # an injected hang: RUNNING, but nothing runs until RESET
    # the replay count last honoured (replay word or CONTROL); a REPLAY
    # write carrying it again is the second of two that crossed: dropped
    replay_seen: int = 0
    # while the device watches the replay word of this stalled queue: the
    # count it held when the queue stalled (-1: not watched), and until when
    watch: int = -1
    watch_until: int = 0

    @property
    def runnable(self) -> bool:
        return self.head != self.tail and not self.status & _STALLED_OR_HALTED and not self.hung

    @property
    def status_register(self) -> int:
        """STATUS as the driver reads it: RUNNING means work the engine will
        run (HEAD != TAIL, neither stalled nor halted), so never with STALLED."""
        return self.status | (_RUNNING if self.runnable or self.hung else 0)

    def ring_config_ok(self) -> bool:
        size = self.ring_size
        return 2 <= size <= hw.MAX_RING_ENTRIES and not size & (size - 1) \
            and not self.ring_base % 64

    def slot(self) -> int:
        """Bus address of the command at HEAD."""
        return self.ring_base + self.head * hw.COMMAND_SIZE


@dataclass(slots=True)
class Command:
    opcode: int
    flags: int
    ctx: int
    reserved: int
    args: tuple[int, int, int, int, int]
    status: int

    @classmethod
    def unpack(cls, raw: bytes | memoryview | np.ndarray) -> Command:
        return cls.of(hw.COMMAND.unpack(raw))

    @classmethod
    def of(cls, f: tuple) -> Command:
        """From the fields of hw.COMMAND, in order."""
        return cls(f[0], f[1], f[2], f[3], f[4:9], f[9])

    def aperture(self, shift: int) -> int:
        return (self.flags >> shift) & hw.APERTURE_MASK
