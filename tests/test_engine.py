"""The GPU engine in-process: page-table walks, TLB, every command, faults with
REPLAY and CANCEL, and every error path. The engine runs synchronously
(run_until_idle) on guest RAM that is a numpy array at a 64-bit bus address."""

from __future__ import annotations

import numpy as np
import pytest
from engine_rig import BUS, RW, Rig
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hmmgpu.device import hwdef as hw
from hmmgpu.device import trace
from hmmgpu.device.hwdef import Access, Aperture, ErrorCode, Opcode, Pte, QReg, Reg
from hmmgpu.device.memory import DeviceError, GuestMemory
from hmmgpu.device.mmu import Fault
from hmmgpu.device.trace import Kind

K = hw.KERNEL_QUEUE



# ---- page-table walks -------------------------------------------------------------

def test_walk_translates_a_4k_page_with_its_permissions(rig: Rig) -> None:
    page = rig.page()
    rig.drv.map(1, 0x7F00_0000_1000, page, Pte.READ)
    t = rig.gpu.engine.mmu.walk(rig.drv.roots[1], 0x7F00_0000_1234)
    assert (t.va, t.size, t.addr, t.vram) == (0x7F00_0000_1000, hw.PAGE_SIZE, page, False)
    assert t.target(0x7F00_0000_1234) == page + 0x234
    assert t.flags == Pte.READ


def test_walk_translates_a_2m_page_to_vram(rig: Rig) -> None:
    rig.drv.map(2, 0x4000_0000, 0x20_0000, RW | Pte.VRAM, large=True)
    t = rig.gpu.engine.mmu.walk(rig.drv.roots[2], 0x4012_3456)
    assert (t.size, t.vram, t.target(0x4012_3456)) == (hw.LARGE_PAGE_SIZE, True, 0x32_3456)


def test_walk_of_an_unmapped_va_is_not_present(rig: Rig) -> None:
    rig.drv.map(1, 0x1000, rig.page(), RW)
    mmu = rig.gpu.engine.mmu
    assert mmu.walk(rig.drv.roots[1], 0x2000) is None
    assert mmu.walk(rig.drv.roots[1], 1 << 48) is None


@pytest.mark.parametrize("bad_pte, code", [
    (lambda r: (r.page() + 0x1000) | Pte.VALID | Pte.LARGE | RW, ErrorCode.PTE_INVALID),
    (lambda r: r.page() | Pte.VALID | RW | (1 << 60), ErrorCode.PTE_INVALID),
    (lambda r: (8 << 20) | Pte.VALID | Pte.VRAM | Pte.LARGE | RW, ErrorCode.VRAM_RANGE),
])
def test_malformed_level1_entries_are_errors(rig: Rig, bad_pte, code) -> None:
    rig.drv.map(1, 0x1000, rig.page(), RW)  # builds the tables
    slot = rig.drv.pte_slot(1, 0x20_0000, 1)
    rig.drv.set_u64(slot, bad_pte(rig))
    with pytest.raises(DeviceError) as e:
        rig.gpu.engine.mmu.walk(rig.drv.roots[1], 0x20_0000)
    assert e.value.code == code


@pytest.mark.parametrize("level", [0, 2, 3])
def test_large_outside_level_1_is_invalid(rig: Rig, level: int) -> None:
    rig.drv.map(1, 0x1000, rig.page(), RW)
    slot = rig.drv.pte_slot(1, 0x1000, level)
    rig.drv.set_u64(slot, rig.drv.u64(slot) | Pte.LARGE)
    with pytest.raises(DeviceError) as e:
        rig.gpu.engine.mmu.walk(rig.drv.roots[1], 0x1000)
    assert (e.value.code, e.value.addr) == (ErrorCode.PTE_INVALID, slot)



def test_a_table_pointing_back_at_the_root_is_a_loop(rig: Rig) -> None:
    root = rig.drv.context(1)
    rig.drv.set_u64(root, root | Pte.VALID)  # level-3 entry 0 -> the root itself
    with pytest.raises(DeviceError) as e:
        rig.gpu.engine.mmu.walk(root, 0x1000)
    assert e.value.code == ErrorCode.PT_LOOP


def test_a_table_outside_guest_memory_is_a_dma_error(rig: Rig) -> None:
    root = rig.drv.context(1)
    rig.drv.set_u64(root, 0x7000_0000 | Pte.VALID)  # no guest RAM there
    with pytest.raises(DeviceError) as e:
        rig.gpu.engine.mmu.walk(root, 0x1000)
    assert e.value.code == ErrorCode.DMA_UNMAPPED


def test_permissions_are_checked_per_access(rig: Rig) -> None:
    rig.drv.map(1, 0x1000, rig.page(), Pte.READ)
    mmu = rig.gpu.engine.mmu
    assert mmu.translate(1, rig.drv.roots[1], 0x1000, Access.READ)
    for access in (Access.WRITE, Access.ATOMIC):
        with pytest.raises(Fault) as f:
            mmu.translate(1, rig.drv.roots[1], 0x1000, access)
        assert f.value.reason == hw.FaultReason.PERMISSION


# ---- TLB ---------------------------------------------------------------------------

def test_tlb_keeps_a_stale_translation_until_invalidated(rig: Rig) -> None:
    old, new = rig.page(0x11), rig.page(0x22)
    out = rig.drv.alloc(16)
    rig.drv.map(0, 0x1000, old, RW)
    rig.drv.submit(0, Opcode.READ, (0x1000, out, 16))
    rig.run()
    rig.drv.map(0, 0x1000, new, RW)  # PTE changed, no invalidation
    rig.drv.submit(0, Opcode.READ, (0x1000, out, 16))
    rig.run()
    assert rig.drv.read(out, 16) == b"\x11" * 16
    rig.drv.submit(0, Opcode.TLB_INVALIDATE, (0x1000, hw.PAGE_SIZE))
    rig.drv.submit(0, Opcode.READ, (0x1000, out, 16))
    rig.run()
    assert rig.drv.read(out, 16) == b"\x22" * 16


def test_invalidation_by_range_drops_only_overlapping_entries(rig: Rig) -> None:
    mmu = rig.gpu.engine.mmu
    for va in (0x1000, 0x2000, 0x9000):
        rig.drv.map(3, va, rig.page(), RW)
        mmu.translate(3, rig.drv.roots[3], va, Access.READ)
    rig.drv.map(4, 0x1000, rig.page(), RW)
    mmu.translate(4, rig.drv.roots[4], 0x1000, Access.READ)
    assert mmu.invalidate(3, 0x1800, 0x1000) == 2
    assert set(mmu.tlb) == {(3, 0x9000), (4, 0x1000)}
    assert mmu.invalidate(3) == 1 and set(mmu.tlb) == {(4, 0x1000)}


def test_invalidating_a_large_range_probes_the_same_entries_as_a_scan(rig: Rig) -> None:
    mmu = rig.gpu.engine.mmu
    vas = [0x40_0000 + i * hw.PAGE_SIZE for i in range(8)]
    for va in vas:
        rig.drv.map(2, va, rig.page(), RW)
        mmu.translate(2, rig.drv.roots[2], va, Access.READ)
    # a range far larger than the TLB: the invalidation scans instead of probing
    assert mmu.invalidate(2, 0x40_3000, 1 << 40) == 5
    assert {va for _, va in mmu.tlb} == set(vas[:3])


# 4 KiB pages in two 2 MiB regions of ctx 3, a 2 MiB page in a third, and ctx 4
_SPAN_PAGES = [(3, 0x40_0000 + i * hw.PAGE_SIZE) for i in (0, 1, 7, 511)] + \
    [(3, 0x80_0000 + i * hw.PAGE_SIZE) for i in (3, 4)] + [(4, 0x40_1000)]
_SPAN_LARGE = (3, 0x100_0000)
# where ranges start: around the pages, the regions and the spans they make
_SPAN_EDGES = sorted({max(0, va + d) for _, va in [*_SPAN_PAGES, _SPAN_LARGE]
                      for d in (-0x20_0000, -0x1000, -1, 0, 1, 0x1000, 0x20_0000)})
_SPAN_LENGTHS = (0, 1, 0x1000, 0x2000, 0x10_0000, 0x20_0000, 0x40_0000, 0x100_0000)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("touch"), st.integers(0, len(_SPAN_PAGES))),
    st.tuples(st.just("inval"), st.sampled_from(_SPAN_EDGES), st.sampled_from(_SPAN_LENGTHS),
              st.booleans())),
    max_size=25))
def test_invalidation_bounded_by_the_span_drops_what_a_full_probe_would(ops) -> None:
    """A range invalidation looks only inside the context's span of cached
    VAs; TLB and walk cache after any mix of walks and invalidations (LEAF
    ones keep the walk cache) are what dropping every overlapping entry
    gives (the model)."""
    rig = Rig()
    mmu = rig.gpu.engine.mmu
    for ctx, va in _SPAN_PAGES:
        rig.drv.map(ctx, va, rig.page(), RW)
    large = rig.drv.alloc(2 * hw.LARGE_PAGE_SIZE)
    large += -large % hw.LARGE_PAGE_SIZE
    rig.drv.map(*_SPAN_LARGE, large, RW, large=True)
    tlb: set[tuple[int, int, int]] = set()  # (ctx, va, size)
    pwc: set[tuple[int, int]] = set()  # (ctx, 2 MiB region)
    for op in ops:
        if op[0] == "touch":
            ctx, va = ([*_SPAN_PAGES, _SPAN_LARGE])[op[1]]
            mmu.translate(ctx, rig.drv.roots[ctx], va, Access.READ)
            large_page = (ctx, va) == _SPAN_LARGE
            entry = (ctx, va, hw.LARGE_PAGE_SIZE if large_page else hw.PAGE_SIZE)
            if not large_page and entry not in tlb:  # a walk, through the level-0 table
                pwc.add((ctx, va >> 21))
            tlb.add(entry)
        else:
            _, va, length, leaf = op
            mmu.invalidate(3, va, length, leaf)
            va, end = (va, va + length) if length else (0, 1 << 64)  # 0: all of ctx 3
            tlb = {e for e in tlb if e[0] != 3 or e[1] + e[2] <= va or e[1] >= end}
            if not leaf:
                pwc = {e for e in pwc
                       if e[0] != 3 or (e[1] + 1) << 21 <= va or e[1] << 21 >= end}
        assert {(c, v) for c, v, size in tlb if size == hw.PAGE_SIZE} == set(mmu.tlb)
        assert {(c, v) for c, v, size in tlb if size != hw.PAGE_SIZE} == set(mmu.tlb_large)
        assert pwc == set(mmu.pwc)
        for c, v, size in tlb:  # the span holds all the context caches
            assert mmu.spans[c][0] <= v and v + size <= mmu.spans[c][1]


