"""The device MMU: per-context 4-level page tables in guest memory, and a TLB.

A walk reads at most one entry per level (level 3 is the root, level 0 maps
4 KiB pages, a level-1 entry with LARGE maps 2 MiB), so it always ends; a
table that points back at a table of the same walk is reported as PT_LOOP
because it is certainly a driver bug. Every table read goes through
GuestMemory.view, so a walk never leaves guest RAM.

The TLB caches successful translations per (context, page). Missing or
forbidden translations are never cached: after the driver fixes a PTE, a
REPLAY walks again. A changed PTE of a cached translation is NOT seen until the
driver invalidates it with TLB_INVALIDATE, as on real hardware.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import hwdef as hw
from .hwdef import ErrorCode, Pte
from .memory import DeviceError, GuestMemory

LEVEL_SHIFT = (12, 21, 30, 39)
INDEX_MASK = hw.PT_ENTRIES - 1
VA_LIMIT = 1 << hw.VA_BITS


@dataclass(frozen=True)
class Translation:
    va: int  # first VA of the page
    size: int  # 4 KiB or 2 MiB
    addr: int  # bus address or VRAM offset of the page
    vram: bool
    flags: Pte  # READ / WRITE / ATOMIC
    pte_addr: int  # bus address of the leaf PTE

    def target(self, va: int) -> int:
        return self.addr + (va - self.va)


class Fault(Exception):
    """A device-virtual access the page table does not allow (replayable)."""

    def __init__(self, va: int, reason: hw.FaultReason) -> None:
        super().__init__(f"{reason.name} at {va:#x}")
        self.va = va
        self.reason = reason


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


class Mmu:
    def __init__(self, mem: GuestMemory, vram_size: int) -> None:
        self.mem = mem
        self.vram_size = vram_size
        # (ctx, first VA of the page) -> translation; 4 KiB and 2 MiB pages
        # live in separate maps so a 2 MiB-aligned 4 KiB page never answers
        # for the rest of its 2 MiB.
        self.tlb: dict[tuple[int, int], Translation] = {}
        self.tlb_large: dict[tuple[int, int], Translation] = {}
        self.walks = 0
        self.hits = 0

    # ---- walking ---------------------------------------------------------------

    def walk(self, root: int, va: int) -> Translation | None:
        """Translate `va` through the table at `root`; None when not present.
        Raises DeviceError for malformed tables."""
        self.walks += 1
        if not 0 <= va < VA_LIMIT or root == 0:  # PT_BASE 0: the context has no mappings
            return None
        table = root
        visited: set[int] = set()
        for level in (3, 2, 1, 0):
            if table % hw.PAGE_SIZE:
                raise DeviceError(ErrorCode.PTE_INVALID, table, "table not 4 KiB aligned")
            if table in visited:
                raise DeviceError(ErrorCode.PT_LOOP, table, f"level {level}")
            visited.add(table)
            pte_addr = table + ((va >> LEVEL_SHIFT[level]) & INDEX_MASK) * 8
            pte = self.mem.read_u64(pte_addr)
            if not pte & Pte.VALID:
                return None
            if pte & hw.PTE_RESERVED_MASK:
                raise DeviceError(ErrorCode.PTE_INVALID, pte_addr, f"reserved bits {pte:#x}")
            addr = pte & hw.PTE_ADDR_MASK
            large = bool(pte & Pte.LARGE)
            if level == 0 or large:
                if large and level != 1:
                    raise DeviceError(ErrorCode.PTE_INVALID, pte_addr, "LARGE above level 1")
                size = hw.LARGE_PAGE_SIZE if large else hw.PAGE_SIZE
                if addr % size:
                    raise DeviceError(ErrorCode.PTE_INVALID, pte_addr, "misaligned page")
                vram = bool(pte & Pte.VRAM)
                if vram and addr + size > self.vram_size:
                    raise DeviceError(ErrorCode.VRAM_RANGE, pte_addr,
                                      f"PTE maps VRAM offset {addr:#x}")
                return Translation(va & ~(size - 1), size, addr, vram,
                                   Pte(pte) & (Pte.READ | Pte.WRITE | Pte.ATOMIC), pte_addr)
            if pte & Pte.VRAM:
                raise DeviceError(ErrorCode.PTE_INVALID, pte_addr, "page table in VRAM")
            table = addr
        raise AssertionError("unreachable")

    # ---- translating with the TLB ---------------------------------------------------

    def translate(self, ctx: int, root: int, va: int, access: hw.Access) -> Translation:
        """Translation of `va` allowing `access`, else Fault."""
        t = self.tlb.get((ctx, va & ~(hw.PAGE_SIZE - 1))) or \
            self.tlb_large.get((ctx, va & ~(hw.LARGE_PAGE_SIZE - 1)))
        if t is not None:
            self.hits += 1
        else:
            t = self.walk(root, va)
            if t is None:
                raise Fault(va, hw.FaultReason.NOT_PRESENT)
        need = _NEEDED[int(access)]
        if (int(t.flags) & need) != need:
            raise Fault(va, hw.FaultReason.PERMISSION)
        (self.tlb_large if t.size == hw.LARGE_PAGE_SIZE else self.tlb)[(ctx, t.va)] = t
        return t

    def invalidate(self, ctx: int, va: int = 0, length: int = 0) -> int:
        """Drop ctx's cached translations overlapping [va, va+length); length 0
        drops all of ctx's. Returns how many were dropped."""
        end = va + length
        dropped = 0
        for tlb in (self.tlb, self.tlb_large):
            doomed = [k for k, t in tlb.items()
                      if k[0] == ctx and (length == 0 or (t.va < end and va < t.va + t.size))]
            for k in doomed:
                del tlb[k]
            dropped += len(doomed)
        return dropped

    def flush(self) -> None:
        self.tlb.clear()
        self.tlb_large.clear()
