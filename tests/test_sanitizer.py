"""The driver sanitizer in-process: each check fires on the driver bug it is
for, names context, address, command and time, and stays quiet on correct use."""

from __future__ import annotations

import pytest
from engine_rig import RW, Rig

from hmmgpu.device import hwdef as hw
from hmmgpu.device.hwdef import Aperture, Opcode, Pte, QReg, Reg, SanCheck
from hmmgpu.device.sanitizer import STALE_GRACE_NS
from hmmgpu.device.trace import Kind

VA = 0x5000_0000



def read_va(rig: Rig, ctx: int, va: int, n: int = 64) -> int:
    out = rig.drv.alloc(hw.PAGE_SIZE)
    rig.drv.submit(ctx, Opcode.COPY, (va, out, n),
                   flags=hw.cmd_flags(src=Aperture.VA, dst=Aperture.SYS))
    rig.run()
    return out


def reports(rig: Rig) -> list[dict]:
    return rig.gpu.engine.sanitizer.take()["reports"]


def manual_clock(rig: Rig) -> list[int]:
    """The sanitizer's device clock, advanced by hand: t[0] += ns."""
    t = [0]
    rig.gpu.engine.sanitizer.clock = lambda: t[0]
    return t


def test_correct_use_is_silent(rig: Rig) -> None:
    page = rig.page(1)
    rig.drv.map(1, VA, page, RW)
    read_va(rig, 1, VA)
    rig.drv.map(1, VA, rig.page(2), RW)  # changed PTE, then invalidated: correct
    rig.drv.submit(hw.KERNEL_QUEUE, Opcode.TLB_INVALIDATE, (VA, hw.PAGE_SIZE), ctx=1)
    rig.run()
    read_va(rig, 1, VA)
    assert reports(rig) == [] and rig.reg(Reg.SAN_REPORTS) == 0


def test_a_tlb_entry_used_after_its_pte_changed_is_reported_once(rig: Rig) -> None:
    tr = rig.gpu.engine.trace
    tr.start()
    rig.drv.map(3, VA, rig.page(1), RW)
    read_va(rig, 3, VA)
    slot = rig.drv.map(3, VA, rig.page(2), RW)  # no TLB_INVALIDATE: a driver bug
    read_va(rig, 3, VA)
    read_va(rig, 3, VA)
    (r,) = reports(rig)
    assert r["check"] == "STALE_TLB" and r["ctx"] == 3 and r["queue"] == 3
    assert r["addr"] == VA and f"{slot:#x}" in r["detail"] and r["command"] == 1
    assert r["t_ns"] > 0 and rig.reg(Reg.SAN_REPORTS) == 1
    assert tr.stop()["recorded"] and any(row[1] == Kind.SANITIZER for row in tr._buf)
    # after an invalidation the check is armed again for the context
    rig.drv.submit(hw.KERNEL_QUEUE, Opcode.TLB_INVALIDATE, (0, 0), ctx=3)
    rig.run()
    read_va(rig, 3, VA)
    rig.drv.map(3, VA, rig.page(3), RW)
    read_va(rig, 3, VA)
    assert len(reports(rig)) == 2


def test_a_cleared_pte_may_be_used_until_its_invalidation_could_have_landed(rig: Rig) -> None:
    """Clear, then TLB_INVALIDATE is correct even if commands still use the
    entry in between: the one running, and others that start while the
    invalidation is on its way (the stress test had a READ start between the
    clear and the kernel queue's doorbell). A use STALE_GRACE_NS after the
    first one means the flush never came."""
    clock = manual_clock(rig)
    rig.drv.map(3, VA, rig.page(1), RW)
    read_va(rig, 3, VA)
    rig.drv.unmap(3, VA)  # cleared: the first half of an invalidation
    read_va(rig, 3, VA)  # this command saw the stale entry first: inside the window
    clock[0] += STALE_GRACE_NS // 2
    read_va(rig, 3, VA)  # a later one, the invalidation still on its way
    assert reports(rig) == []
    clock[0] += STALE_GRACE_NS
    read_va(rig, 3, VA)  # no invalidation came
    (r,) = reports(rig)
    assert r["check"] == "STALE_TLB" and "to 0x0" in r["detail"]
    rig.drv.submit(hw.KERNEL_QUEUE, Opcode.TLB_INVALIDATE, (VA, hw.PAGE_SIZE), ctx=3)
    rig.run()
    rig.gpu.engine.sanitizer.take(clear=True)
    rig.drv.map(3, VA, rig.page(2), RW)
    read_va(rig, 3, VA)
    rig.drv.unmap(3, VA)
    read_va(rig, 3, VA)
    rig.drv.submit(hw.KERNEL_QUEUE, Opcode.TLB_INVALIDATE, (VA, hw.PAGE_SIZE), ctx=3)
    rig.run()
    assert reports(rig) == []  # the correct sequence, with one use in the window


