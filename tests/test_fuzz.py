"""The fuzzer of the guest interface (host/fuzz.py): a short seeded run, the
inputs it found, and its invariants, each fired by a bug planted for it.
bench/bench_fuzz.py is the long, coverage-guided run (atheris)."""

from __future__ import annotations

import pytest

from hmmgpu.device import hwdef as hw
from hmmgpu.device.engine import Engine
from hmmgpu.device.gpu import Gpu
from hmmgpu.device.memory import GuestMemory
from hmmgpu.host import fuzz


def test_a_seeded_run_finds_nothing_and_reaches_every_opcode_and_error() -> None:
    stats = fuzz.seeded(seed=20261204, inputs=3000)
    assert [f.what for f in stats.findings] == []
    assert stats.operations > 30_000
    assert {op.name for op in hw.Opcode} | {"unknown"} <= set(stats.opcodes)
    # the device answered with many kinds of documented error, not one
    assert len(stats.codes) >= 9, stats.codes


# Found by the fuzzer: a 16-byte BAR0 read returned 8 bytes (libvfio-user's
# client then got an error instead of the documented zeros). The input: a
# register operation at an arbitrary offset (0x38), 16 bytes, a read.
BAR0_READ_16 = bytes([0, 2, 0x38, 0x00, 7, 0])


def test_found_inputs_stay_fixed() -> None:
    fuzz.run_input(BAR0_READ_16)


@pytest.mark.parametrize("count", [1, 2, 3, 4, 8, 16, 32])
def test_a_bar0_read_of_any_width_returns_that_many_bytes(count: int) -> None:
    gpu = Gpu()
    got = gpu.bar0_access(hw.Reg.SCRATCH, None, count)
    assert got is not None and len(got) == count


def plant_rom_write(monkeypatch) -> None:
    real = GuestMemory.view
    monkeypatch.setattr(GuestMemory, "view",
                        lambda self, addr, length, write=False: real(self, addr, length))


def plant_exception(monkeypatch) -> None:
    real = Engine.step

    def step(self, queue):
        if queue.index == fuzz.CTX:
            raise KeyError("planted")
        real(self, queue)
    monkeypatch.setattr(Engine, "step", step)


def plant_undocumented_code(monkeypatch) -> None:
    real = Engine.record_error
    monkeypatch.setattr(Engine, "record_error",
                        lambda self, *args, **kwargs: (real(self, *args, **kwargs),
                                                       setattr(self, "error", 99)))


def plant_hang(monkeypatch) -> None:
    monkeypatch.setattr(Engine, "_complete", lambda *a, **k: None)  # HEAD never moves


def plant_dead_after_reset(monkeypatch) -> None:
    real = Gpu.reset

    def reset(self):
        real(self)
        self.engine.queues[hw.KERNEL_QUEUE].status |= hw.QueueStatus.HALTED  # left halted
    monkeypatch.setattr(Gpu, "reset", reset)



@pytest.mark.parametrize("plant, finding", [
    (plant_rom_write, "read-only DMA region"),
    (plant_exception, "KeyError: 'planted'"),
    (plant_undocumented_code, "undocumented error code"),
    (plant_hang, "did not go idle"),
    (plant_dead_after_reset, "after DEVICE_RESET"),
])
def test_each_invariant_catches_its_planted_bug(monkeypatch, plant, finding) -> None:
    plant(monkeypatch)
    stats = fuzz.seeded(seed=7, inputs=300, stop_after=1)
    assert stats.findings, "the planted bug went unnoticed"
    assert finding in stats.findings[0].what
    assert stats.findings[0].data  # the input, to replay