def test_a_span_starts_afresh_once_invalidations_empty_its_context(rig: Rig) -> None:
    """A freed buffer's pages leave no trace in the span: the next buffer's
    span is its own, so its invalidation drops the context's map whole."""
    mmu = rig.gpu.engine.mmu
    old, new = 0x7F00_0000_0000, 0x1000_0000
    for va in (old, old + hw.PAGE_SIZE, new, new + hw.PAGE_SIZE):
        rig.drv.map(5, va, rig.page(), RW)
    mmu.translate(5, rig.drv.roots[5], old, Access.READ)
    mmu.translate(5, rig.drv.roots[5], new, Access.READ)
    assert mmu.invalidate(5, new, hw.PAGE_SIZE) == 1  # part of the span: ctx keeps `old`
    assert mmu.spans[5] == [new, old + hw.PAGE_SIZE]
    assert mmu.invalidate(5, old, 2 * hw.PAGE_SIZE) == 1  # part of it again: now empty
    assert 5 not in mmu.spans
    for va in (new, new + hw.PAGE_SIZE):
        mmu.translate(5, rig.drv.roots[5], va, Access.READ)
    assert mmu.spans[5] == [new, new + 2 * hw.PAGE_SIZE]
    assert mmu.invalidate(5, new, 2 * hw.PAGE_SIZE) == 2 and not mmu.tlb.ctxs.get(5)


def test_the_tlb_is_bounded_and_the_oldest_entry_leaves_first(rig: Rig,
                                                               monkeypatch) -> None:
    from hmmgpu.device import mmu as mmu_mod
    monkeypatch.setattr(mmu_mod, "TLB_ENTRIES", 4)
    mmu = rig.gpu.engine.mmu
    for i in range(6):
        rig.drv.map(1, (i + 1) * hw.PAGE_SIZE, rig.page(), RW)
        mmu.translate(1, rig.drv.roots[1], (i + 1) * hw.PAGE_SIZE, Access.READ)
    assert [va for _, va in mmu.tlb] == [i * hw.PAGE_SIZE for i in (3, 4, 5, 6)]
    # hits on a full TLB evict nothing
    for i in (6, 6, 5):
        mmu.translate(1, rig.drv.roots[1], i * hw.PAGE_SIZE, Access.READ)
    assert [va for _, va in mmu.tlb] == [i * hw.PAGE_SIZE for i in (3, 4, 5, 6)]


def test_a_full_tlb_lets_the_filling_contexts_oldest_entry_go(rig: Rig, monkeypatch) -> None:
    """Another context's when the filling one has none: the largest's oldest."""
    from hmmgpu.device import mmu as mmu_mod
    monkeypatch.setattr(mmu_mod, "TLB_ENTRIES", 4)
    mmu = rig.gpu.engine.mmu

    def touch(ctx: int, page: int) -> None:
        rig.drv.map(ctx, page * hw.PAGE_SIZE, rig.page(), RW)
        mmu.translate(ctx, rig.drv.roots[ctx], page * hw.PAGE_SIZE, Access.READ)

    for ctx, page in ((1, 1), (1, 2), (1, 3), (2, 1)):
        touch(ctx, page)
    touch(2, 2)  # full: ctx 2's own oldest goes, not ctx 1's older one
    assert sorted(mmu.tlb) == [(1, 0x1000), (1, 0x2000), (1, 0x3000), (2, 0x2000)]
    touch(3, 1)  # ctx 3 holds nothing: the largest context gives up its oldest
    assert sorted(mmu.tlb) == [(1, 0x2000), (1, 0x3000), (2, 0x2000), (3, 0x1000)]
    assert len(mmu.tlb) == 4
    # a range covering all ctx 1 holds drops its map whole, and says how much
    assert mmu.invalidate(1, 0, 1 << 30) == 2
    assert sorted(mmu.tlb) == [(2, 0x2000), (3, 0x1000)] and len(mmu.tlb) == 2


def test_the_page_walk_cache_keeps_a_replaced_table_until_invalidated(rig: Rig) -> None:
    """Like the TLB, the walk cache is only coherent through TLB_INVALIDATE: a
    driver that swaps a level-0 table must invalidate the range."""
    mmu, root = rig.gpu.engine.mmu, rig.drv.roots.get(5) or rig.drv.context(5)
    rig.drv.map(5, 0x20_0000, rig.page(0x11), RW)
    assert mmu.walk(root, 0x20_0000, ctx=5).addr == mmu.walk(root, 0x20_0000).addr
    # point the level-1 entry at a fresh level-0 table mapping 0x20_1000 only
    l1_slot = rig.drv.pte_slot(5, 0x20_0000, 1)
    table = rig.drv.alloc(hw.PAGE_SIZE)
    new = rig.page(0x22)
    rig.drv.set_u64(table + 8, new | RW | Pte.VALID)
    rig.drv.set_u64(l1_slot, table | Pte.VALID)
    assert mmu.walk(root, 0x20_1000, ctx=5) is None  # the cached old table
    assert mmu.walk(root, 0x20_1000).addr == new  # a full walk sees the new one
    mmu.invalidate(5, 0x20_1000, hw.PAGE_SIZE, leaf=True)  # LEAF: the path stays cached
    assert mmu.walk(root, 0x20_1000, ctx=5) is None
    mmu.invalidate(5, 0x20_1000, hw.PAGE_SIZE)
    assert mmu.walk(root, 0x20_1000, ctx=5).addr == new


def test_a_leaf_invalidation_keeps_the_path_a_fault_walks_again(rig: Rig, monkeypatch) -> None:
    """After a LEAF TLB_INVALIDATE (a munmap: PTEs cleared, tables kept) a
    command that faults on the range reads one PTE, the level-0 table's,
    where one without LEAF walks from the root."""
    mmu, va = rig.gpu.engine.mmu, 0x60_0000
    rig.drv.enable_faults()
    rig.drv.map(3, va, rig.page(0x11), RW)
    out = rig.drv.alloc(8)
    reads: list[int] = []
    real = mmu.mem.read_u64
    monkeypatch.setattr(mmu.mem, "read_u64", lambda addr: reads.append(addr) or real(addr))
    for flags, walked in ((hw.CmdFlags.LEAF, 1), (0, 4)):
        rig.drv.submit(3, Opcode.READ, (va, out, 8))  # the TLB and walk cache hold the page
        rig.run()
        rig.drv.unmap(3, va)
        rig.drv.submit(3, Opcode.TLB_INVALIDATE, (va, hw.PAGE_SIZE), flags=flags)
        rig.run()
        reads.clear()
        rig.drv.submit(3, Opcode.READ, (va, out, 8))
        rig.run()
        assert rig.drv.faults()[0].va == va
        assert len(reads) == walked, (flags, reads)
        rig.drv.map(3, va, rig.page(0x11), RW)
        rig.drv.replay(3)
        rig.run()
    assert rig.gpu.engine.sanitizer.count == 0



def test_a_walk_that_misses_at_level_0_keeps_its_table_for_the_replay(rig: Rig,
                                                                      monkeypatch) -> None:
    """The fault's walk reached the level-0 table and found the PTE invalid:
    the walk after the driver writes it (the REPLAY's) reads that one PTE."""
    mmu, root = rig.gpu.engine.mmu, rig.drv.context(6)
    rig.drv.map(6, 0x60_0000, rig.page(0x11), RW)  # the tables of 0x60_0000's 2 MiB
    mmu.invalidate(6)  # as after a munmap: nothing cached
    assert mmu.walk(root, 0x60_1000, ctx=6) is None
    reads: list[int] = []
    real = mmu.mem.read_u64
    monkeypatch.setattr(mmu.mem, "read_u64", lambda addr: reads.append(addr) or real(addr))
    page = rig.page(0x22)
    rig.drv.map(6, 0x60_1000, page, RW)
    assert mmu.walk(root, 0x60_1000, ctx=6).addr == page
    assert reads == [rig.drv.pte_slot(6, 0x60_1000, 0)]
    # an invalid upper level leaves nothing cached: the next walk is a full one
    reads.clear()
    assert mmu.walk(root, 0x1_0000_0000, ctx=6) is None
    assert mmu.walk(root, 0x1_0000_0000, ctx=6) is None
    assert len(reads) == 2 * len(set(reads))

@settings(max_examples=300, deadline=None)
@given(st.one_of(st.integers(0, (1 << 64) - 1),  # reserved bits, mostly
                 st.integers(0, (1 << 64) - 1).map(lambda b: b & ~hw.PTE_RESERVED_MASK),
                 st.integers(0, 16 << 20).map(  # a plain VRAM leaf, in VRAM or past it
                     lambda b: b & ~(Pte.LARGE | Pte.PEER | hw.PTE_PEER_MASK << hw.PTE_PEER_SHIFT)
                     | Pte.VRAM)),
       st.sampled_from([0, int(Pte.VALID)]))