def test_a_pte_that_only_gains_permissions_is_not_stale(rig: Rig) -> None:
    """Found by the stress test: the driver adds ATOMIC to a PTE (device-
    exclusive access) and invalidates on another queue; a command using the
    old, weaker entry meanwhile is no bug."""
    page = rig.page(1)
    rig.drv.map(3, VA, page, Pte.READ)
    read_va(rig, 3, VA)
    rig.drv.map(3, VA, page, RW | Pte.ATOMIC)
    read_va(rig, 3, VA)
    read_va(rig, 3, VA)
    assert reports(rig) == []


def test_a_pte_that_loses_permissions_has_the_window_of_a_cleared_one(rig: Rig) -> None:
    clock = manual_clock(rig)
    page = rig.page(1)
    rig.drv.map(3, VA, page, RW)
    read_va(rig, 3, VA)
    rig.drv.map(3, VA, page, Pte.READ)  # write-protect (COW), invalidation on its way
    read_va(rig, 3, VA)
    read_va(rig, 3, VA)
    assert reports(rig) == []
    clock[0] += STALE_GRACE_NS
    read_va(rig, 3, VA)  # no invalidation came
    (r,) = reports(rig)
    assert r["check"] == "STALE_TLB"


def test_dma_outside_the_mapped_guest_memory_is_reported_with_its_command(rig: Rig) -> None:
    rig.drv.submit(hw.KERNEL_QUEUE, Opcode.FILL, (0x7_0000_0000, 64, 0),
                   flags=hw.cmd_flags(dst=Aperture.SYS))
    rig.run()
    (r,) = reports(rig)
    assert r["check"] == "DMA_UNMAPPED" and r["addr"] == 0x7_0000_0000
    assert r["queue"] == hw.KERNEL_QUEUE and r["command"] == 0


def test_a_pte_past_the_end_of_vram_is_reported(rig: Rig) -> None:
    rig.drv.map(2, VA, rig.gpu.vram.size, RW | Pte.VRAM)
    read_va(rig, 2, VA)
    (r,) = reports(rig)
    assert r["check"] == "VRAM_PTE" and r["ctx"] == 2


def test_a_pte_at_vram_the_driver_freed_is_reported(rig: Rig) -> None:
    def san(page: int, order: int, alloc: bool) -> None:
        rig.gpu.mmio_write(Reg.SAN_VRAM, 4, page << hw.SAN_PAGE_SHIFT
                           | order << hw.SAN_ORDER_SHIFT | (hw.SAN_VRAM_ALLOC if alloc else 0))

    san(0, 9, True)  # a 2 MiB folio at page 0
    rig.drv.map(4, VA, 5 * hw.PAGE_SIZE, RW | Pte.VRAM)
    read_va(rig, 4, VA)
    assert reports(rig) == []
    san(0, 9, False)  # freed, and the PTE still points there
    rig.drv.submit(hw.KERNEL_QUEUE, Opcode.TLB_INVALIDATE, (0, 0), ctx=4)
    rig.run()
    read_va(rig, 4, VA)
    (r,) = reports(rig)
    assert r["check"] == "VRAM_PTE" and "freed" in r["detail"] and r["addr"] == VA


def test_a_full_fault_buffer_is_reported(rig: Rig) -> None:
    rig.drv.enable_faults(entries=4)
    dst = rig.drv.alloc(16 * hw.PAGE_SIZE)
    rig.drv.submit(5, Opcode.COPY, (VA, dst, 16 * hw.PAGE_SIZE),
                   flags=hw.cmd_flags(src=Aperture.VA, dst=Aperture.SYS))
    rig.run()
    rs = reports(rig)
    assert rs and {r["check"] for r in rs} == {"FAULT_OVERFLOW"}
    assert rs[0]["ctx"] == 5 and rs[0]["addr"] == VA + 3 * hw.PAGE_SIZE


