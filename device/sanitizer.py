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
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from . import hwdef as hw
from .hwdef import SanCheck
from .memory import DeviceError, GuestMemory
from .trace import NONE, Kind, Recorder

log = logging.getLogger("hmmgpu.device")

MAX_REPORTS = 1000
# A cleared or weakened PTE's TLB entry may be used until the driver's
# TLB_INVALIDATE lands: by other queues' commands too, while the invalidation
# is on its way (the stress test saw a READ on a context queue start between
# the clear and the kernel queue's doorbell). A correct driver invalidates
# well within this much device time; a use after it means no flush came.
STALE_GRACE_NS = 1_000_000_000


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


_PTE_VALID = int(hw.Pte.VALID)
_PTE_PERMS = int(hw.Pte.READ | hw.Pte.WRITE | hw.Pte.ATOMIC)
# (queue, ctx, command id) of the command executing, NONE where there is none
Where = Callable[[], tuple[int, int, int]]


class Sanitizer:
    """The checks and what they remember. The MMU calls tlb_hit() and walk()
    while it translates (when `enabled`); the engine calls report() for
    device errors that are driver bugs."""

    def __init__(self, clock: Callable[[], int], trace: Recorder, vram_size: int,
                 mem: GuestMemory, where: Where, enabled: bool = True) -> None:
        self.clock = clock
        self.trace = trace
        self.mem = mem
        self.where = where
        self.enabled = enabled
        self.vram_pages = vram_size // hw.PAGE_SIZE
        self.reports: list[Report] = []
        self.count = 0
        self._lock = threading.Lock()
        self._seen: set[tuple[int, int, int]] = set()  # (check, ctx, page): one report each
        # (ctx, va) of TLB entries used after their PTE was cleared or
        # weakened -> the device time of the first such use
        self._cleared: dict[tuple[int, int], int] = {}
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

    def tlb_hit(self, ctx: int, t) -> None:
        """STALE_TLB: the PTE behind a TLB hit must still say what the TLB holds.

        A PTE rewritten to another page is reported at once: without
        TLB_INVALIDATE the device keeps the old page. A PTE that now allows
        more (same page, permission bits added) is never reported: the entry
        the device uses allows less, at worst a fault it replays. A cleared
        PTE, or one that allows less, is the first half of a correct
        invalidation (change, then TLB_INVALIDATE), and commands already
        running may use the entry in between, and so may commands that start
        while the invalidation is on its way; it is reported when the entry is
        still used STALE_GRACE_NS after its first such use.
        """
        try:
            now = self.mem.read_u64(t.pte_addr)
        except DeviceError:
            now = 0
        if now == t.pte:
            return
        same_page = now & _PTE_VALID and (now & ~_PTE_PERMS) == (t.pte & ~_PTE_PERMS)
        if same_page and now & t.pte & _PTE_PERMS == t.pte & _PTE_PERMS:
            return  # an upgrade
        if not now & _PTE_VALID or same_page:
            t_now = self.clock()
            if t_now - self._cleared.setdefault((ctx, t.va), t_now) < STALE_GRACE_NS:
                return  # inside the window: the invalidation may be on its way
        queue, _, command = self.where()
        self.report(SanCheck.STALE_TLB, queue, ctx, command, t.va,
                    f"TLB entry for va {t.va:#x} used, but its PTE at {t.pte_addr:#x} changed "
                    f"from {t.pte:#x} to {now:#x} without TLB_INVALIDATE", once_key=t.va)

    def walk(self, ctx: int, t) -> None:
        """VRAM_PTE: a VRAM PTE must point at VRAM the driver holds."""
        if t.vram and t.peer < 0 and self.vram_page_freed(t.addr, t.size):
            queue, _, command = self.where()
            self.report(SanCheck.VRAM_PTE, queue, ctx, command, t.va,
                        f"PTE at {t.pte_addr:#x} maps va {t.va:#x} to VRAM offset {t.addr:#x}, "
                        "a page the driver freed", once_key=t.va)

    def stale_path(self, ctx: int, va: int, cached: int, now: int | None) -> None:
        """STALE_PATH: a LEAF TLB_INVALIDATE keeps the walk cache, so the
        driver changed no path to a level-0 table in its range."""
        queue, _, command = self.where()
        self.report(SanCheck.STALE_PATH, queue, ctx, command, va,
                    f"TLB_INVALIDATE with LEAF kept the cached level-0 table {cached:#x} of the "
                    f"2 MiB at va {va:#x}, but the page table now leads to "
                    f"{'no table' if now is None else f'{now:#x}'}: a freed or replaced table "
                    "needs TLB_INVALIDATE without LEAF", once_key=va)

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