@example(bits=(12 << 20) | Pte.VRAM | Pte.READ, valid=int(Pte.VALID))  # past the 8 MiB VRAM
@example(bits=(4 << 20) | Pte.VRAM | Pte.READ, valid=int(Pte.VALID))
def test_a_walk_through_the_walk_cache_agrees_with_a_full_walk(bits: int, valid: int) -> None:
    """Any leaf PTE (flags, reserved bits, LARGE, VRAM past the end, peer
    bits): the walk that reads it from the cached level-0 table returns or
    raises what a walk from the root does."""
    rig = Rig()
    mmu, root = rig.gpu.engine.mmu, rig.drv.context(4)
    rig.drv.map(4, 0x40_0000, rig.page(), RW)
    assert mmu.walk(root, 0x40_0000, ctx=4) is not None  # the walk cache has the table
    rig.drv.set_u64(rig.drv.pte_slot(4, 0x40_1000, 0), bits | valid)

    def outcome(ctx: int | None) -> object:
        try:
            return mmu.walk(root, 0x40_1234, ctx)
        except DeviceError as e:
            return (e.code, e.addr)
    assert outcome(4) == outcome(None)


# ---- commands ----------------------------------------------------------------------

def test_copy_between_system_memory_and_vram_round_trips(rig: Rig) -> None:
    src, back = rig.drv.alloc(3 * 4096), rig.drv.alloc(3 * 4096)
    data = np.random.default_rng(1).integers(0, 256, 3 * 4096, dtype=np.uint8)
    rig.drv.view(src, data.size)[:] = data
    rig.drv.submit(K, Opcode.COPY, (src, 0x10000, data.size),
                   flags=hw.cmd_flags(Aperture.SYS, Aperture.VRAM))
    rig.drv.submit(K, Opcode.COPY, (0x10000, back, data.size),
                   flags=hw.cmd_flags(Aperture.VRAM, Aperture.SYS))
    rig.run()
    assert np.array_equal(rig.gpu.vram.array[0x10000:0x10000 + data.size], data)
    assert np.array_equal(rig.drv.view(back, data.size), data)


def test_copy_pages_gathers_listed_pages_into_vram_and_scatters_them_back(rig: Rig) -> None:
    pages = [rig.page(0x10 + i) for i in range(3)][::-1]  # not in address order
    lst = rig.drv.alloc(8 * len(pages), 8)
    rig.drv.view(lst, 8 * len(pages))[:] = np.array(pages, dtype="<u8").view(np.uint8)
    status = rig.status_word()
    rig.drv.submit(K, Opcode.COPY_PAGES, (lst, 0x20000, len(pages)), status=status)
    rig.run()
    assert rig.drv.u64(status) == ErrorCode.NONE
    vram = rig.gpu.vram.array
    for k, fill in enumerate((0x12, 0x11, 0x10)):  # page k of the list -> VRAM page k
        assert (vram[0x20000 + k * 4096:0x20000 + (k + 1) * 4096] == fill).all()
    vram[0x20000:0x20000 + 3 * 4096] = 0x77
    rig.drv.submit(K, Opcode.COPY_PAGES, (lst, 0x20000, len(pages)), status=status,
                   flags=hw.CmdFlags.TO_SYS)
    rig.run()
    assert rig.drv.u64(status) == ErrorCode.NONE
    assert all((rig.drv.view(p, 4096) == 0x77).all() for p in pages)


@pytest.mark.parametrize("case", ["no pages", "too many", "list unaligned", "vram unaligned",
                                  "page unaligned", "page unmapped"])
def test_a_malformed_copy_pages_fails_with_its_documented_error(rig: Rig, case: str) -> None:
    page = rig.page(0x5A)
    lst = rig.drv.alloc(16, 8)
    bad = {"page unaligned": page + 8, "page unmapped": 0x7000_0000_0000}.get(case, page)
    rig.drv.view(lst, 16)[:] = np.array([page, bad], dtype="<u8").view(np.uint8)
    args = {"no pages": (lst, 0, 0), "too many": (lst, 0, hw.MAX_COPY_PAGES + 1),
            "list unaligned": (lst + 4, 0, 1), "vram unaligned": (lst, 8, 1)}.get(case, (lst, 0, 2))
    status = rig.status_word()
    rig.drv.submit(K, Opcode.COPY_PAGES, args, status=status)
    rig.run()
    want = ErrorCode.DMA_UNMAPPED if case == "page unmapped" else ErrorCode.BAD_COMMAND
    assert rig.drv.u64(status) == want
    assert rig.reg(Reg.ERROR) == want


def test_copy_between_device_virtual_ranges_spans_pages_and_apertures(rig: Rig) -> None:
    a, b = rig.page(), rig.page()
    rig.drv.view(a, 4096)[:] = np.arange(4096) % 251
    rig.drv.view(b, 4096)[:] = np.arange(4096) % 241
    rig.drv.map(5, 0x10000, a, RW)
    rig.drv.map(5, 0x11000, b, RW)
    rig.drv.map(5, 0x80000, 0x3000, RW | Pte.VRAM)
    rig.drv.map(5, 0x81000, 0x7000, RW | Pte.VRAM)
    rig.drv.submit(5, Opcode.COPY, (0x10800, 0x80100, 4096),
                   flags=hw.cmd_flags(Aperture.VA, Aperture.VA))
    rig.run()
    expect = np.concatenate([np.arange(2048, 4096) % 251, np.arange(2048) % 241])
    vram = rig.gpu.vram.array
    got = np.concatenate([vram[0x3100:0x4000], vram[0x7000:0x7100]])
    assert np.array_equal(got, expect.astype(np.uint8))


def test_fill_writes_a_32bit_pattern(rig: Rig) -> None:
    dst = rig.drv.alloc(64)
    rig.drv.submit(K, Opcode.FILL, (dst, 64, 0xA1B2C3D4))
    rig.run()
    assert rig.drv.read(dst, 64) == bytes.fromhex("d4c3b2a1") * 16


def test_read_and_write_move_data_between_va_and_a_bounce_buffer(rig: Rig) -> None:
    page, bounce = rig.page(), rig.drv.alloc(256)
    rig.drv.map(7, 0x5000, page, RW)
    rig.drv.write(bounce, bytes(range(256)))
    rig.drv.submit(7, Opcode.WRITE, (0x5010, bounce, 256))
    rig.run()
    assert rig.drv.read(page + 0x10, 256) == bytes(range(256))
    out = rig.drv.alloc(256)
    rig.drv.submit(7, Opcode.READ, (0x5010, out, 256))
    rig.run()
    assert rig.drv.read(out, 256) == bytes(range(256))


def test_atomic_fetch_add_and_swap_need_the_atomic_permission(rig: Rig) -> None:
    page, old = rig.page(), rig.drv.alloc(8, 8)
    rig.drv.set_u64(page + 8, 40)
    rig.drv.map(2, 0x9000, page, RW | Pte.ATOMIC)
    rig.drv.submit(2, Opcode.ATOMIC, (0x9008, 2, old))
    rig.run()
    assert (rig.drv.u64(page + 8), rig.drv.u64(old)) == (42, 40)
    rig.drv.submit(2, Opcode.ATOMIC, (0x9008, 7, old), flags=hw.cmd_flags(
        atomic=hw.AtomicOp.SWAP))
    rig.run()
    assert (rig.drv.u64(page + 8), rig.drv.u64(old)) == (7, 42)
    rig.drv.map(2, 0x9000, page, RW)  # no ATOMIC bit
    rig.drv.submit(2, Opcode.TLB_INVALIDATE, (0x9000, 4096))
    rig.drv.submit(2, Opcode.ATOMIC, (0x9008, 1, old))
    rig.run()
    (f,) = rig.drv.faults()
    assert (f.reason, f.access) == (hw.FaultReason.PERMISSION, Access.ATOMIC)


def test_fence_writes_its_value_and_can_interrupt(rig: Rig) -> None:
    addr, value = rig.drv.fence(K, irq=True)
    rig.run()
    assert rig.drv.u64(addr) == value
    assert rig.irqs == [hw.IrqVector.COMPLETION]
    assert rig.reg(Reg.INTR_STATUS) & hw.IntrStatus.COMPLETION
    rig.gpu.mmio_write(Reg.INTR_STATUS, 4, hw.IntrStatus.COMPLETION)
    assert rig.reg(Reg.INTR_STATUS) == 0


def test_status_word_reports_success_and_nop_completes(rig: Rig) -> None:
    status = rig.status_word()
    rig.drv.set_u64(status, 0xFFFF)
    rig.drv.submit(K, Opcode.NOP, status=status)
    rig.run()
    assert rig.drv.u64(status) == 0
    assert rig.drv.qreg(K, QReg.COMPLETED) == 1
    assert rig.drv.qreg(K, QReg.HEAD) == 1


def test_a_context_queue_uses_its_own_page_table_whatever_cmd_ctx_says(rig: Rig) -> None:
    mine, other = rig.page(0x01), rig.page(0x02)
    rig.drv.map(1, 0x1000, mine, RW)
    rig.drv.map(0, 0x1000, other, RW)
    out = rig.drv.alloc(8)
    rig.drv.submit(1, Opcode.READ, (0x1000, out, 8), ctx=0)
    rig.run()
    assert rig.drv.read(out, 8) == b"\x01" * 8


# ---- faults ---------------------------------------------------------------------------

def test_fault_stalls_the_queue_until_replay(rig: Rig) -> None:
    out = rig.drv.alloc(8)
    rig.drv.submit(3, Opcode.READ, (0x40_0000, out, 8))
    rig.run()
    (f,) = rig.drv.faults()
    assert (f.va, f.ctx, f.queue, f.access, f.reason) == (
        0x40_0000, 3, 3, Access.READ, hw.FaultReason.NOT_PRESENT)
    assert rig.drv.qreg(3, QReg.STATUS) & hw.QueueStatus.STALLED
    assert rig.irqs == [hw.IrqVector.FAULT]
    rig.drv.map(3, 0x40_0000, rig.page(0x5A), RW)
    rig.drv.replay(3)
    rig.run()
    assert rig.drv.read(out, 8) == b"\x5a" * 8
    assert rig.drv.qreg(3, QReg.STATUS) == 0