def test_a_command_with_bus_mastering_off_is_reported(rig: Rig) -> None:
    rig.bus_master = False
    rig.drv.submit(hw.KERNEL_QUEUE, Opcode.NOP)
    rig.run()
    (r,) = reports(rig)
    assert r["check"] == "BUS_MASTER_OFF" and r["queue"] == hw.KERNEL_QUEUE


def test_switched_off_it_reports_nothing(rig: Rig) -> None:
    rig.gpu.engine.set_sanitizer(False)
    rig.drv.map(3, VA, rig.page(1), RW)
    read_va(rig, 3, VA)
    rig.drv.map(3, VA, rig.page(2), RW)
    read_va(rig, 3, VA)
    rig.bus_master = False
    rig.drv.submit(hw.KERNEL_QUEUE, Opcode.NOP)
    rig.run()
    assert reports(rig) == []


def _stale_tlb(rig: Rig) -> None:
    rig.drv.map(3, VA, rig.page(1), RW)
    read_va(rig, 3, VA)
    rig.drv.map(3, VA, rig.page(2), RW)
    read_va(rig, 3, VA)


def _dma_unmapped(rig: Rig) -> None:
    rig.drv.submit(hw.KERNEL_QUEUE, Opcode.FENCE, (0x7_0000_0000, 1))
    rig.run()


def _vram_pte(rig: Rig) -> None:
    rig.drv.map(2, VA, rig.gpu.vram.size, RW | Pte.VRAM)
    read_va(rig, 2, VA)


def _fault_overflow(rig: Rig) -> None:
    rig.drv.enable_faults(entries=2)
    read_va(rig, 5, VA, 4 * hw.PAGE_SIZE)


def _bus_master_off(rig: Rig) -> None:
    rig.bus_master = False
    rig.drv.submit(hw.KERNEL_QUEUE, Opcode.NOP)
    rig.run()


def _stale_path(rig: Rig) -> None:
    """A driver frees a level-0 table (clears the level-1 entry to it) and
    invalidates with LEAF, which keeps the device's cached path to it."""
    rig.drv.map(3, VA, rig.page(1), RW)
    read_va(rig, 3, VA)
    rig.drv.set_u64(rig.drv.pte_slot(3, VA, 1), 0)
    rig.drv.submit(3, Opcode.TLB_INVALIDATE, (VA, hw.PAGE_SIZE), flags=hw.CmdFlags.LEAF)
    rig.run()


def test_a_leaf_invalidation_checks_only_the_paths_of_the_context_s_root(rig: Rig) -> None:
    """After PT_BASE moved to a new table, the walk cache's paths through the
    old one are never used again: a LEAF invalidation does not hold them to
    the old table's contents (freed, reused), so nothing is reported."""
    rig.drv.map(3, VA, rig.page(1), RW)
    read_va(rig, 3, VA)  # a path cached under the first root
    rig.drv.set_u64(rig.drv.pte_slot(3, VA, 1), 0)  # the old tables change, as if freed
    new_root = rig.drv.alloc(hw.PAGE_SIZE)
    rig.drv.roots[3] = new_root
    rig.gpu.mmio_write(hw.queue_reg(3, QReg.PT_BASE_LO), 4, new_root & 0xFFFFFFFF)
    rig.gpu.mmio_write(hw.queue_reg(3, QReg.PT_BASE_HI), 4, new_root >> 32)
    rig.drv.submit(3, Opcode.TLB_INVALIDATE, (VA, hw.PAGE_SIZE), flags=hw.CmdFlags.LEAF)
    rig.run()
    assert reports(rig) == []


BUGS = {SanCheck.STALE_TLB: _stale_tlb, SanCheck.DMA_UNMAPPED: _dma_unmapped,
        SanCheck.VRAM_PTE: _vram_pte, SanCheck.FAULT_OVERFLOW: _fault_overflow,
        SanCheck.BUS_MASTER_OFF: _bus_master_off, SanCheck.STALE_PATH: _stale_path}


@pytest.mark.parametrize("check", list(SanCheck), ids=lambda c: c.name)
def test_each_check_fires_on_its_bug_and_on_no_other(rig: Rig, check: SanCheck) -> None:
    """Every check the device defines (hwdef.SanCheck) has a bug that triggers
    it here and no other check: a new check without one fails this test."""
    assert check in BUGS, f"no bug in BUGS commits {check.name}"
    BUGS[check](rig)
    rs = reports(rig)
    assert rs and {r["check"] for r in rs} == {check.name}, rs
    assert rig.reg(Reg.SAN_REPORTS) == len(rs)
