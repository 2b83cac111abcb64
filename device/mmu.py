"""The device MMU: per-context 4-level page tables in guest memory, and a TLB.

A walk reads at most one entry per level (level 3 is the root, level 0 maps
4 KiB pages, a level-1 entry with LARGE maps 2 MiB), so it always ends; a
table that points back at a table of the same walk is reported as PT_LOOP
because it is certainly a driver bug. Every table read goes through
GuestMemory.view, so a walk never leaves guest RAM.

The TLB caches successful translations per (context, page), at most
TLB_ENTRIES of each page size in all; when it is full the filling
context's oldest entry leaves (another context's when it has none).
Missing or forbidden translations are never cached: after the driver fixes
a PTE, a REPLAY walks again. A changed PTE of a cached translation is NOT
seen until the driver invalidates it with TLB_INVALIDATE, as on real
hardware.

A page-walk cache remembers, per (context, 2 MiB region), the level-0 table
the last walk went through, so walking the next 4 KiB page of that region
reads one PTE instead of four; a walk keeps the table whatever the PTE it
reads there holds, so the walk after a fault's REPLAY reads one PTE.
TLB_INVALIDATE drops it with the TLB: a driver that frees or moves a page
table must invalidate, as it must for a PTE. Each context's span (the
lowest and highest VA of the translations it has cached) bounds the work
of a range invalidation: a range outside it drops no translation without a
lookup (a migration of pages the device never reached by VA), and one that
covers it drops the context's map whole (a migration back of all a READ
reached). A span starts afresh once invalidations left its context nothing,
so the pages of a freed buffer do not widen the next one's.

A walk that ends in a 4 KiB leaf for a multi-page range walks ahead: the
leaf's neighbours in the same level-0 table, up to the range's end, are read
as one slice, and each that is a plain valid leaf allowing the access (and
not in the TLB) becomes a translation and a TLB fill as its own walk would
have made; the first that is anything else is left to its own walk, which
faults or reports the error at its page as ever. Real MMUs fetch a cache
line of PTEs per memory read for the same reason.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import NamedTuple, Protocol

from . import hwdef as hw
from . import trace as tr
from .hwdef import ErrorCode, Pte
from .memory import DeviceError, Fabric, GuestMemory
from .trace import NONE, Recorder

LEVEL_SHIFT = tuple(hw.pt_level_shift(level) for level in range(hw.PT_LEVELS))
INDEX_MASK = hw.PT_ENTRIES - 1
VA_LIMIT = 1 << hw.VA_BITS
TLB_ENTRIES = 8192  # per page size
# plain ints: IntFlag operators cost a Python call per bit test in the walk loop
_VALID, _LARGE, _VRAM, _PEER = int(Pte.VALID), int(Pte.LARGE), int(Pte.VRAM), int(Pte.PEER)
_PEER_ID = hw.PTE_PEER_MASK << hw.PTE_PEER_SHIFT
_PERMS = int(Pte.READ | Pte.WRITE | Pte.ATOMIC)
_RESERVED, _ADDR = int(hw.PTE_RESERVED_MASK), int(hw.PTE_ADDR_MASK)
_PAGE_MASK, _LARGE_MASK = ~(hw.PAGE_SIZE - 1), ~(hw.LARGE_PAGE_SIZE - 1)
# bits of a leaf PTE that walking ahead takes as they are: VALID must be the
# only one of these set (reserved, LARGE and peer bits go to the page's walk)
_AHEAD_STOP = _VALID | _RESERVED | _LARGE | _PEER | _PEER_ID


class Translation(NamedTuple):  # a tuple: built on every walk, 4x faster than a dataclass
    va: int  # first VA of the page
    size: int  # 4 KiB or 2 MiB
    addr: int  # bus address or VRAM offset of the page
    vram: bool
    flags: int  # Pte READ / WRITE / ATOMIC bits
    pte_addr: int  # bus address of the leaf PTE
    pte: int = 0  # the leaf PTE as read
    peer: int = -1  # fabric id whose VRAM `addr` is in (a PEER PTE), else -1

    def target(self, va: int) -> int:
        return self.addr + (va - self.va)


class Fault(Exception):
    """A device-virtual access the page table does not allow (replayable)."""

    def __init__(self, va: int, reason: hw.FaultReason) -> None:
        super().__init__(va, reason)  # the text only when shown: faults are the hot path
        self.va = va
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.reason.name} at {self.va:#x}"


def needed_flags(access: hw.Access) -> int:
    need = 0
    if access & hw.Access.READ:
        need |= Pte.READ
    if access & hw.Access.WRITE:
        need |= Pte.WRITE
    if access & hw.Access.ATOMIC:
        need |= Pte.ATOMIC | Pte.WRITE
    return int(need)


_NEEDED = {a: needed_flags(hw.Access(a)) for a in range(8)}


class Checks(Protocol):
    """What watches translations (the sanitizer): called only when enabled."""

    enabled: bool

    def tlb_hit(self, ctx: int, t: Translation) -> None: ...
    def walk(self, ctx: int, t: Translation) -> None: ...
    def stale_path(self, ctx: int, va: int, cached: int, now: int | None) -> None: ...


class Mmu:
    def __init__(self, mem: GuestMemory, vram_size: int, trace: Recorder | None = None,
                 checks: Checks | None = None, fabric: Fabric | None = None) -> None:
        self.mem = mem
        self.vram_size = vram_size
        self.fabric = fabric
        self.trace = trace
        self.checks = checks
        # 4 KiB and 2 MiB pages live in separate TLBs so a 2 MiB-aligned
        # 4 KiB page never answers for the rest of its 2 MiB
        self.tlb, self.tlb_large = Tlb(), Tlb()
        # (ctx, VA >> 21) -> (root, level-0 table): the page-walk cache
        self.pwc: dict[tuple[int, int], tuple[int, int]] = {}
        # ctx -> [lo, hi): every page the context has in the TLBs lies in it
        # (evictions do not shrink it)
        self.spans: dict[int, list[int]] = {}
        self.walked = False  # the last translate() walked (a TLB miss)

    # ---- walking ---------------------------------------------------------------

    def walk(self, root: int, va: int, ctx: int | None = None) -> Translation | None:
        """Translate `va` through the table at `root`; None when not present.
        Raises DeviceError for malformed tables. With `ctx`, the walk uses and
        fills the page-walk cache."""
        if not 0 <= va < VA_LIMIT or root == 0:  # PT_BASE 0: the context has no mappings
            return None
        table = root
        levels: tuple[int, ...] = (3, 2, 1, 0)
        key = None if ctx is None else (ctx, va >> LEVEL_SHIFT[1])
        if key is not None:
            cached = self.pwc.get(key)
            if cached is not None and cached[0] == root:
                # cached: one PTE to read; a plain 4 KiB leaf (or none) is
                # answered here, anything else by the loop's checks
                pte_addr = cached[1] + ((va >> LEVEL_SHIFT[0]) & INDEX_MASK) * 8
                pte = self.mem.read_u64(pte_addr)
                if not pte & _VALID:
                    return None
                addr, vram = pte & _ADDR, bool(pte & _VRAM)
                if pte & _AHEAD_STOP == _VALID and \
                        (not vram or addr + hw.PAGE_SIZE <= self.vram_size):
                    return Translation(va & _PAGE_MASK, hw.PAGE_SIZE, addr, vram,
                                       pte & _PERMS, pte_addr, pte, -1)
                table, levels, key = cached[1], (0,), None  # nothing to fill
        visited: set[int] = set()
        for level in levels:
            if table % hw.PAGE_SIZE:
                raise DeviceError(ErrorCode.PTE_INVALID, table, "table not 4 KiB aligned")
            if table in visited:
                raise DeviceError(ErrorCode.PT_LOOP, table, f"level {level}")
            visited.add(table)
            if level == 0 and key is not None:
                # the path to this table is good whatever its PTE holds: a
                # walk after the fault's REPLAY (the PTE filled in) reads one PTE
                self.pwc[key] = (root, table)
            pte_addr = table + ((va >> LEVEL_SHIFT[level]) & INDEX_MASK) * 8
            pte = self.mem.read_u64(pte_addr)
            if not pte & _VALID:
                return None
            if pte & _RESERVED:
                raise DeviceError(ErrorCode.PTE_INVALID, pte_addr, f"reserved bits {pte:#x}")
            addr = pte & _ADDR
            large = bool(pte & _LARGE)
            if level == 0 or large:
                if large and level != 1:
                    raise DeviceError(ErrorCode.PTE_INVALID, pte_addr, "LARGE outside level 1")
                size = hw.LARGE_PAGE_SIZE if large else hw.PAGE_SIZE
                if addr % size:
                    raise DeviceError(ErrorCode.PTE_INVALID, pte_addr, "misaligned page")
                vram = bool(pte & _VRAM)
                peer = self._peer(pte, pte_addr) if pte & (_PEER | _PEER_ID) else -1
                limit = self.vram_size if peer < 0 else self._peer_size(peer, pte_addr)
                if vram and addr + size > limit:
                    raise DeviceError(ErrorCode.VRAM_RANGE, pte_addr,
                                      f"PTE maps VRAM offset {addr:#x}")
                return Translation(va & ~(size - 1), size, addr, vram, pte & _PERMS, pte_addr,
                                   pte, peer)
            if pte & (_VRAM | _PEER | _PEER_ID):
                raise DeviceError(ErrorCode.PTE_INVALID, pte_addr, "page table in VRAM")
            table = addr
        raise AssertionError("unreachable")

    def _peer(self, pte: int, pte_addr: int) -> int:
        """The fabric id a leaf PTE names: PEER needs VRAM, and the id bits
        mean nothing without PEER."""
        if not pte & _PEER or not pte & _VRAM:
            raise DeviceError(ErrorCode.PTE_INVALID, pte_addr,
                              "PEER needs VRAM" if pte & _PEER else "peer id without PEER")
        return (pte >> hw.PTE_PEER_SHIFT) & hw.PTE_PEER_MASK

    def _peer_size(self, peer: int, pte_addr: int) -> int:
        fabric = self.fabric
        vram = fabric.peer(peer) if fabric is not None and peer != fabric.own_id else None
        if vram is None:
            raise DeviceError(ErrorCode.PTE_INVALID, pte_addr, f"no link to fabric id {peer}")
        return vram.size

    # ---- translating with the TLB ---------------------------------------------------

    def translate(self, ctx: int, root: int, va: int, access: hw.Access) -> Translation:
        """Translation of `va` allowing `access`, else Fault."""
        # the TLBs' maps read in line: this is every translated page's path
        pages = self.tlb.ctxs.get(ctx)
        t = pages.get(va & _PAGE_MASK) if pages is not None else None
        if t is None and (pages := self.tlb_large.ctxs.get(ctx)) is not None:
            t = pages.get(va & _LARGE_MASK)
        checks = self.checks
        if t is not None:
            if checks is not None and checks.enabled:
                checks.tlb_hit(ctx, t)
            need = _NEEDED[int(access)]
            if (t.flags & need) != need:
                raise Fault(va, hw.FaultReason.PERMISSION)
            self.walked = False
            return t  # a hit leaves the TLB as it is: nothing is evicted
        t = self.walk(root, va, ctx)
        self.walked = True
        rec = self.trace
        if t is None:
            if rec is not None and rec.on:  # a walk that found nothing: a fault follows
                rec.emit(tr.WALK, NONE, ctx, va=va)
            raise Fault(va, hw.FaultReason.NOT_PRESENT)
        if checks is not None and checks.enabled:
            checks.walk(ctx, t)
        # a successful walk is recorded as the TLB fill it makes
        if rec is not None and rec.on and (t.flags & _NEEDED[int(access)]) == \
                _NEEDED[int(access)]:
            rec.emit(tr.TLB_FILL, NONE, ctx, flags=tr.dma_flags(t.vram, t.peer), va=t.va,
                     addr=t.addr, length=t.size)
        need = _NEEDED[int(access)]
        if (t.flags & need) != need:
            if rec is not None and rec.on:  # what the PTE allows, and where it is
                rec.emit(tr.WALK, NONE, ctx, flags=t.flags, va=va, addr=t.pte_addr,
                         aux=t.pte & 0xFFFFFFFF)
            raise Fault(va, hw.FaultReason.PERMISSION)
        (self.tlb_large if t.size == hw.LARGE_PAGE_SIZE else self.tlb).fill(ctx, t)
        self._cached(ctx, t.va, t.va + t.size)
        return t

    def _cached(self, ctx: int, lo: int, hi: int) -> None:
        """ctx now caches something in [lo, hi): widen its span."""
        span = self.spans.get(ctx)
        if span is None:
            self.spans[ctx] = [lo, hi]
            return
        if lo < span[0]:
            span[0] = lo
        if hi > span[1]:
            span[1] = hi

    def walk_ahead(self, ctx: int, t: Translation, end: int,
                   access: hw.Access) -> list[Translation]:
        """After a walk that found `t`, a 4 KiB leaf: the translations of the
        pages that follow it, up to `end`, in its level-0 table, read as one
        slice and filled into the TLB as their walks would (module doc).
        Untraced only: a traced walk records each page."""
        page = hw.PAGE_SIZE
        if t.size != page or (self.trace is not None and self.trace.on):
            return []
        index = (t.pte_addr % page) // 8 + 1  # the next PTE in t's table
        n = min(hw.PT_ENTRIES - index, (end - t.va - 1) // page)
        if n <= 0:
            return []
        first = t.pte_addr + 8
        try:
            ptes = self.mem.view(first, 8 * n).view("<u8").tolist()
        except DeviceError:
            return []  # each page's own walk reports it
        need, tlb = _NEEDED[int(access)], self.tlb
        small, large = tlb.ctxs.get(ctx, {}), self.tlb_large.ctxs.get(ctx, {})
        checks = self.checks if self.checks is not None and self.checks.enabled else None
        out: list[Translation] = []
        va = t.va + page
        for k, pte in enumerate(ptes):
            # a plain leaf: valid, allowed, no reserved/LARGE/peer bits, in VRAM if VRAM
            if pte & _AHEAD_STOP != _VALID or pte & need != need or va in small or \
                    va & _LARGE_MASK in large:
                break
            addr, vram = pte & _ADDR, bool(pte & _VRAM)
            if vram and addr + page > self.vram_size:
                break
            nt = Translation(va, page, addr, vram, pte & _PERMS, first + 8 * k, pte, -1)
            if checks is not None:
                checks.walk(ctx, nt)
            tlb.fill(ctx, nt)
            out.append(nt)
            va += page
        if out:
            self._cached(ctx, t.va, va)
        return out

    def invalidate(self, ctx: int, va: int = 0, length: int = 0, leaf: bool = False,
                   root: int = 0) -> int:
        """Drop ctx's cached translations (and, unless `leaf`, walk-cache
        entries) overlapping [va, va+length); length 0 drops all of ctx's.
        `root`: ctx's page table now, for the checks of a `leaf` one.
        Returns how many translations were dropped."""
        end = va + length
        first = count = 0  # the walk cache's 2 MiB regions in the range (0: all)
        if length:
            first = va >> LEVEL_SHIFT[1]
            count = ((end - 1) >> LEVEL_SHIFT[1]) - first + 1
        if not leaf:
            _drop_range(self.pwc, ctx, first, count, 1)
        elif self.checks is not None and self.checks.enabled:
            self._check_paths(ctx, root, first, count)
        span = self.spans.get(ctx)
        if span is None:
            return 0  # no translation cached since the context's last flush
        if length:
            if end <= span[0] or va >= span[1]:
                return 0
            if va > span[0] or end < span[1]:  # part of ctx's: look inside the span only
                va, end = max(va, span[0]), min(end, span[1])
                dropped = self.tlb.drop(ctx, va, end, hw.PAGE_SIZE) + \
                    self.tlb_large.drop(ctx, va, end, hw.LARGE_PAGE_SIZE)
                if not self.tlb.ctxs.get(ctx) and not self.tlb_large.ctxs.get(ctx):
                    # nothing left: the span starts afresh, so that the next
                    # invalidation of what is cached after this covers it
                    del self.spans[ctx]
                return dropped
        del self.spans[ctx]  # all of ctx's: its maps go at once
        return self.tlb.drop_all(ctx) + self.tlb_large.drop_all(ctx)

    def _check_paths(self, ctx: int, root: int, first: int, count: int) -> None:
        """A LEAF invalidation keeps the walk cache: each kept path of the
        table at `root` (of the 2 MiB regions first.. first+count, all of
        ctx's when count is 0) must still lead to the level-0 table it
        cached. Those cached under another root are left alone: no walk uses
        them while the context's root differs."""
        if count and count <= len(self.pwc):
            keys = [(ctx, r) for r in range(first, first + count) if (ctx, r) in self.pwc]
        else:
            keys = [k for k in self.pwc if k[0] == ctx and
                    (not count or first <= k[1] < first + count)]
        for key in keys:
            cached_root, table = self.pwc[key]
            if cached_root != root:
                continue
            va = key[1] << LEVEL_SHIFT[1]
            now = self._table(root, va)
            if now != table:
                self.checks.stale_path(ctx, va, table, now)

    def _table(self, root: int, va: int) -> int | None:
        """The level-0 table the upper levels lead `va` to now; None if none."""
        table = root
        try:
            for level in (3, 2, 1):
                pte = self.mem.read_u64(table + ((va >> LEVEL_SHIFT[level]) & INDEX_MASK) * 8)
                if pte & (_AHEAD_STOP | _VRAM) != _VALID:  # not a plain table
                    return None
                table = pte & _ADDR
        except DeviceError:
            return None
        return table

    def flush(self) -> None:
        self.tlb.clear()
        self.tlb_large.clear()
        self.pwc.clear()
        self.spans.clear()


class Tlb:
    """The translations of one page size, a map per context (VA of the page
    -> translation), each oldest first: a context's entries go at once.
    OrderedDicts: popping the oldest is O(1) (a dict's first key is not,
    once many keys were deleted from its front)."""

    def __init__(self) -> None:
        self.ctxs: dict[int, OrderedDict[int, Translation]] = {}
        self.count = 0

    def fill(self, ctx: int, t: Translation) -> None:
        """Cache ctx's translation t; a full TLB lets ctx's oldest entry go,
        another context's when ctx has none."""
        pages = self.ctxs.get(ctx)
        if pages is None:
            pages = self.ctxs[ctx] = OrderedDict()
        if t.va not in pages:
            if self.count >= TLB_ENTRIES:
                (pages or max(self.ctxs.values(), key=len)).popitem(last=False)
                self.count -= 1
            self.count += 1
        pages[t.va] = t

    def drop(self, ctx: int, start: int, end: int, step: int) -> int:
        """Drop ctx's pages (VAs on a `step` grid) overlapping [start, end),
        probing the range or scanning ctx's map, whichever is fewer lookups;
        how many went."""
        pages = self.ctxs.get(ctx)
        if not pages:
            return 0
        first = start - start % step
        before = len(pages)
        if (end - first) // step < before:
            pop = pages.pop
            for va in range(first, end, step):
                pop(va, None)
        else:
            for va in [va for va in pages if first <= va < end]:
                del pages[va]
        self.count -= before - len(pages)
        return before - len(pages)

    def drop_all(self, ctx: int) -> int:
        pages = self.ctxs.pop(ctx, None)
        n = len(pages) if pages else 0
        self.count -= n
        return n

    def clear(self) -> None:
        self.ctxs.clear()
        self.count = 0

    def items(self) -> Iterator[tuple[tuple[int, int], Translation]]:
        """((ctx, va), translation) of every entry, each context's oldest first."""
        for ctx, pages in self.ctxs.items():
            for va, t in pages.items():
                yield (ctx, va), t

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return (key for key, _ in self.items())

    def __len__(self) -> int:
        return self.count


def _drop_range(cache: dict, ctx: int, start: int, length: int, step: int) -> int:
    """Delete ctx's keys (ctx, k) with k in [start, start+length) on a `step`
    grid (all of ctx's when length is 0), by probing the range or scanning the
    cache, whichever is fewer lookups."""
    if length == 0:
        doomed = [k for k in cache if k[0] == ctx]
    else:
        first = start - start % step
        probes = -(-(start + length - first) // step)
        if probes <= len(cache):  # one pop per probe: no list of keys (-25 %)
            before, pop = len(cache), cache.pop
            for k in range(first, start + length, step):
                pop((ctx, k), None)
            return before - len(cache)
        doomed = [k for k in cache if k[0] == ctx and first <= k[1] < start + length]
    for k in doomed:
        del cache[k]
    return len(doomed)