def test_cancel_completes_the_command_with_an_error_and_the_queue_goes_on(rig: Rig) -> None:
    status, out = rig.status_word(), rig.drv.alloc(8)
    rig.drv.submit(4, Opcode.READ, (0x1000, out, 8), status=status)
    addr, value = rig.drv.fence(4)
    rig.run()
    assert rig.drv.u64(addr) != value, "the fence waits behind the stalled command"
    rig.drv.faults()
    rig.drv.cancel(4)
    rig.run()
    assert rig.drv.u64(status) == ErrorCode.FAULT_CANCELLED
    assert rig.drv.qreg(4, QReg.ERROR) == ErrorCode.FAULT_CANCELLED
    assert rig.drv.u64(addr) == value
    # the driver asked for it: not a device error (docs/hardware.md, Errors)
    assert (rig.reg(Reg.ERROR), rig.reg(Reg.ERROR_COUNT)) == (0, 0)
    assert hw.IrqVector.ERROR not in rig.irqs
    assert not rig.reg(Reg.INTR_STATUS) & hw.IntrStatus.ERROR


def test_status_reads_running_while_work_is_pending_and_never_with_stalled(rig: Rig) -> None:
    out = rig.drv.alloc(8)
    rig.drv.submit(3, Opcode.READ, (0x40_0000, out, 8))
    assert rig.drv.qreg(3, QReg.STATUS) == hw.QueueStatus.RUNNING
    rig.run()
    assert rig.drv.qreg(3, QReg.STATUS) == hw.QueueStatus.STALLED
    rig.drv.map(3, 0x40_0000, rig.page(), RW)
    rig.drv.replay(3)
    assert rig.drv.qreg(3, QReg.STATUS) == hw.QueueStatus.RUNNING
    rig.run()
    assert rig.drv.qreg(3, QReg.STATUS) == 0


def test_queue_reset_keeps_completed(rig: Rig) -> None:
    for _ in range(3):
        rig.drv.submit(5, Opcode.NOP)
    rig.run()
    rig.gpu.mmio_write(hw.queue_reg(5, QReg.CONTROL), 4, hw.QueueControl.RESET)
    assert (rig.drv.qreg(5, QReg.HEAD), rig.drv.qreg(5, QReg.COMPLETED)) == (0, 3)


def test_a_va_to_va_copy_faults_its_source_first_then_its_destination(rig: Rig) -> None:
    """docs/hardware.md, Replayable faults: one batch, one access type."""
    copy = hw.cmd_flags(Aperture.VA, Aperture.VA)
    rig.drv.submit(6, Opcode.COPY, (0x10000, 0x20000, 4096), flags=copy)
    rig.run()
    assert [(f.va, f.access) for f in rig.drv.faults()] == [(0x10000, Access.READ)]
    src, dst = rig.page(0x3C), rig.page()
    rig.drv.map(6, 0x10000, src, Pte.READ)
    rig.drv.replay(6)
    rig.run()
    assert [(f.va, f.access) for f in rig.drv.faults()] == [(0x20000, Access.WRITE)]
    rig.drv.map(6, 0x20000, dst, RW)
    rig.drv.replay(6)
    rig.run()
    assert rig.drv.read(dst, 4096) == b"\x3c" * 4096


def test_all_missing_pages_of_a_command_fault_as_one_batch(rig: Rig) -> None:
    out = rig.drv.alloc(4 * 4096)
    rig.drv.map(6, 0x11000, rig.page(), RW)  # only the 2nd of four pages is mapped
    rig.drv.submit(6, Opcode.READ, (0x10000, out, 4 * 4096))
    rig.run()
    faults = rig.drv.faults()
    assert [f.va for f in faults] == [0x10000, 0x12000, 0x13000]
    assert rig.irqs == [hw.IrqVector.FAULT]
    assert faults[0].timestamp <= faults[-1].timestamp
    # FAULT_LAST on the batch's last record only: a polling driver knows it is whole
    assert [f.last for f in faults] == [False, False, True]


def test_each_commands_fault_batch_ends_with_its_own_last_record(rig: Rig) -> None:
    outs = {q: rig.drv.alloc(2 * 4096) for q in (1, 2)}
    for q in (1, 2):
        rig.drv.submit(q, Opcode.READ, (0x40000, outs[q], 2 * 4096))
    rig.run()
    faults = rig.drv.faults()
    assert [(f.ctx, f.va, f.last) for f in faults] == [
        (1, 0x40000, False), (1, 0x41000, True), (2, 0x40000, False), (2, 0x41000, True)]


def test_faults_in_two_contexts_are_handled_independently(rig: Rig) -> None:
    outs = {q: rig.drv.alloc(8) for q in (1, 2)}
    for q in (1, 2):
        rig.drv.submit(q, Opcode.READ, (0x7000, outs[q], 8))
    rig.run()
    assert {f.ctx for f in rig.drv.faults()} == {1, 2}
    rig.drv.map(2, 0x7000, rig.page(0x77), RW)
    rig.drv.replay(2)
    rig.run()
    assert rig.drv.read(outs[2], 8) == b"\x77" * 8
    assert rig.drv.qreg(1, QReg.STATUS) & hw.QueueStatus.STALLED


def test_full_fault_buffer_counts_overflow(rig: Rig) -> None:
    rig.drv.enable_faults(entries=4)  # holds 3 records
    out = rig.drv.alloc(8 * 4096)
    rig.drv.submit(1, Opcode.READ, (0x100000, out, 8 * 4096))
    rig.run()
    faults = rig.drv.faults()
    assert len(faults) == 3
    assert rig.reg(Reg.FAULT_OVERFLOW) == 5
    # the last record written ends the batch, whatever was lost after it
    assert [f.last for f in faults] == [False, False, True]


# ---- errors ----------------------------------------------------------------------------

def run_bad(rig: Rig, q: int, opcode: int, args: tuple[int, ...], flags: int = 0,
            ctx: int = 0) -> int:
    status = rig.status_word()
    rig.drv.submit(q, opcode, args, flags=flags, ctx=ctx, status=status)
    addr, value = rig.drv.fence(q)
    rig.run()
    assert rig.drv.u64(addr) == value, "the queue continues after a failed command"
    assert hw.IrqVector.ERROR in rig.irqs
    assert rig.reg(Reg.ERROR) == rig.drv.u64(status)
    return rig.drv.u64(status)


@pytest.mark.parametrize("opcode, args, flags, ctx, code", [
    (99, (), 0, 0, ErrorCode.BAD_OPCODE),
    (Opcode.COPY, (0x10, 0x20, 16), 0, 0, ErrorCode.DMA_UNMAPPED),
    (Opcode.COPY, (BUS, 8 << 20, 16), hw.cmd_flags(Aperture.SYS, Aperture.VRAM), 0,
     ErrorCode.VRAM_RANGE),
    (Opcode.COPY, (BUS, BUS + 64, 0), 0, 0, ErrorCode.BAD_COMMAND),
    (Opcode.COPY, (BUS, BUS + 64, 16), 3 << hw.DST_APERTURE_SHIFT, 0, ErrorCode.BAD_COMMAND),
    (Opcode.FILL, (BUS + 2, 16, 0), 0, 0, ErrorCode.BAD_COMMAND),
    (Opcode.FENCE, (BUS + 4, 1), 0, 0, ErrorCode.BAD_COMMAND),
    (Opcode.READ, (0x1000, BUS, 8), 0, 16, ErrorCode.CONTEXT),
    (Opcode.COPY, ((1 << 64) - 8, BUS, 16), 0, 0, ErrorCode.BAD_COMMAND),
])
def test_malformed_commands_fail_with_their_code(rig: Rig, opcode, args, flags, ctx,
                                                 code) -> None:
    assert run_bad(rig, K, opcode, args, flags, ctx) == code


def error_addr(rig: Rig) -> int:
    return rig.reg(Reg.ERROR_ADDR_LO) | rig.reg(Reg.ERROR_ADDR_HI) << 32


VA_END = 1 << hw.VA_BITS
FILL_SYS = hw.cmd_flags(dst=Aperture.SYS)


@pytest.mark.parametrize("q, opcode, args, flags, ctx, code, addr", [
    (K, 99, (), 0, 0, ErrorCode.BAD_OPCODE, 99),
    (K, Opcode.COPY, (0x10, 0x20, 16), 0, 0, ErrorCode.DMA_UNMAPPED, 0x10),
    (K, Opcode.COPY, (BUS, 8 << 20, 16), hw.cmd_flags(Aperture.SYS, Aperture.VRAM), 0,
     ErrorCode.VRAM_RANGE, 8 << 20),
    (K, Opcode.COPY, (BUS, BUS + 64, 0), 0, 0, ErrorCode.BAD_COMMAND, BUS),
    (K, Opcode.COPY, (BUS, BUS + 64, 16), 3 << hw.DST_APERTURE_SHIFT, 0,
     ErrorCode.BAD_COMMAND, 3),
    (K, Opcode.FILL, (BUS + 2, 16, 0), 0, 0, ErrorCode.BAD_COMMAND, BUS + 2),
    (K, Opcode.FILL, (BUS, 16, 1 << 32 | 5), FILL_SYS, 0, ErrorCode.BAD_COMMAND, 1 << 32 | 5),
    (K, Opcode.FENCE, (BUS + 4, 1), 0, 0, ErrorCode.BAD_COMMAND, BUS + 4),
    (K, Opcode.READ, (0x1000, BUS, 8), 0, 16, ErrorCode.CONTEXT, 16),
    (K, Opcode.NOP, (), 0, 99, ErrorCode.CONTEXT, 99),
    (3, Opcode.NOP, (), 0, 5, ErrorCode.CONTEXT, 5),
    (K, Opcode.COPY, ((1 << 64) - 8, BUS, 16), 0, 0, ErrorCode.BAD_COMMAND, (1 << 64) - 8),
    (K, Opcode.READ, (VA_END - 8, BUS, 16), 0, 1, ErrorCode.BAD_COMMAND, VA_END - 8),
    (2, Opcode.WRITE, (VA_END, BUS, 8), 0, 0, ErrorCode.BAD_COMMAND, VA_END),
    (2, Opcode.ATOMIC, (0x9000, 1, 0), 5 << hw.ATOMIC_OP_SHIFT, 0, ErrorCode.BAD_COMMAND, 5),
    (K, Opcode.NOP, (), 1 << 30, 0, ErrorCode.BAD_COMMAND, 1 << 30),
])
def test_error_addr_holds_what_the_manual_says_for_each_code(
        rig: Rig, q, opcode, args, flags, ctx, code, addr) -> None:
    """docs/hardware.md, Errors: the ERROR_ADDR column. None of these may
    fault (the VA ones have no mapping): a malformed command is an error."""
    assert run_bad(rig, q, opcode, args, flags, ctx) == code
    assert error_addr(rig) == addr
    assert rig.reg(Reg.FAULT_PUT) == 0, "a malformed command faulted"


