"""Fault injection in the device model (device/inject.py): each kind fires in
its scope, as often as asked, is recorded in the trace, and the device works
again once it is gone. The same injections through the VM and the driver are
in tests/test_inject_vm.py."""

from __future__ import annotations

import time

import pytest
from engine_rig import Rig

from hmmgpu.device import hwdef as hw
from hmmgpu.device import trace
from hmmgpu.device.control import handle
from hmmgpu.device.hwdef import ErrorCode, Opcode, QReg, QueueStatus, Reg
from hmmgpu.device.inject import InjectKind, Injector

K = hw.KERNEL_QUEUE


def copy(rig: Rig, src: int, dst: int, q: int = K) -> int:
    """A COPY of one page; its status word's address."""
    status = rig.status_word()
    rig.drv.submit(q, Opcode.COPY, (src, dst, hw.PAGE_SIZE), status=status)
    rig.run()
    return rig.drv.u64(status)


def test_a_dma_error_fails_commands_touching_its_range_count_times(rig: Rig) -> None:
    bad, good, dst = rig.page(1), rig.page(2), rig.page()
    inj = rig.gpu.engine.inject.add({"kind": "dma_error", "start": bad, "end": bad + 4096,
                                     "count": 2})
    assert copy(rig, good, dst) == ErrorCode.NONE  # outside the range
    assert copy(rig, bad, dst) == ErrorCode.DMA_UNMAPPED
    assert copy(rig, dst, bad + 2048) == ErrorCode.DMA_UNMAPPED  # a write overlapping it
    assert copy(rig, bad, dst) == ErrorCode.NONE  # count used up: removed
    assert inj.hits == 2 and rig.gpu.engine.inject.list() == []


def injected_records(rig: Rig, tmp_path) -> list[tuple[int, int]]:
    rec = rig.gpu.engine.trace
    rec.stop()
    path = tmp_path / "i.hmmtrace"
    rec.dump(path)
    r = trace.load(path).records
    sel = r[r["kind"] == trace.Kind.INJECT]
    return [(int(a), int(v)) for a, v in zip(sel["aux"], sel["va"], strict=True)]


def test_every_hit_is_a_trace_record_with_its_kind_and_id(rig: Rig, tmp_path) -> None:
    bad, dst = rig.page(1), rig.page()
    rig.gpu.engine.trace.start()
    inj = rig.gpu.engine.inject.add({"kind": "dma_error", "start": bad, "end": bad + 1,
                                     "count": 1})
    copy(rig, bad, dst)
    assert injected_records(rig, tmp_path) == [(InjectKind.DMA_ERROR, inj.id)]


def test_a_hung_queue_shows_running_until_reset_and_others_go_on(rig: Rig) -> None:
    src, dst = rig.page(7), rig.page()
    rig.gpu.engine.inject.add({"kind": "hang", "queue": K, "count": 1})
    rig.drv.submit(K, Opcode.COPY, (src, dst, hw.PAGE_SIZE))
    rig.run()
    status = QueueStatus(rig.drv.qreg(K, QReg.STATUS))
    assert status & QueueStatus.RUNNING and rig.drv.qreg(K, QReg.HEAD) == 0
    assert (rig.drv.view(dst, 16) == 0).all()
    addr, value = rig.drv.fence(1)  # another queue is not held up
    rig.run()
    assert rig.drv.u64(addr) == value
    # the driver's recovery: reset the queue, submit again
    rig.gpu.mmio_write(hw.queue_reg(K, QReg.CONTROL), 4, hw.QueueControl.RESET)
    rig.drv.tails[K] = 0
    assert copy(rig, src, dst) == ErrorCode.NONE
    assert (rig.drv.view(dst, 16) == 7).all()


def test_a_lost_interrupt_is_not_delivered_and_the_next_one_is(rig: Rig) -> None:
    rig.gpu.engine.inject.add({"kind": "irq_lost", "vector": int(hw.IrqVector.COMPLETION),
                               "count": 1})
    for _ in range(2):
        rig.drv.fence(K, irq=True)
        rig.run()
    assert rig.irqs == [hw.IrqVector.COMPLETION]  # one of two
    assert rig.gpu.mmio_read(Reg.IRQ_COUNT, 4) == 2  # both were raised


def test_a_slow_device_takes_the_delay_per_command(rig: Rig) -> None:
    rig.gpu.engine.inject.add({"kind": "slow", "queue": K, "delay_us": 20_000})
    t0 = time.monotonic()
    for _ in range(3):
        rig.drv.fence(K)
    rig.run()
    assert time.monotonic() - t0 >= 0.06


