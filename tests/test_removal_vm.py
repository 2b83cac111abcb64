"""Removal under load through the real stack (host/removal.py): GPU 0 is
unbound and bound again, its module unloaded and loaded again, or the device
itself unplugged and plugged again with QMP, while hmm-tests run on it. Each
way, CYCLES times; then nothing may be left behind: every process exits,
every VRAM page is free, the interrupt lines are the ones there were (none
after rmmod), and free memory is where a warm-up of the same work left it.
A guest Oops, WARN, soft lockup or hung task fails the test. The 100-cycle
figures come from bench/bench_removal.py."""

from __future__ import annotations

import pytest

from hmmgpu.device import hwdef as hw
from hmmgpu.host.lab import Lab, LabConfig
from hmmgpu.host.removal import MODES, RemovalRun

pytestmark = pytest.mark.vm

CYCLES = 20
# one 2 MiB folio lost every other cycle would be 20 MiB; the idle noise of
# MemFree plus the per-CPU lists is under 1 MiB
LEAK_LIMIT_KB = 8 << 10


@pytest.mark.parametrize("mode", MODES)
def test_removal_under_load_leaves_nothing_behind(paths, mode: str) -> None:
    # GPUs without MSI-X only to unplug: QEMU 11.1 aborts otherwise (Lab.unplug_gpu)
    with Lab(LabConfig(gpus=1, memory_mb=2048, vram_mb=256, msix=mode != "unplug"),
             paths) as lab:
        lab.boot()
        since = lab.console.size()
        r = RemovalRun(lab, mode).run(CYCLES)
        lab.check_console(since)
    print(r.summary())
    assert r.runs > CYCLES, f"hmm-tests hardly ran: {r.summary()}"
    assert r.served_after, f"no whole hmm-tests run passed after the last cycle: {r.summary()}"
    assert not r.stuck, f"hmm-tests processes did not exit: {r.stuck}"
    assert r.vram[0] == r.vram[1] > 0, f"VRAM pages still in use: {r.summary()}"
    # without MSI-X the driver polls: no lines at all
    assert r.irq_lines[1] == r.irq_lines[0] == (hw.IRQ_VECTORS if mode != "unplug" else 0), \
        r.summary()
    assert r.irq_lines_unloaded == 0, r.summary()
    assert r.leaked_kb < LEAK_LIMIT_KB, f"memory left behind: {r.summary()}"