def test_reserved_field_is_rejected(rig: Rig) -> None:
    ring = rig.drv.queue(K)
    rig.drv.submit(K, Opcode.NOP, ring_doorbell=False)
    rig.drv.view(ring, 16)[12:16] = 1  # reserved u32
    rig.drv.doorbell(K)
    rig.run()
    assert rig.reg(Reg.ERROR) == ErrorCode.BAD_COMMAND


def test_fault_without_a_fault_buffer_fails_the_command(rig: Rig) -> None:
    rig.gpu.mmio_write(Reg.FAULT_SIZE, 4, 0)
    assert run_bad(rig, 2, Opcode.READ, (0x1000, BUS, 8)) == ErrorCode.FAULT_BUFFER


def test_tail_past_ring_size_halts_only_that_queue(rig: Rig) -> None:
    rig.drv.queue(1)
    rig.gpu.mmio_write(hw.queue_reg(1, QReg.TAIL), 4, rig.drv.RING_ENTRIES)
    assert rig.drv.qreg(1, QReg.STATUS) & hw.QueueStatus.HALTED
    assert rig.reg(Reg.ERROR) == ErrorCode.QUEUE_CONFIG
    assert rig.reg(Reg.ERROR_QUEUE) == 1
    addr, value = rig.drv.fence(2)
    rig.run()
    assert rig.drv.u64(addr) == value, "other queues keep running"


def test_ring_size_not_a_power_of_two_halts_the_queue(rig: Rig) -> None:
    rig.drv.queue(3)
    rig.gpu.mmio_write(hw.queue_reg(3, QReg.RING_SIZE), 4, 100)
    rig.gpu.mmio_write(hw.queue_reg(3, QReg.TAIL), 4, 1)
    rig.run()
    assert rig.drv.qreg(3, QReg.STATUS) & hw.QueueStatus.HALTED
    assert rig.drv.qreg(3, QReg.ERROR) == ErrorCode.QUEUE_CONFIG
    rig.gpu.mmio_write(hw.queue_reg(3, QReg.CONTROL), 4, hw.QueueControl.RESET)
    assert rig.drv.qreg(3, QReg.STATUS) == 0


def test_ring_outside_guest_memory_halts_the_queue(rig: Rig) -> None:
    rig.gpu.mmio_write(hw.queue_reg(5, QReg.RING_BASE_LO), 4, 0x1000)
    rig.gpu.mmio_write(hw.queue_reg(5, QReg.RING_SIZE), 4, 16)
    rig.gpu.mmio_write(hw.queue_reg(5, QReg.TAIL), 4, 1)
    rig.run()
    assert rig.drv.qreg(5, QReg.ERROR) == ErrorCode.DMA_UNMAPPED
    assert rig.drv.qreg(5, QReg.STATUS) & hw.QueueStatus.HALTED


def test_no_dma_while_bus_master_is_off(rig: Rig) -> None:
    dst = rig.drv.alloc(16)
    rig.bus_master = False
    rig.drv.submit(K, Opcode.FILL, (dst, 16, 0x01010101))
    rig.run()
    assert rig.drv.read(dst, 16) == bytes(16)
    assert rig.drv.qreg(K, QReg.ERROR) == ErrorCode.BUS_MASTER_OFF


def test_device_reset_returns_queues_and_fault_buffer_to_reset_state(rig: Rig) -> None:
    rig.drv.submit(3, Opcode.READ, (0x1000, BUS, 8))
    rig.run()
    rig.gpu.mmio_write(Reg.DEVICE_RESET, 4, 1)
    for q in (3, K):
        for r in (QReg.RING_BASE_LO, QReg.RING_SIZE, QReg.HEAD, QReg.TAIL, QReg.STATUS,
                  QReg.ERROR, QReg.PT_BASE_LO):
            assert rig.drv.qreg(q, r) == 0, (q, r.name)
    for r in hw.REGISTERS:
        if r.access != "WO" and r.reset is not None and r.reg not in (
                Reg.VRAM_SIZE_LO, Reg.VRAM_SIZE_HI, Reg.IRQ_COUNT):
            assert rig.reg(r.reg) == r.reset, r.reg.name


def test_random_commands_only_produce_documented_errors(rig: Rig) -> None:
    """Garbage in every field: each command completes with a documented code,
    no internal error, and a fence on another queue still lands."""
    rng = np.random.default_rng(1234)
    page = rig.page()
    rig.drv.map(1, 0x1000, page, RW | Pte.ATOMIC)
    rig.drv.map(1, 0x20_0000, 0x20_0000, RW | Pte.VRAM, large=True)
    interesting = [0, 1, 8, 0x1000, 0x1ff8, 0x20_0000, BUS, BUS + 8, page, 1 << 63,
                   (1 << 64) - 1, 8 << 20, (8 << 20) - 8]
    codes = set()
    for _ in range(3000):
        q = int(rng.choice([1, K]))
        args = [interesting[int(rng.integers(len(interesting)))] if rng.random() < 0.7 else
                int(rng.integers(0, 1 << 63)) for _ in range(5)]
        args[2] = int(rng.choice([0, 1, 4, 8, 64, 4096, 5000]))  # keep lengths sane
        flags = int(rng.integers(0, 1 << 20)) if rng.random() < 0.3 else int(
            rng.integers(0, 16)) << 8
        status = rig.status_word()
        rig.drv.submit(q, int(rng.integers(0, 10)), tuple(args), flags=flags,
                       ctx=int(rng.choice([0, 1, 15, 16, 1 << 31])), status=status)
        rig.run()
        if rig.drv.qreg(q, QReg.STATUS) & hw.QueueStatus.STALLED:
            rig.drv.faults()
            rig.drv.cancel(q)
            rig.run()
        codes.add(ErrorCode(rig.drv.u64(status)))
    assert rig.gpu.engine.internal_errors == 0
    assert len(codes) > 4, codes
    addr, value = rig.drv.fence(2)
    rig.run()
    assert rig.drv.u64(addr) == value


def test_a_4k_page_at_a_2m_boundary_does_not_answer_for_its_neighbours(rig: Rig) -> None:
    """Regression: the TLB once returned the 4 KiB page at 2 MiB for any VA of
    that 2 MiB, and the engine looped forever."""
    first, second = rig.page(0x01), rig.page(0x02)
    rig.drv.map(1, 0x20_0000, first, RW)
    rig.drv.map(1, 0x20_1000, second, RW)
    out = rig.drv.alloc(8192)
    rig.drv.submit(1, Opcode.READ, (0x20_0000, out, 4096))
    rig.drv.submit(1, Opcode.READ, (0x20_0000, out, 8192))
    rig.run()
    assert rig.drv.read(out, 8192) == b"\x01" * 4096 + b"\x02" * 4096


def test_a_va_range_over_touching_ram_regions_reads_across_the_seam() -> None:
    """Pages that are contiguous in bus addresses merge into one run; a run may
    cross from one DMA region into the next where they touch, not over a gap."""
    mem = GuestMemory()
    a, b = np.full(4096, 1, np.uint8), np.full(4096, 2, np.uint8)
    mem.add_array(0x10000, a)
    mem.add_array(0x11000, b)
    got = np.concatenate(mem.views(0x10800, 4096))
    assert got.tolist() == [1] * 2048 + [2] * 2048
    with pytest.raises(DeviceError):
        mem.views(0x11800, 4096)  # runs past the second region into nothing


def test_an_atomic_on_a_read_only_dma_mapping_is_refused_and_traced_as_a_write(
        rig: Rig, tmp_path) -> None:
    """ATOMIC writes: through a read-only DMA mapping it fails with
    DMA_UNMAPPED and leaves the word alone; through a writable one the trace
    records the 8 bytes as a DMA write."""
    ro_bus = 0x2_0000_0000
    ro = np.full(hw.PAGE_SIZE, 0x11, dtype=np.uint8)
    rig.mem.add_array(ro_bus, ro, writable=False)
    status = rig.status_word()
    rig.drv.map(2, 0x9000, ro_bus, RW | Pte.ATOMIC)
    rig.drv.submit(2, Opcode.ATOMIC, (0x9008, 1, 0), status=status)
    rig.run()
    assert rig.drv.u64(status) == ErrorCode.DMA_UNMAPPED
    assert (ro == 0x11).all()
    page = rig.page(0)
    rig.drv.map(3, 0x9000, page, RW | Pte.ATOMIC)
    rig.gpu.engine.trace.start()
    rig.drv.submit(3, Opcode.ATOMIC, (0x9008, 5, 0))
    rig.run()
    rig.gpu.engine.trace.stop()
    rig.gpu.engine.trace.dump(tmp_path / "t.hmmtrace")
    r = trace.load(tmp_path / "t.hmmtrace").records
    w = r[r["kind"] == Kind.DMA_WRITE]
    assert [(int(a), int(n)) for a, n in zip(w["addr"], w["length"], strict=True)] == \
        [(page + 8, 8)]
    assert rig.drv.u64(page + 8) == 5