def test_a_gone_device_reads_all_ones_runs_nothing_and_comes_back(rig: Rig) -> None:
    src, dst = rig.page(9), rig.page()
    rig.drv.queue(K)  # the ring is set up before the device goes
    inj = rig.gpu.engine.inject.add({"kind": "gone"})
    assert rig.gpu.mmio_read(Reg.ID, 4) == 0xFFFF_FFFF
    assert rig.gpu.bar0_access(Reg.SCRATCH, None, 8) == b"\xff" * 8
    rig.gpu.mmio_write(Reg.SCRATCH, 4, 5)  # dropped
    rig.drv.submit(K, Opcode.COPY, (src, dst, hw.PAGE_SIZE))
    rig.run()
    assert (rig.drv.view(dst, 16) == 0).all()
    rig.gpu.engine.inject.remove(inj.id)
    assert rig.gpu.mmio_read(Reg.ID, 4) == hw.ID_MAGIC
    assert rig.gpu.mmio_read(Reg.SCRATCH, 4) == 0
    rig.run()
    assert (rig.drv.view(dst, 16) == 0).all()  # its doorbell was dropped with the device
    rig.drv.doorbell(K)
    rig.run()
    assert (rig.drv.view(dst, 16) == 9).all()


def test_scope_probability_and_count() -> None:
    inj = Injector(seed=1)
    inj.add({"kind": "hang", "queue": 3, "ctx": 3, "probability": 0.5})
    assert inj.hit(InjectKind.HANG, 4, 3) is None and inj.hit(InjectKind.HANG, 3, 4) is None
    hits = sum(inj.hit(InjectKind.HANG, 3, 3) is not None for _ in range(1000))
    assert 400 < hits < 600
    assert inj.hit(InjectKind.SLOW, 3, 3) is None


@pytest.mark.parametrize("spec, error", [
    ({"kind": "melt"}, "injection kind 'melt'"),
    ({"kind": "hang", "colour": 1}, "unknown injection field(s): colour"),
    ({"kind": "dma_error", "start": 8, "end": 8}, "empty address range"),
    ({"kind": "slow"}, "slow needs delay_us"),
    ({"kind": "hang", "probability": 2}, "probability 2"),
    ({"kind": "hang", "count": -1}, "count -1"),
    ({"kind": "hang", "queue": "x"}, "queue 'x'"),
])
def test_a_malformed_injection_is_refused_with_what_is_wrong(spec, error) -> None:
    inj = Injector()
    with pytest.raises(ValueError, match=error.replace("(", r"\(").replace(")", r"\)")):
        inj.add(spec)
    assert inj.list() == []


def test_the_control_socket_adds_lists_and_removes(rig: Rig) -> None:
    e = rig.gpu.engine
    added = handle(e.trace, {"op": "inject", "add": {"kind": "irq_lost", "count": 3}},
                   e.sanitizer, e.inject)["injection"]
    assert added["kind"] == "irq_lost" and added["count"] == 3
    assert handle(e.trace, {"op": "inject"}, e.sanitizer, e.inject)["active"] == [added]
    assert handle(e.trace, {"op": "inject", "remove": None}, e.sanitizer,
                  e.inject) == {"removed": 1}


def test_a_fault_that_finds_the_buffer_full_is_lost_and_a_replay_brings_it_back(
        rig: Rig) -> None:
    dst = rig.page()
    rig.gpu.engine.inject.add({"kind": "fault_buffer_full", "count": 1})
    rig.drv.submit(3, Opcode.READ, (0x40_0000, dst, 64), ctx=3)
    rig.run()
    assert rig.drv.qreg(3, QReg.STATUS) & QueueStatus.STALLED
    assert rig.gpu.mmio_read(Reg.FAULT_OVERFLOW, 4) == 1 and rig.drv.faults() == []
    assert rig.gpu.engine.sanitizer.take()["count"] == 0  # not the driver's doing
    rig.drv.replay(3)
    rig.run()
    assert [f.va for f in rig.drv.faults()] == [0x40_0000]


def test_a_delayed_interrupt_arrives_late_and_in_full(rig: Rig) -> None:
    rig.gpu.engine.inject.add({"kind": "irq_delay", "delay_us": 100_000, "count": 1})
    rig.drv.fence(K, irq=True)
    rig.run()
    assert rig.irqs == []  # not yet
    time.sleep(0.3)
    assert rig.irqs == [hw.IrqVector.COMPLETION]
