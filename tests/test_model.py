"""The device model in-process: registers, reset values, interrupts, errors."""

from __future__ import annotations

from hmmgpu.device import hwdef as hw
from hmmgpu.device.gpu import Gpu


def make() -> tuple[Gpu, list[int]]:
    raised: list[int] = []
    return Gpu(raise_irq=lambda v: raised.append(v) is None), raised


def test_identity_registers_read_their_documented_values() -> None:
    gpu, _ = make()
    assert gpu.mmio_read(hw.Reg.ID, 4) == hw.ID_MAGIC
    assert gpu.mmio_read(hw.Reg.VERSION, 4) == (hw.VERSION_MAJOR << 16) | hw.VERSION_MINOR


def test_every_register_reads_its_reset_value_after_reset() -> None:
    gpu, _ = make()
    gpu.mmio_write(hw.Reg.SCRATCH, 4, 0xFFFFFFFF)
    gpu.mmio_write(hw.Reg.TEST_DOORBELL, 4, 99)  # sets ERROR, counts an interrupt
    gpu.engine.sanitizer.report(hw.SanCheck.STALE_TLB, 0, 0, 0, 0x1000, "a report")
    assert gpu.mmio_read(hw.Reg.SAN_REPORTS, 4) == 1
    gpu.mmio_write(hw.Reg.DEVICE_RESET, 4, 1)
    for r in hw.REGISTERS:
        if r.access != "WO" and r.reset is not None:
            assert gpu.mmio_read(r.reg, 4) == r.reset, r.reg.name
    assert len(gpu.engine.sanitizer.reports) == 1  # the report itself is kept


def test_scratch_round_trips_and_read_only_registers_ignore_writes() -> None:
    gpu, _ = make()
    gpu.mmio_write(hw.Reg.SCRATCH, 4, 0xDEADBEEF)
    gpu.mmio_write(hw.Reg.ID, 4, 0)
    assert gpu.mmio_read(hw.Reg.SCRATCH, 4) == 0xDEADBEEF
    assert gpu.mmio_read(hw.Reg.ID, 4) == hw.ID_MAGIC


def test_test_doorbell_raises_the_named_vector_and_counts_it() -> None:
    gpu, raised = make()
    gpu.mmio_write(hw.Reg.TEST_DOORBELL, 4, hw.IrqVector.TEST)
    gpu.mmio_write(hw.Reg.TEST_DOORBELL, 4, hw.IrqVector.COMPLETION)
    assert raised == [hw.IrqVector.TEST, hw.IrqVector.COMPLETION]
    assert gpu.mmio_read(hw.Reg.IRQ_COUNT, 4) == 2


def test_bad_vector_sets_error_and_raises_the_error_vector() -> None:
    gpu, raised = make()
    gpu.mmio_write(hw.Reg.TEST_DOORBELL, 4, hw.IRQ_VECTORS)
    assert gpu.mmio_read(hw.Reg.ERROR, 4) == hw.ErrorCode.BAD_VECTOR
    assert raised == [hw.IrqVector.ERROR]
    gpu.mmio_write(hw.Reg.ERROR, 4, 0)
    assert gpu.mmio_read(hw.Reg.ERROR, 4) == hw.ErrorCode.NONE


def test_misaligned_or_narrow_access_is_an_error_not_a_crash() -> None:
    gpu, raised = make()
    assert gpu.mmio_read(hw.Reg.SCRATCH + 1, 4) == 0
    gpu.mmio_write(hw.Reg.SCRATCH, 2, 0x1234)
    assert gpu.mmio_read(hw.Reg.ERROR, 4) == hw.ErrorCode.BAD_REGISTER
    assert gpu.mmio_read(hw.Reg.SCRATCH, 4) == 0
    assert raised == [hw.IrqVector.ERROR, hw.IrqVector.ERROR]


def test_undelivered_interrupts_are_counted_as_dropped() -> None:
    gpu = Gpu(raise_irq=lambda v: False)
    gpu.mmio_write(hw.Reg.TEST_DOORBELL, 4, 0)
    assert gpu.irq_dropped == 1


def test_vram_size_and_contexts_are_reported() -> None:
    gpu = Gpu(vram_size=96 << 20)
    assert gpu.mmio_read(hw.Reg.VRAM_SIZE_LO, 4) == 96 << 20
    assert gpu.mmio_read(hw.Reg.VRAM_SIZE_HI, 4) == 0
    assert gpu.mmio_read(hw.Reg.NUM_CONTEXTS, 4) == hw.NUM_CONTEXTS


def test_server_vram_option_parses_sizes() -> None:
    from hmmgpu.device.server import _size
    assert (_size("512M"), _size("1G"), _size("4096")) == (512 << 20, 1 << 30, 4096)


def test_a_register_hwdef_defines_but_the_model_does_not_implement_is_refused(
        monkeypatch) -> None:
    """The register file is checked against hwdef.REGISTERS when a GPU is made:
    a writable register without a writer cannot ship."""
    import pytest
    regs = tuple(hw.Register(r.reg, "RW", r.reset, r.doc) if r.reg == hw.Reg.ID else r
                 for r in hw.REGISTERS)
    monkeypatch.setattr(hw, "REGISTERS", regs)
    with pytest.raises(AssertionError, match="ID write"):
        make()