def test_a_reset_while_a_command_executes_drops_it_and_head_stays_on_tail(
        rig: Rig, monkeypatch) -> None:
    """The driver resets a queue (after a fence timeout) while the worker is
    inside a command: the command does not complete into the new ring (no
    status write, HEAD not advanced past TAIL), so no stale slot runs again."""
    engine = rig.gpu.engine
    status = rig.status_word()
    rig.drv.set_u64(status, 0xDEAD)
    real = engine.execute

    def reset_midway(queue, cmd) -> None:
        real(queue, cmd)
        rig.gpu.mmio_write(hw.queue_reg(queue.index, QReg.CONTROL), 4, hw.QueueControl.RESET)

    monkeypatch.setattr(engine, "execute", reset_midway)
    rig.drv.submit(K, Opcode.NOP, status=status)
    rig.drv.submit(K, Opcode.NOP)
    rig.run()
    q = engine.queues[K]
    assert (q.head, q.tail, q.runnable) == (0, 0, False)
    assert rig.drv.u64(status) == 0xDEAD
    assert rig.reg(hw.queue_reg(K, QReg.COMPLETED)) == 0


def test_resets_of_a_busy_queue_always_leave_it_empty(rig: Rig) -> None:
    """The worker thread runs 1 MiB copies while the driver resets the queue
    50 times at varying moments: after each reset the queue is empty
    (HEAD == TAIL == 0) once the worker is done with what it held, and the
    next submission runs normally."""
    import random
    import time

    engine = rig.gpu.engine
    src, dst = rig.drv.alloc(1 << 20), rig.drv.alloc(1 << 20)
    engine.start()
    try:
        for i in range(50):
            for _ in range(8):
                rig.drv.submit(K, Opcode.COPY, (src, dst, 1 << 20))
            time.sleep(random.Random(i).random() * 0.002)
            rig.gpu.mmio_write(hw.queue_reg(K, QReg.CONTROL), 4, hw.QueueControl.RESET)
            rig.drv.tails[K] = 0
            engine.pause()  # the worker is between commands: what it held is settled
            q = engine.queues[K]
            assert (q.head, q.tail, q.runnable) == (0, 0, False), i
            engine.resume()
        status = rig.status_word()
        rig.drv.set_u64(status, 0xDEAD)
        rig.drv.submit(K, Opcode.NOP, status=status)
        deadline = time.monotonic() + 5
        while rig.drv.u64(status) == 0xDEAD and time.monotonic() < deadline:
            time.sleep(0.001)
        assert rig.drv.u64(status) == 0
    finally:
        engine.stop()


@pytest.mark.parametrize("opcode", list(Opcode), ids=lambda o: o.name)
def test_a_flag_bit_the_opcode_does_not_define_is_a_bad_command(rig: Rig, opcode) -> None:
    """hwdef.CMD_FLAGS_VALID per opcode: e.g. FILL takes only the destination
    aperture, READ/WRITE/FENCE no aperture at all; bit 30 is nobody's."""
    valid = hw.CMD_FLAGS_VALID[opcode]
    stray = next(b for b in (1 << hw.SRC_APERTURE_SHIFT, 1 << 16, 1 << 30) if not b & valid)
    status = rig.status_word()
    rig.drv.submit(K, opcode, (0, 0, 0), flags=stray, status=status)
    rig.run()
    assert rig.drv.u64(status) == ErrorCode.BAD_COMMAND
    assert rig.reg(Reg.ERROR_ADDR_LO) == stray


# ---- the direct COPY path ------------------------------------------------------------

_SYS_OR_VRAM = [Aperture.SYS, Aperture.VRAM]


@pytest.mark.parametrize("seed", range(4))
def test_an_untraced_copy_does_what_the_traced_one_does_errors_included(seed: int) -> None:
    """A COPY between system memory and VRAM with the trace off takes the
    engine's direct path (executor._copy_direct), with it on the general one:
    for random COPYs, valid or not (unmapped or out-of-range addresses,
    length 0, wrapping ranges), both rigs end with the same memory, statuses,
    ERROR code and ERROR_ADDR."""
    rng = np.random.default_rng(seed)
    rigs = [Rig(ram_size=1 << 20, vram_size=1 << 20) for _ in range(2)]
    rigs[1].gpu.engine.trace.start()  # flight recorder: the general path
    fill = rng.integers(0, 256, 1 << 20, dtype=np.uint8)
    for r in rigs:
        r.ram[:] = fill
        r.gpu.vram.array[:] = fill[::-1]
    for _ in range(60):
        src_ap, dst_ap = (_SYS_OR_VRAM[int(i)] for i in rng.integers(0, 2, 2))
        length = int(rng.choice([0, 8, 4096, 5000, 1 << 16, 1 << 21]))

        def addr(ap: Aperture) -> int:
            base = BUS if ap == Aperture.SYS else 0
            return int(rng.choice([base + int(rng.integers(0, 1 << 20)), base + (1 << 20) - 8,
                                   (1 << 64) - 4096, 0x10]))

        src, dst = addr(src_ap), addr(dst_ap)
        outcome = []
        for r in rigs:
            status = r.status_word()
            r.drv.submit(K, Opcode.COPY, (src, dst, length), flags=hw.cmd_flags(src_ap, dst_ap),
                         status=status)
            r.run()
            outcome.append((r.drv.u64(status), r.reg(Reg.ERROR),
                            r.reg(Reg.ERROR_ADDR_LO) | r.reg(Reg.ERROR_ADDR_HI) << 32))
        assert outcome[0] == outcome[1], (src_ap, src, dst_ap, dst, length)
    assert np.array_equal(rigs[0].ram, rigs[1].ram)
    assert np.array_equal(rigs[0].gpu.vram.array, rigs[1].gpu.vram.array)
    assert rigs[1].gpu.engine.trace.recorded > 0


@pytest.mark.parametrize("seed", range(4))
def test_an_untraced_copy_pages_does_what_the_traced_one_does_errors_included(seed: int) -> None:
    """COPY_PAGES with the trace off is one gather or scatter
    (executor._copy_pages_direct), with it on page by page: for random lists
    both ways, valid or not (a page listed twice, unaligned, unmapped, the
    VRAM range past the end), both rigs end with the same memory, statuses,
    ERROR code and ERROR_ADDR."""
    rng = np.random.default_rng(seed)
    rigs = [Rig(ram_size=1 << 20, vram_size=1 << 20) for _ in range(2)]
    rigs[1].gpu.engine.trace.start()
    fill = rng.integers(0, 256, 1 << 20, dtype=np.uint8)
    for r in rigs:
        r.ram[:] = fill
        r.gpu.vram.array[:] = fill[::-1]
    lst = rigs[0].drv.alloc(8 * 64, 8)
    assert rigs[1].drv.alloc(8 * 64, 8) == lst
    for _ in range(60):
        n = int(rng.integers(1, 65))
        pages = BUS + 4096 * rng.integers(1, 256, n)
        kind = rng.integers(0, 6)
        if kind == 1:
            pages[rng.integers(0, n)] = pages[0]  # a page twice
        elif kind == 2:
            pages[rng.integers(0, n)] += 8
        elif kind == 3:
            pages[rng.integers(0, n)] = 0x7000_0000_0000
        vram = int(rng.choice([0, 4096 * int(rng.integers(0, 256)), (1 << 20) - 4096]))
        to_sys = hw.CmdFlags.TO_SYS if rng.integers(0, 2) else 0
        outcome = []
        for r in rigs:
            r.drv.view(lst, 8 * n)[:] = pages.astype("<u8").view(np.uint8)
            status = r.status_word()
            r.drv.submit(K, Opcode.COPY_PAGES, (lst, vram, n), flags=to_sys, status=status)
            r.run()
            outcome.append((r.drv.u64(status), r.reg(Reg.ERROR),
                            r.reg(Reg.ERROR_ADDR_LO) | r.reg(Reg.ERROR_ADDR_HI) << 32))
        assert outcome[0] == outcome[1], (kind, vram, to_sys, n)
    assert np.array_equal(rigs[0].ram, rigs[1].ram)
    assert np.array_equal(rigs[0].gpu.vram.array, rigs[1].gpu.vram.array)


# ---- deferred execution (the server's MMIO thread) ----------------------------------

@pytest.fixture
def deferred(rig: Rig):
    """The rig's engine with defer on and its worker running; yields the
    engine and the names of the threads that execute each command."""
    import threading

    engine = rig.gpu.engine
    engine.defer = True
    seen: list[str] = []
    execute = engine.execute

    def spy(queue, cmd) -> None:
        seen.append(threading.current_thread().name)
        execute(queue, cmd)

    engine.execute = spy
    engine.start()
    yield engine, seen
    engine.stop()


def _wait_status(rig: Rig, status: int, timeout: float = 5.0) -> int:
    import time

    deadline = time.monotonic() + timeout
    while rig.drv.u64(status) == 0xDEAD and time.monotonic() < deadline:
        time.sleep(0.001)
    return rig.drv.u64(status)


def _nop(rig: Rig, q: int = K) -> int:
    status = rig.status_word()
    rig.drv.set_u64(status, 0xDEAD)
    rig.drv.submit(q, Opcode.NOP, status=status)
    return status


def test_with_defer_a_doorbell_runs_on_the_thread_that_calls_run_deferred(rig: Rig,
                                                                         deferred) -> None:
    """The server's MMIO thread calls run_deferred() after the doorbell's
    reply: the command runs there, and the idle worker is not woken for it."""
    import threading
    import time

    engine, seen = deferred
    status = _nop(rig)
    time.sleep(0.05)
    assert rig.drv.u64(status) == 0xDEAD, "nothing runs before run_deferred()"
    engine.run_deferred()
    assert rig.drv.u64(status) == 0
    assert seen == [threading.current_thread().name]


def test_with_defer_a_replay_runs_on_the_thread_that_calls_run_deferred(rig: Rig,
                                                                       deferred) -> None:
    import threading

    engine, seen = deferred
    out = rig.drv.alloc(8)
    rig.drv.submit(3, Opcode.READ, (0x9000, out, 8))
    engine.run_deferred()
    assert [f.va for f in rig.drv.faults()] == [0x9000]
    rig.drv.map(3, 0x9000, rig.page(0x5A), RW)
    rig.drv.replay(3)
    engine.run_deferred()
    assert rig.drv.read(out, 8) == b"\x5a" * 8
    assert seen == [threading.current_thread().name] * 2


