"""Walking ahead (device/mmu.py) against walking page by page: on random
page tables, with bad PTEs, stale TLB entries and freed VRAM mixed in, a
device-virtual range must come out the same either way: the same bytes, the
same faults or error, the same TLB afterwards and the same sanitizer
reports. Page by page is the executor's general path as a traced command
takes it (no one-page shortcut, no walking ahead)."""

from __future__ import annotations

import random

import pytest
from engine_rig import RW, Rig

from hmmgpu.device import hwdef as hw
from hmmgpu.device.hwdef import Access, Aperture, Opcode, Pte, Reg
from hmmgpu.device.memory import DeviceError
from hmmgpu.device.mmu import Fault
from hmmgpu.device.queue import Command

Q = 3
BASE = 0x4000_0000 - 24 * hw.PAGE_SIZE  # the range crosses a level-0 table
PAGES = 48
VRAM = 1 << 20
KINDS = ("none", "sys", "sys_ro", "vram", "vram_far", "reserved", "large", "peer",
         "stale", "freed")


def build(seed: int) -> tuple[Rig, list[str]]:
    """The same page table for the same seed, in a fresh rig."""
    rnd = random.Random(seed)
    rig = Rig(ram_size=8 << 20, vram_size=VRAM)
    rig.gpu.engine.set_sanitizer(True)
    # the driver holds the first half of the VRAM (a PTE into the rest: VRAM_PTE)
    rig.gpu.mmio_write(Reg.SAN_VRAM, 4, hw.SAN_VRAM_ALLOC | 7 << hw.SAN_ORDER_SHIFT)
    kinds = [rnd.choice(KINDS) for _ in range(PAGES)]
    mmu = rig.gpu.engine.mmu
    for i, kind in enumerate(kinds):
        va = BASE + i * hw.PAGE_SIZE
        sys_page = rig.page(i + 1)
        rig.gpu.vram.array[i * hw.PAGE_SIZE:(i + 1) * hw.PAGE_SIZE] = 0x80 + i
        if kind == "none":
            continue
        if kind == "vram":
            slot = rig.drv.map(Q, va, i * hw.PAGE_SIZE, RW | Pte.VRAM)
        elif kind == "vram_far":
            slot = rig.drv.map(Q, va, VRAM, RW | Pte.VRAM)
        elif kind == "freed":
            slot = rig.drv.map(Q, va, VRAM - hw.PAGE_SIZE, RW | Pte.VRAM)
        else:
            slot = rig.drv.map(Q, va, sys_page, Pte.READ if kind == "sys_ro" else RW)
        extra = {"reserved": 1 << 60, "large": int(Pte.LARGE),
                 "peer": int(Pte.PEER)}.get(kind, 0)
        if extra:
            rig.drv.set_u64(slot, rig.drv.u64(slot) | extra)
        if kind == "stale":  # in the TLB, then the PTE moved without an invalidation
            mmu.translate(Q, rig.drv.roots[Q], va, Access.READ)
            rig.drv.set_u64(slot, rig.page(0xEE) | int(RW | Pte.VALID))
    return rig, kinds


def segments(rig: Rig, first: int, count: int, access: Access, ahead: bool,
             invalidate: tuple[int, int] = (0, 0)):
    engine = rig.gpu.engine
    if not ahead:
        engine.trace.start()  # the flight recorder: the general path, page by page
    queue = engine.queues[Q]
    cmd = Command(int(Opcode.READ), 0, 0, 0, (0, 0, 0, 0, 0), 0)
    va = BASE + first * hw.PAGE_SIZE + 8
    length = count * hw.PAGE_SIZE - 16
    try:
        views = engine.executor._segments(queue, cmd, Aperture.VA, va, length, access)
        out: object = ("ok", b"".join(v.tobytes() for v in views), len(views))
    except Fault as f:
        records = [(r.va, r.access, r.reason, r.last) for r in rig.drv.faults()]
        out = ("fault", f.va, f.reason, records)
    except DeviceError as e:
        out = ("error", e.code, e.addr)
    tlb = [(k, t.va, t.addr, t.vram, t.flags, t.pte_addr, t.pte) for k, t in
           engine.mmu.tlb.items()]
    reports = [(r.check, r.addr) for r in engine.sanitizer.reports]
    # then a TLB_INVALIDATE of (first page, pages): what stays cached
    engine.mmu.invalidate(Q, BASE + invalidate[0] * hw.PAGE_SIZE,
                          invalidate[1] * hw.PAGE_SIZE)
    return out, tlb, reports, sorted(engine.mmu.tlb)


@pytest.mark.parametrize("seed", range(200))
def test_walking_ahead_ends_as_walking_page_by_page(seed: int) -> None:
    rnd = random.Random(seed * 7919)
    first = rnd.randrange(PAGES - 1)
    count = rnd.randrange(1, PAGES - first + 1)
    access = rnd.choice([Access.READ, Access.WRITE])
    start = rnd.randrange(PAGES)
    inval = (start, rnd.randrange(1, PAGES - start + 1))
    page_by_page = segments(build(seed)[0], first, count, access, False, inval)
    assert segments(build(seed)[0], first, count, access, True, inval) == page_by_page


def test_a_clean_range_is_walked_once_and_its_bytes_are_right(rig: Rig) -> None:
    """The case it is for: 40 mapped pages, one walk of the table, not 40."""
    for i in range(40):
        rig.drv.map(Q, BASE + i * hw.PAGE_SIZE, rig.page(i + 1), RW)
    mmu, walks = rig.gpu.engine.mmu, []
    walk = mmu.walk
    mmu.walk = lambda *a, **kw: walks.append(a[1]) or walk(*a, **kw)
    out, *_ = segments(rig, 0, 40, Access.READ, ahead=True)
    assert out[0] == "ok" and out[1] == b"".join(bytes([i + 1]) * hw.PAGE_SIZE
                                                 for i in range(40))[8:-8]
    # one walk per level-0 table the range touches (it crosses one boundary)
    assert len(walks) == 2
