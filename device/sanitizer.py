"""The driver sanitizer: the device catches driver bugs and says where.

Each check (hwdef.SanCheck) produces a Report naming the context, the
address, the command and the device time; reports go to the device log, to
the trace (a SANITIZER record) and to a bounded list the harness reads over
the control socket. The device still behaves as the hardware would (a stale
TLB entry is still used, an unmapped DMA still fails): the sanitizer only
watches.

VRAM ownership is learnt from the driver: once it writes SAN_VRAM (a page
allocated or freed, with its folio order), a PTE at a VRAM page the driver
does not hold is reported. A driver that never writes SAN_VRAM gets only
the end-of-VRAM check.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass

import numpy as np

from . import hwdef as hw
from .hwdef import SanCheck
from .trace import NONE, Kind, Recorder

log = logging.getLogger("hmmgpu.device")

MAX_REPORTS = 1000


@dataclass(frozen=True)
class Report:
    check: str
    t_ns: int
    queue: int | None
    ctx: int | None
    command: int | None  # the queue's command id (see docs/trace-format.md)
    addr: int
    detail: str

    def line(self) -> str:
        where = ", ".join(f"{k} {v}" for k, v in (("queue", self.queue), ("ctx", self.ctx),
                                                    ("command", self.command)) if v is not None)
        return (f"SANITIZER {self.check} at {self.t_ns / 1e9:.6f} s ({where}): "
                f"{self.detail} [addr {self.addr:#x}]")


class Sanitizer:
    def __init__(self, clock, trace: Recorder, vram_size: int, enabled: bool = True) -> None:
        self.clock = clock
        self.trace = trace
        self.enabled = enabled
        self.vram_pages = vram_size // hw.PAGE_SIZE
        self.reports: list[Report] = []
        self.count = 0
        self._lock = threading.Lock()
        self._seen: set[tuple[int, int, int]] = set()  # (check, ctx, page): one report each
        # (ctx, va) of TLB entries used after their PTE was cleared -> the
        # (queue, command) that used one first
        self._cleared: dict[tuple[int, int], tuple[int, int]] = {}
        self.reset()

    def reset(self) -> None:
        """Device reset: forget the driver's VRAM (it re-registers), keep reports."""
        self.vram_held: np.ndarray | None = None  # bool per VRAM page, once the driver tells

    # ---- the driver's side -----------------------------------------------------------

    def vram_write(self, value: int) -> None:
        """SAN_VRAM register write: a VRAM folio allocated or freed."""
        order = (value >> hw.SAN_ORDER_SHIFT) & hw.SAN_ORDER_MASK
        page = value >> hw.SAN_PAGE_SHIFT
        if self.vram_held is None:
            self.vram_held = np.zeros(self.vram_pages, dtype=bool)
        self.vram_held[page:page + (1 << order)] = bool(value & hw.SAN_VRAM_ALLOC)

    # ---- checks ----------------------------------------------------------------------

    def report(self, check: SanCheck, queue: int | None, ctx: int | None, command: int | None,
               addr: int, detail: str, once_key: int | None = None) -> None:
        if not self.enabled:
            return
        if once_key is not None:
            key = (int(check), NONE if ctx is None else ctx, once_key)
            if key in self._seen:
                return
            self._seen.add(key)
        r = Report(check.name, self.clock(), queue, ctx, command, addr, detail)
        with self._lock:
            self.count += 1
            if len(self.reports) < MAX_REPORTS:
                self.reports.append(r)
        log.warning("%s", r.line())
        if self.trace.on:
            self.trace.emit(Kind.SANITIZER, NONE if queue is None else queue,
                            NONE if ctx is None else ctx, command or 0, addr=addr,
                            aux=int(check))

    def first_use_of_cleared(self, ctx: int, va: int, queue: int, command: int) -> bool:
        """A TLB entry whose PTE was cleared is used: is this still the command
        that used it first since (the driver's invalidation may be on its way)?"""
        return self._cleared.setdefault((ctx, va), (queue, command)) == (queue, command)

    def invalidated(self, ctx: int) -> None:
        """TLB_INVALIDATE: the context's stale-TLB state starts over."""
        self._seen = {k for k in self._seen if not (k[0] == SanCheck.STALE_TLB and k[1] == ctx)}
        self._cleared = {k: v for k, v in self._cleared.items() if k[0] != ctx}

    def vram_page_freed(self, offset: int, size: int) -> bool:
        held = self.vram_held
        if held is None:
            return False
        first = offset // hw.PAGE_SIZE
        return not bool(held[first:first + size // hw.PAGE_SIZE].all())

    def take(self, clear: bool = False) -> dict:
        with self._lock:
            held = self.vram_held
            out = {"count": self.count, "reports": [asdict(r) for r in self.reports],
                   # VRAM pages the driver says it holds (None: it never said)
                   "vram_held": None if held is None else int(held.sum())}
            if clear:
                self.reports.clear()
                self.count = 0
                self._seen.clear()
        return out