def test_run_deferred_says_whether_a_submission_left_work(rig: Rig, deferred) -> None:
    """The server polls its socket after a call that ran submitted work (the
    driver is busy with the device), and sleeps after one that did not."""
    engine, _ = deferred
    assert engine.run_deferred() is False  # nothing rang
    status = _nop(rig)
    assert engine.run_deferred() is True
    assert rig.drv.u64(status) == 0
    assert engine.run_deferred() is False


def test_the_server_polls_until_a_message_or_the_end_of_its_window() -> None:
    import os

    from hmmgpu.device.server import poll_readable

    r, w = os.pipe()
    try:
        assert poll_readable(r, 2_000_000) is False  # nothing came: back to select()
        os.write(w, b"x")
        assert poll_readable(r, 10**12) is True  # returns at once, not at the window's end
    finally:
        os.close(r)
        os.close(w)


def test_deferred_work_past_its_budget_goes_to_the_worker(rig: Rig, deferred,
                                                          monkeypatch) -> None:
    """The MMIO thread gives run_deferred() DEFER_BUDGET_NS: what is left after
    it (here all of it) is the worker's, so MMIO stays responsive."""
    from hmmgpu.device import engine as engine_mod

    monkeypatch.setattr(engine_mod, "DEFER_BUDGET_NS", -1)
    engine, seen = deferred
    status = _nop(rig)
    engine.run_deferred()
    assert _wait_status(rig, status) == 0
    assert seen == ["hmmgpu-engine"]


def test_deferred_work_waits_while_paused_and_the_worker_runs_it_after(rig: Rig,
                                                                      deferred) -> None:
    """libvfio-user quiesces the device (pause) around DMA map changes: a
    doorbell then is not run by run_deferred(); resume() hands it to the worker."""
    import time

    engine, seen = deferred
    engine.pause()
    status = _nop(rig)
    engine.run_deferred()
    time.sleep(0.05)
    assert rig.drv.u64(status) == 0xDEAD and seen == []
    engine.resume()
    assert _wait_status(rig, status) == 0
    assert seen == ["hmmgpu-engine"]


# ---- poll words ----------------------------------------------------------------------

def _poll_words(rig: Rig) -> int:
    words = rig.drv.alloc(hw.POLL_AREA_SIZE, 4)
    rig.gpu.mmio_write(Reg.POLL_BASE_LO, 4, words & 0xFFFFFFFF)
    rig.gpu.mmio_write(Reg.POLL_BASE_HI, 4, words >> 32)
    return words


def _set_word(rig: Rig, words: int, q: int, value: int) -> None:
    rig.drv.write(words + 4 * q, value.to_bytes(4, "little"))


def test_a_polled_queues_completion_sends_no_interrupt(rig: Rig) -> None:
    words = _poll_words(rig)
    _set_word(rig, words, K, hw.PollWord.COMPLETION)
    addr, value = rig.drv.fence(K, irq=True)
    rig.run()
    assert rig.drv.u64(addr) == value
    assert rig.irqs == [] and rig.reg(Reg.IRQ_HELD) == 1
    assert rig.reg(Reg.INTR_STATUS) & hw.IntrStatus.COMPLETION
    # another queue's word is its own; and a cleared word lets the interrupt out
    rig.drv.fence(5, irq=True)
    _set_word(rig, words, K, 0)
    rig.drv.fence(K, irq=True)
    rig.run()
    assert rig.irqs == [hw.IrqVector.COMPLETION] * 2 and rig.reg(Reg.IRQ_HELD) == 1


def test_a_polled_queues_fault_sends_no_interrupt_but_writes_its_records(rig: Rig) -> None:
    words = _poll_words(rig)
    _set_word(rig, words, 3, hw.PollWord.FAULT)
    _set_word(rig, words, 4, hw.PollWord.COMPLETION)  # polls fences only
    for q in (3, 4):
        rig.drv.submit(q, Opcode.READ, (0x8000, rig.drv.alloc(8), 8))
    rig.run()
    assert [(f.queue, f.last) for f in rig.drv.faults()] == [(3, True), (4, True)]
    assert rig.irqs == [hw.IrqVector.FAULT]  # queue 4's
    assert rig.reg(Reg.IRQ_HELD) == 1


def test_poll_words_never_hold_off_errors_and_outside_ram_are_none(rig: Rig) -> None:
    words = _poll_words(rig)
    _set_word(rig, words, K, 0xFFFFFFFF)
    rig.drv.submit(K, 99)  # BAD_OPCODE
    rig.run()
    assert rig.irqs == [hw.IrqVector.ERROR]
    rig.gpu.mmio_write(Reg.POLL_BASE_HI, 4, 0x7000)  # no guest RAM there
    rig.drv.fence(K, irq=True)
    rig.run()
    assert rig.irqs[-1] == hw.IrqVector.COMPLETION and rig.reg(Reg.IRQ_HELD) == 0
    rig.gpu.mmio_write(Reg.DEVICE_RESET, 4, 1)
    assert rig.reg(Reg.POLL_BASE_LO) == rig.reg(Reg.POLL_BASE_HI) == 0


# ---- replay words -------------------------------------------------------------------

def _watch_word(rig: Rig, words: int, q: int) -> int:
    return int.from_bytes(rig.drv.read(words + hw.WATCH_WORDS_OFFSET + 4 * q, 4), "little")


def _set_replay_word(rig: Rig, words: int, q: int, count: int) -> None:
    rig.drv.write(words + hw.REPLAY_WORDS_OFFSET + 4 * q, count.to_bytes(4, "little"))


def _stall(rig: Rig, words: int, q: int, va: int, poll: int = hw.PollWord.FAULT) -> int:
    """A READ of unmapped `va` on queue q, whose poll word is `poll`: stalled."""
    _set_word(rig, words, q, poll)
    status = rig.status_word()
    rig.drv.set_u64(status, 0xDEAD)
    rig.drv.submit(q, Opcode.READ, (va, rig.drv.alloc(8), 8), status=status)
    rig.run()
    assert rig.drv.qreg(q, QReg.STATUS) & hw.QueueStatus.STALLED
    rig.drv.faults()
    return status


def _control_replay(rig: Rig, q: int, count: int) -> None:
    rig.gpu.mmio_write(hw.queue_reg(q, QReg.CONTROL), 4,
                       hw.QueueControl.REPLAY | count << hw.REPLAY_COUNT_SHIFT)


def test_a_polling_drivers_fault_is_replayed_through_its_replay_word(rig: Rig, deferred,
                                                                    monkeypatch) -> None:
    """The queue stalled while its poll word had POLL_FAULT: the device
    watches its replay word (WATCH_ACTIVE); a new count there replays the
    command with no CONTROL write, and the watch word then names the count
    taken. A CONTROL REPLAY carrying that count crossed it and is dropped.
    (The window is made longer than the test: on a loaded host 150 us can
    pass before this thread looks at the watch word.)"""
    import threading
    import time

    from hmmgpu.device import engine as engine_mod

    monkeypatch.setattr(engine_mod, "REPLAY_WATCH_NS", 60 * 10**9)
    engine, _ = deferred
    words = _poll_words(rig)
    q, page = 3, rig.page(0x5A)
    engine.mmio_pending = lambda: False  # as the server's MMIO thread, with no message
    _set_word(rig, words, q, hw.PollWord.FAULT)
    status = rig.status_word()
    rig.drv.set_u64(status, 0xDEAD)
    rig.drv.submit(q, Opcode.READ, (0x40_0000, rig.drv.alloc(8), 8), status=status)
    watcher = threading.Thread(target=engine.run_deferred)
    watcher.start()
    deadline = time.monotonic() + 5
    while not _watch_word(rig, words, q) & hw.WATCH_ACTIVE:
        assert time.monotonic() < deadline, "the device never watched"
    (f,) = rig.drv.faults()
    rig.drv.map(q, f.va, page, RW)
    _set_replay_word(rig, words, q, 1)
    assert _wait_status(rig, status) == 0
    watcher.join(5)
    assert rig.reg(Reg.REPLAYS_WATCHED) == 1
    assert _watch_word(rig, words, q) == 1 << hw.REPLAY_COUNT_SHIFT  # took 1, not watching
    # the next stall of the queue: a CONTROL write with the taken count is stale
    status = _stall(rig, words, q, 0x60_0000, poll=0)
    _control_replay(rig, q, 1)
    rig.run()
    assert rig.drv.qreg(q, QReg.STATUS) & hw.QueueStatus.STALLED
    rig.drv.map(q, 0x60_0000, page, RW)
    _control_replay(rig, q, 2)
    rig.run()
    assert rig.drv.u64(status) == 0 and rig.reg(Reg.REPLAYS_WATCHED) == 1


