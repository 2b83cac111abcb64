"""The hardware interface is defined once: the committed C header must be
exactly what device/hwdef.py generates."""

from __future__ import annotations

from hmmgpu.device import hwdef as hw
from hmmgpu.host.cli import HEADER


def test_committed_c_header_matches_hwdef() -> None:
    assert HEADER.read_text() == hw.render_c_header(), \
        "guest/include/hmmgpu_hw.h is stale: run 'hmmgpu hwdef --write'"


def test_register_offsets_are_unique_aligned_and_inside_bar0() -> None:
    offsets = [int(r) for r in hw.Reg]
    assert len(set(offsets)) == len(offsets)
    assert all(o % 4 == 0 and o < hw.BAR0_SIZE for o in offsets)
    assert {r.reg for r in hw.REGISTERS} == set(hw.Reg)


def test_msix_structures_fit_their_bar_and_bars_are_powers_of_two() -> None:
    for size in (hw.BAR0_SIZE, hw.MSIX_BAR_SIZE):
        assert size & (size - 1) == 0
    assert hw.MSIX_BAR != 0
    assert hw.MSIX_TABLE_OFFSET + 16 * hw.IRQ_VECTORS <= hw.MSIX_PBA_OFFSET
    assert hw.MSIX_PBA_OFFSET + 8 <= hw.MSIX_BAR_SIZE