@pytest.mark.parametrize("how", ["doorbell", "cancel"])
def test_work_on_another_queue_ends_a_watch_and_runs(rig: Rig, deferred, monkeypatch,
                                                     how: str) -> None:
    """While the MMIO thread watches queue 3's replay word, a doorbell on
    queue 4, or a CANCEL of stalled queue 5 with a command queued behind the
    cancelled one, is new work: the watch hands over (the window here is far
    longer than the test) and the worker runs it, then watches on."""
    import threading
    import time

    from hmmgpu.device import engine as engine_mod

    monkeypatch.setattr(engine_mod, "REPLAY_WATCH_NS", 60 * 10**9)
    engine, _ = deferred
    words = _poll_words(rig)
    engine.mmio_pending = lambda: False  # as the server's MMIO thread, with no message
    status = rig.status_word()
    rig.drv.set_u64(status, 0xDEAD)
    if how == "cancel":  # stalled and not watched (its driver does not poll)
        _set_word(rig, words, 5, 0)
        rig.drv.submit(5, Opcode.READ, (0x70_0000, rig.drv.alloc(8), 8))
        engine.run_deferred()
        assert rig.drv.qreg(5, QReg.STATUS) & hw.QueueStatus.STALLED
        rig.drv.submit(5, Opcode.NOP, status=status)  # waits behind the stalled READ
    _set_word(rig, words, 3, hw.PollWord.FAULT)
    rig.drv.submit(3, Opcode.READ, (0x40_0000, rig.drv.alloc(8), 8))
    watcher = threading.Thread(target=engine.run_deferred)
    watcher.start()
    deadline = time.monotonic() + 5
    while not _watch_word(rig, words, 3) & hw.WATCH_ACTIVE:
        assert time.monotonic() < deadline, "the device never watched"
    assert rig.drv.u64(status) == 0xDEAD
    if how == "doorbell":
        rig.drv.submit(4, Opcode.NOP, status=status)
    else:
        rig.drv.cancel(5)
    assert _wait_status(rig, status) == 0
    watcher.join(5)
    assert not watcher.is_alive()
    assert rig.gpu.engine.queues[3] in rig.gpu.engine._watched  # the worker watches on


def test_a_queue_whose_driver_does_not_poll_for_faults_is_not_watched(rig: Rig) -> None:
    words = _poll_words(rig)
    _stall(rig, words, 3, 0x40_0000, poll=hw.PollWord.COMPLETION)
    assert _watch_word(rig, words, 3) == 0 and rig.gpu.engine._watched == []
    _set_replay_word(rig, words, 3, 1)
    rig.gpu.engine._poll_replays()
    assert rig.drv.qreg(3, QReg.STATUS) & hw.QueueStatus.STALLED, "a count nobody watched"


def test_when_the_watch_window_closes_the_replay_takes_a_control_write(rig: Rig,
                                                                      monkeypatch) -> None:
    from hmmgpu.device import engine as engine_mod

    monkeypatch.setattr(engine_mod, "REPLAY_WATCH_NS", 0)
    words = _poll_words(rig)
    status = _stall(rig, words, 3, 0x40_0000)
    assert _watch_word(rig, words, 3) & hw.WATCH_ACTIVE
    rig.gpu.engine._poll_replays()  # the window closed: the watch ends
    assert _watch_word(rig, words, 3) == 0 and rig.gpu.engine._watched == []
    rig.drv.map(3, 0x40_0000, rig.page(), RW)
    _set_replay_word(rig, words, 3, 1)  # the driver: count, then the watch word says
    rig.gpu.engine._poll_replays()      # not watching and 0 taken: CONTROL
    rig.run()
    assert rig.drv.u64(status) == 0xDEAD
    _control_replay(rig, 3, 1)
    rig.run()
    assert rig.drv.u64(status) == 0 and rig.reg(Reg.REPLAYS_WATCHED) == 0


def test_a_glance_ends_at_the_first_changed_replay_word(rig: Rig, monkeypatch) -> None:
    """Between the watch's locked looks the device glances at the replay
    words, and stops as soon as one changed (the locked look takes it)."""
    from hmmgpu.device import engine as engine_mod

    monkeypatch.setattr(engine_mod, "REPLAY_WATCH_NS", 60 * 10**9)
    engine = rig.gpu.engine
    words = _poll_words(rig)
    _stall(rig, words, 3, 0x40_0000)
    _stall(rig, words, 5, 0x40_0000)
    reads: list[int] = []
    read = engine.poll.read
    monkeypatch.setattr(engine.poll, "read", lambda offset: reads.append(offset) or read(offset))
    engine._glance()  # nothing new: every round looks at both
    assert len(reads) == 2 * engine_mod.GLANCES
    reads.clear()
    _set_replay_word(rig, words, 5, 1)
    engine._glance()
    assert reads == [hw.REPLAY_WORDS_OFFSET + 12, hw.REPLAY_WORDS_OFFSET + 20]
    assert engine.queues[5].status & hw.QueueStatus.STALLED  # a glance takes nothing
    assert engine._poll_replays() is engine.queues[5]


def test_a_count_stored_as_the_window_closes_is_taken_by_the_last_look(rig: Rig,
                                                                      monkeypatch) -> None:
    """The driver stores its count just after the device's first look and
    reads the watch word before the device clears it: it writes no CONTROL,
    so the device's look after clearing WATCH_ACTIVE must take the count."""
    from hmmgpu.device import engine as engine_mod

    monkeypatch.setattr(engine_mod, "REPLAY_WATCH_NS", 0)
    words = _poll_words(rig)
    status = _stall(rig, words, 3, 0x40_0000)
    rig.drv.map(3, 0x40_0000, rig.page(), RW)
    poll, looks = rig.gpu.engine.poll, []
    read = poll.read

    def racing_read(offset: int) -> int:
        value = read(offset)
        if offset == hw.REPLAY_WORDS_OFFSET + 12:
            looks.append(value)
            _set_replay_word(rig, words, 3, 7)  # the driver, between the two looks
        return value

    monkeypatch.setattr(poll, "read", racing_read)
    rig.gpu.engine._poll_replays()
    monkeypatch.setattr(poll, "read", read)
    assert looks == [0, 7]
    assert _watch_word(rig, words, 3) == 7 << hw.REPLAY_COUNT_SHIFT
    rig.run()
    assert rig.drv.u64(status) == 0 and rig.reg(Reg.REPLAYS_WATCHED) == 1
    _control_replay(rig, 3, 7)  # a driver that read the word cleared: dropped
    assert rig.gpu.engine.queues[3].status == 0


def test_cancel_and_reset_end_a_watch(rig: Rig) -> None:
    words = _poll_words(rig)
    status = _stall(rig, words, 3, 0x40_0000)
    rig.drv.cancel(3)
    rig.run()
    assert rig.drv.u64(status) == ErrorCode.FAULT_CANCELLED
    assert _watch_word(rig, words, 3) == 0 and rig.gpu.engine._watched == []
    _stall(rig, words, 4, 0x40_0000)
    rig.gpu.mmio_write(hw.queue_reg(4, QReg.CONTROL), 4, hw.QueueControl.RESET)
    assert _watch_word(rig, words, 4) == 0 and rig.gpu.engine._watched == []
    _stall(rig, words, 5, 0x40_0000)
    rig.gpu.mmio_write(Reg.DEVICE_RESET, 4, 1)
    assert rig.gpu.engine._watched == []


def test_the_trace_says_how_a_replay_came(rig: Rig, tmp_path) -> None:
    words = _poll_words(rig)
    engine = rig.gpu.engine
    engine.trace.start()
    _stall(rig, words, 3, 0x40_0000)
    rig.drv.map(3, 0x40_0000, rig.page(), RW)
    _set_replay_word(rig, words, 3, 1)
    engine._poll_replays()
    _control_replay(rig, 3, 1)
    rig.run()
    engine.trace.dump(tmp_path / "t.hmmtrace")
    records = trace.load(tmp_path / "t.hmmtrace").of_kind(Kind.REPLAY)
    assert [int(f) for f in records["flags"]] == [1 | trace.REPLAY_WORD, trace.REPLAY_STALE]


@pytest.mark.parametrize("seed", range(4))
def test_an_untraced_va_copy_does_what_the_traced_one_does_faults_included(seed: int) -> None:
    """A COPY between device-virtual ranges with the trace off takes the
    executor's short paths for a range in one page or running into the next
    (executor._two_pages), with it on the general one: over random page
    tables (pages read-only or writable, contiguous or not, in VRAM, missing)
    and random ranges of up to three pages, at any offset, both rigs end with
    the same memory, statuses, errors and fault records."""
    rng = np.random.default_rng(seed)
    rigs = [Rig(ram_size=1 << 21, vram_size=1 << 20) for _ in range(2)]
    rigs[1].gpu.engine.trace.start()  # flight recorder: the general path
    fill = rng.integers(0, 256, 1 << 21, dtype=np.uint8)
    base, pages = 0x40000, 16
    kinds = rng.integers(0, 5, pages)  # 0 missing, 1 read-only, 2-3 writable RAM, 4 VRAM
    frames = rng.permutation(pages)  # page k's frame: neighbours are contiguous or not
    data = []  # each rig's pages (the fault records' timestamps differ)
    for r in rigs:
        r.ram[:] = fill
        r.gpu.vram.array[:] = fill[::-2]
        ram = r.drv.alloc(pages * 4096)
        data.append(r.drv.view(ram, pages * 4096))
        for k, kind in enumerate(kinds):
            va = base + k * 4096
            if kind == 1:
                r.drv.map(6, va, ram + int(frames[k]) * 4096, Pte.READ)
            elif kind in (2, 3):
                r.drv.map(6, va, ram + int(frames[k] if kind == 2 else k) * 4096, RW)
            elif kind == 4:
                r.drv.map(6, va, int(frames[k]) * 4096, RW | Pte.VRAM)
    copy = hw.cmd_flags(Aperture.VA, Aperture.VA)
    for _ in range(100):
        length = int(rng.choice([8, 100, 4096, 4096 + 512, 8192]))
        src, dst = (base + int(rng.integers(0, pages * 4096 - length)) for _ in range(2))
        outcome = []
        for r in rigs:
            status = r.status_word()
            r.drv.submit(6, Opcode.COPY, (src, dst, length), flags=copy, status=status)
            r.run()
            faults = [(f.va, f.access) for f in r.drv.faults()]
            if faults:
                r.drv.cancel(6)
                r.run()
            outcome.append((faults, r.drv.u64(status), r.reg(Reg.ERROR),
                            r.reg(Reg.ERROR_ADDR_LO) | r.reg(Reg.ERROR_ADDR_HI) << 32))
        assert outcome[0] == outcome[1], (src, dst, length)
    assert np.array_equal(data[0], data[1])
    assert np.array_equal(rigs[0].gpu.vram.array, rigs[1].gpu.vram.array)
    assert rigs[1].gpu.engine.trace.recorded > 0
