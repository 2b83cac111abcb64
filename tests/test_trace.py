"""DMA trace recording in-process: what the records say, the bounded buffer,
streaming and dump files, and the numpy loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from engine_rig import RW, Rig

from hmmgpu.device import hwdef as hw
from hmmgpu.device import trace
from hmmgpu.device.hwdef import Aperture, ErrorCode, Opcode
from hmmgpu.device.trace import Kind
from hmmgpu.host.faultpath import breakdown


def copy_va_to_sys(rig: Rig, ctx: int, va: int, dst: int, n: int) -> None:
    flags = hw.cmd_flags(src=Aperture.VA, dst=Aperture.SYS)
    rig.drv.submit(ctx, Opcode.COPY, (va, dst, n), flags=flags)


def test_a_faulting_copy_is_recorded_from_doorbell_to_completion(rig: Rig, tmp_path) -> None:
    tr = rig.gpu.engine.trace
    src, dst = rig.page(0x5A), rig.drv.alloc(hw.PAGE_SIZE)
    tr.start()
    copy_va_to_sys(rig, 3, 0x40_0000, dst, 4096)
    rig.run()  # faults: not mapped
    rig.drv.map(3, 0x40_0000, src, RW)
    rig.gpu.mmio_write(hw.queue_reg(3, hw.QReg.CONTROL), 4, hw.QueueControl.REPLAY)
    rig.run()
    tr.stop()
    path = tmp_path / "t.hmmtrace"
    assert tr.dump(path) > 0
    t = trace.load(path)
    kinds = [Kind(k) for k in t.records["kind"]]
    # the doorbell, the command, its fault, the replay, the walk and the copy
    r = t.records
    doorbell = np.flatnonzero((r["kind"] == Kind.MMIO_WRITE)
                              & (r["addr"] == hw.queue_reg(3, hw.QReg.TAIL)))[0]
    assert doorbell < kinds.index(Kind.CMD_START)
    for expected in (Kind.CMD_START, Kind.FAULT, Kind.REPLAY, Kind.WALK, Kind.TLB_FILL,
                     Kind.DMA_READ, Kind.DMA_WRITE, Kind.CMD_DONE):
        assert expected in kinds, expected
    fault = t.of_kind(Kind.FAULT)[0]
    assert (fault["queue"], fault["ctx"], fault["va"]) == (3, 3, 0x40_0000)
    assert fault["aux"] == hw.FaultReason.NOT_PRESENT
    read = t.of_kind(Kind.DMA_READ)
    read = read[read["va"] == 0x40_0000][0]
    assert (read["addr"], read["length"], read["flags"]) == (src, 4096, 0)
    done = t.of_kind(Kind.CMD_DONE)[0]
    assert done["aux"] == ErrorCode.NONE and done["cmd"] == fault["cmd"]
    assert np.all(np.diff(t.records["t_ns"].astype(np.int64)) >= 0)


def test_vram_dma_and_invalidations_say_what_they_touched(rig: Rig) -> None:
    tr = rig.gpu.engine.trace
    src = rig.page(1)
    tr.start()
    rig.drv.submit(hw.KERNEL_QUEUE, Opcode.COPY, (src, 0x2000, 4096),
                   flags=hw.cmd_flags(src=Aperture.SYS, dst=Aperture.VRAM))
    rig.drv.submit(hw.KERNEL_QUEUE, Opcode.TLB_INVALIDATE, (0x1000, 0x3000), ctx=5)
    rig.run()
    tr.stop()
    rows = {Kind(r["kind"]): r for r in np.array(tr._buf, dtype=trace.RECORD)}
    assert rows[Kind.DMA_WRITE]["flags"] == trace.DMA_VRAM
    assert rows[Kind.DMA_WRITE]["addr"] == 0x2000
    inv = rows[Kind.TLB_INVALIDATE]
    assert (inv["ctx"], inv["va"], inv["length"]) == (5, 0x1000, 0x3000)


def fills(rig: Rig, n: int) -> None:
    out = rig.drv.alloc(16)
    for _ in range(n):
        rig.drv.submit(hw.KERNEL_QUEUE, Opcode.FILL, (out, 16, 7),
                       flags=hw.cmd_flags(dst=Aperture.SYS))
    rig.run()


def test_a_full_stream_buffer_counts_drops_and_the_device_keeps_going(rig: Rig,
                                                                       tmp_path: Path) -> None:
    tr = rig.gpu.engine.trace
    tr._drain = lambda: None  # a writer that never catches up
    tr.start(tmp_path / "slow.hmmtrace", capacity=10)
    fills(rig, 20)
    s = tr.stop()
    assert s["dropped"] > 0 and s["recorded"] == 10
    assert rig.gpu.engine.queues[hw.KERNEL_QUEUE].completed == 20
    t = trace.load(tmp_path / "slow.hmmtrace")
    assert len(t.records) == 10 and t.dropped == s["dropped"]
    assert t.records[0]["kind"] == Kind.MMIO_WRITE  # the first records stay


def test_the_flight_recorder_keeps_the_newest_records(rig: Rig, tmp_path: Path) -> None:
    tr = rig.gpu.engine.trace
    tr.start(capacity=10)
    fills(rig, 20)
    tr.mark("end")
    s = tr.stop()
    assert s["buffered"] == 10 and s["overwritten"] > 0 and s["dropped"] == 0
    tr.dump(tmp_path / "f.hmmtrace")
    t = trace.load(tmp_path / "f.hmmtrace")
    assert t.records[-1]["kind"] == Kind.MARK and t.overwritten == s["overwritten"]


def test_streaming_writes_a_file_with_marks_and_drops(rig: Rig, tmp_path: Path) -> None:
    tr = rig.gpu.engine.trace
    path = tmp_path / "s.hmmtrace"
    tr.start(path)
    tr.mark("before")
    rig.drv.submit(hw.KERNEL_QUEUE, Opcode.NOP)
    rig.run()
    tr.mark("after")
    tr.stop()
    t = trace.load(path)
    marks = t.of_kind(Kind.MARK)
    assert [t.marks[m] for m in marks["aux"]] == ["before", "after"]
    assert Kind.CMD_DONE in t.records["kind"] and t.dropped == 0
    assert t.meta["vram_size"] == rig.gpu.vram.size


def test_a_whole_address_space_invalidation_is_streamed_with_the_rest(
        rig: Rig, tmp_path: Path) -> None:
    """A process's exit invalidates [0, 2^64 - 1): the TLB_INVALIDATE record
    saturates its 32-bit length, and the streamed file keeps every record
    (a CI run lost a whole trace to this: numpy refused the batch and the
    writer thread died). A value too wide for its field from any hook is cut
    to it rather than losing the batch."""
    tr = rig.gpu.engine.trace
    path = tmp_path / "exit.hmmtrace"
    tr.start(path)
    rig.drv.submit(hw.KERNEL_QUEUE, Opcode.TLB_INVALIDATE, (0, (1 << 64) - 1), ctx=1)
    rig.drv.submit(hw.KERNEL_QUEUE, Opcode.NOP)
    rig.run()
    tr.emit(Kind.MARK, aux=1 << 40)  # a hook's bug: too wide for aux
    s = tr.stop()
    t = trace.load(path)
    assert len(t.records) == s["recorded"] > 4
    (inv,) = t.of_kind(Kind.TLB_INVALIDATE)
    assert inv["length"] == trace.LENGTH_MAX and inv["ctx"] == 1
    assert Kind.CMD_DONE in t.records["kind"]
    assert t.of_kind(Kind.MARK)["aux"].tolist() == [(1 << 40) & 0xFFFF_FFFF]


def test_a_file_whose_writer_died_loads_up_to_its_last_whole_record(rig: Rig,
                                                                    tmp_path: Path) -> None:
    tr = rig.gpu.engine.trace
    path = tmp_path / "cut.hmmtrace"
    tr.start()
    for _ in range(5):
        tr.mark("x")
    tr.stop()
    tr.dump(path)
    data = path.read_bytes()
    header, body = data[:trace.HEADER_SIZE], data[trace.HEADER_SIZE:trace.HEADER_SIZE + 5 * 40]
    # as a streaming writer leaves it before close: count and trailer offset 0, a torn record
    at = trace.COUNT_OFFSET
    cut = header[:at] + bytes(16) + header[at + 16:] + body[:4 * 40 + 17]
    path.write_bytes(cut)
    assert len(trace.load(path).records) == 4


def test_a_file_that_is_not_a_trace_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "x"
    p.write_bytes(b"hello" * 20)
    with pytest.raises(ValueError, match="not an hmmgpu trace"):
        trace.load(p)


def test_tracing_off_records_nothing(rig: Rig) -> None:
    rig.drv.submit(hw.KERNEL_QUEUE, Opcode.NOP)
    rig.run()
    assert rig.gpu.engine.trace.status()["recorded"] == 0


def test_records_emitted_while_the_writer_drains_are_all_written(tmp_path: Path) -> None:
    """emit() appends without a lock while the writer thread drains the
    buffer: every record emitted while streaming ends in the file (or in the
    dropped count when the buffer is full), none vanishes between the two."""
    import sys
    import threading

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # thread switches anywhere, as under load
    try:
        rec = trace.Recorder(0, capacity=1 << 16)
        path = tmp_path / "race.hmmtrace"
        rec.start(path)
        stop = threading.Event()

        def emitter() -> None:
            while not stop.is_set():
                rec.emit(Kind.MARK)

        def waker() -> None:  # the writer drains as often as it can
            while not stop.is_set():
                rec._wake.set()

        threads = [threading.Thread(target=f) for f in (emitter, waker)]
        for t in threads:
            t.start()
        stop.wait(1.5)
        stop.set()
        for t in threads:
            t.join()
        counts = rec.stop()
    finally:
        sys.setswitchinterval(old)
    written = len(trace.load(path).records)
    assert counts["recorded"] > 10_000
    assert written == counts["recorded"], counts


def test_the_fault_breakdown_times_each_segment_of_a_faulting_read(rig: Rig, tmp_path) -> None:
    """host/faultpath.py on a trace of the driver's fault path as the Python
    driver plays it: a faulting READ, served and replayed, then a plain one."""
    tr = rig.gpu.engine.trace
    out, page = rig.drv.alloc(8), rig.page(0x5A)
    tr.start()
    for va in (0x40_0000, 0x60_0000):
        rig.drv.submit(3, Opcode.READ, (va, out, 8), flags=hw.CmdFlags.IRQ)
        rig.run()
        (f,) = rig.drv.faults()  # the record's VALID bit is checked there
        rig.drv.map(3, f.va, page, RW)
        rig.drv.replay(3)
        rig.run()
        rig.drv.submit(3, Opcode.READ, (va, out, 8), flags=hw.CmdFlags.IRQ)  # no fault now
        rig.run()
    tr.stop()
    path = tmp_path / "t.hmmtrace"
    tr.dump(path)
    b = breakdown(trace.load(path))
    assert (b.faults, b.plain) == (2, 2)
    assert list(b.fault_us) == ["doorbell -> fetch", "fetch -> fault", "fault -> fault irq",
                                "fault irq -> REPLAY", "REPLAY -> refetch",
                                "refetch -> done", "done -> completion irq"]
    assert all(us >= 0 for us in b.fault_us.values())
    # the Python driver reads FAULT_PUT and writes FAULT_GET before it replays
    assert b.mmio_in_driver >= 2
    assert b.fault_total_us >= b.fault_us["fault irq -> REPLAY"]
    assert "refetch -> done" in b.table()
    # what a fault may add at 1.5x a 40 us anchor, less the guest's share
    guest = b.fault_us["fault irq -> REPLAY"]
    assert f"lets a fault add 20 us; the guest's share (fault irq -> REPLAY) is {guest:.1f}" \
        in b.budget(40.0, 1.5)
    assert f"leaving the device {20 - guest:.1f} us" in b.budget(40.0, 1.5)
    # and the device's part after the REPLAY, which no doorbell write hides
    f = b.fault_us
    after = f["REPLAY -> refetch"] + f["refetch -> done"] + f["done -> completion irq"]
    assert f"REPLAY -> completion irq, {after:.1f} us" in b.budget(40.0, 1.5)


# A guest's function_graph trace of two fault works (captured from the lab,
# 2026-12-04, fault_bench under hmmgpu.ko): interrupts on both CPUs, context
# switch banners, leaf lines stamped at their entry, closing lines at exit.
GUEST_FTRACE = """\
# tracer: function_graph
#
#     TIME        CPU  DURATION                  FUNCTION CALLS
#      |          |     |   |                     |   |   |   |
    5.722077 |   1) + 20.962 us   |  hmmgpu_irq [hmmgpu]();
 ------------------------------------------
 1)    <idle>-0    =>  kworker-115
 ------------------------------------------

    5.722113 |   1)               |  hmmgpu_fault_work [hmmgpu]() {
    5.722153 |   1)               |    hmmgpu_fault_in [hmmgpu]() {
    5.722281 |   1) + 25.458 us   |      hmm_range_fault();
    5.722357 |   1) ! 203.485 us  |    } /* hmmgpu_fault_in [hmmgpu] */
    5.722456 |   1) ! 343.384 us  |  } /* hmmgpu_fault_work [hmmgpu] */
    5.722649 |   0) + 55.383 us   |  hmmgpu_irq [hmmgpu]();
    5.724944 |   1) + 19.469 us   |  hmmgpu_irq [hmmgpu]();
    5.724979 |   1)               |  hmmgpu_fault_work [hmmgpu]() {
    5.724981 |   1)               |    hmmgpu_fault_in [hmmgpu]() {
    5.725040 |   1)   9.795 us    |      hmm_range_fault();
    5.725057 |   1) + 75.192 us   |    } /* hmmgpu_fault_in [hmmgpu] */
    5.725118 |   1) ! 138.307 us  |  } /* hmmgpu_fault_work [hmmgpu] */
    5.725308 |   0)   6.189 us    |  hmmgpu_irq [hmmgpu]();
    5.726000 |   0)               |  hmmgpu_fault_work [hmmgpu]() {
    5.726100 |   0)   1.000 us    |  } /* hmmgpu_fault_work [hmmgpu] */
    5.893356 |   1)               |  hmmgpu_fault_serve_inline [hmmgpu]() {
    5.893360 |   1)               |    hmmgpu_fault_in [hmmgpu]() {
    5.893379 |   1)   1.232 us    |      hmmgpu_irq [hmmgpu]();
    5.893401 |   1)   7.591 us    |      hmm_range_fault();
    5.893413 |   1) + 52.748 us   |    } /* hmmgpu_fault_in [hmmgpu] */
    5.893484 |   1) ! 128.361 us  |  } /* hmmgpu_fault_serve_inline [hmmgpu] */
    5.893623 |   0)   2.363 us    |  hmmgpu_irq [hmmgpu]();
    5.894014 |   1)               |  hmmgpu_fault_serve_inline [hmmgpu]() {
    5.894018 |   1)               |    hmmgpu_fault_in [hmmgpu]() {
    5.894022 |   1)               |      hmm_range_fault() {
    5.894058 |   1)   1.433 us    |        hmmgpu_irq [hmmgpu]();
    5.894080 |   1) + 58.447 us   |      } /* hmm_range_fault */
    5.894084 |   1) + 66.650 us   |    } /* hmmgpu_fault_in [hmmgpu] */
    5.894290 |   1) ! 275.511 us  |  } /* hmmgpu_fault_serve_inline [hmmgpu] */
    5.894400 |   1)   2.000 us    |  hmmgpu_fault_serve_inline [hmmgpu]();
"""


def test_the_guest_breakdown_splits_each_served_batch_from_the_guests_ftrace() -> None:
    """host/faultpath.py guest_breakdown() on real function_graph traces: per
    batch served by the fault work, the wait after its interrupt, the parts
    around hmm_range_fault(), and the tail with the REPLAY write; per batch a
    polling fence waiter served, the same without the wait (an interrupt
    nested inside is part of the segment it hit). A serving with nothing to
    fault in (a work whose records a waiter took, a waiter's call while the
    batch was still being written) is left out."""
    from hmmgpu.host.faultpath import GUEST_SEGMENTS, GUEST_WAIT, guest_breakdown, guest_calls

    calls = guest_calls(GUEST_FTRACE)
    assert [c.name for c in calls].count("hmmgpu_fault_work") == 3
    assert [c.name for c in calls].count("hmmgpu_fault_serve_inline") == 3
    b = guest_breakdown(GUEST_FTRACE)
    assert b.faults == 4
    n, work = b.served["the fault work"]
    assert n == 2 and list(work) == [GUEST_WAIT, *GUEST_SEGMENTS]
    # the medians of the two works, segment by segment (us)
    first = (36.0, 168.0, 25.458, 50.542, 99.0)
    second = (35.0, 61.0, 9.795, 7.205, 61.0)
    for name, x, y in zip(work, first, second, strict=True):
        assert work[name] == pytest.approx((x + y) / 2, abs=0.01), name
    n, waiter = b.served["the fence waiter"]
    assert n == 2 and list(waiter) == list(GUEST_SEGMENTS)
    first = (45.0, 7.591, 4.409, 71.0)  # the leaf hmm_range_fault: its entry + duration
    second = (8.0, 58.0, 4.0, 206.0)
    for name, x, y in zip(waiter, first, second, strict=True):
        assert waiter[name] == pytest.approx((x + y) / 2, abs=0.01), name
    assert "2 batches served by the fence waiter" in b.table()


# Two READ submissions as function_graph shows them (the layout of the
# lab's traces): one with no fault, one whose waiter served a fault.
GUEST_RUNS_FTRACE = """\
    6.000000 |   1)               |  hmmgpu_queue_run [hmmgpu]() {
    6.000002 |   1) + 30.000 us   |    hmmgpu_queue_doorbell [hmmgpu]();
    6.000036 |   1) + 36.000 us   |  } /* hmmgpu_queue_run [hmmgpu] */
    6.000100 |   1)               |  hmmgpu_queue_run [hmmgpu]() {
    6.000101 |   1) + 31.000 us   |    hmmgpu_queue_doorbell [hmmgpu]();
    6.000133 |   1)               |    hmmgpu_fault_serve_inline [hmmgpu]() {
    6.000134 |   1)               |      hmmgpu_fault_in [hmmgpu]() {
    6.000136 |   1)   4.000 us    |        hmm_range_fault();
    6.000141 |   1)   7.000 us    |      } /* hmmgpu_fault_in [hmmgpu] */
    6.000142 |   1)   9.000 us    |    } /* hmmgpu_fault_serve_inline [hmmgpu] */
    6.000163 |   1) + 63.000 us   |  } /* hmmgpu_queue_run [hmmgpu] */
"""


def test_the_guest_breakdown_times_each_submission_around_its_doorbell() -> None:
    """A submission with no fault: the doorbell's MMIO write and what follows
    it; one whose fence waiter served a fault: the doorbell, the wait until
    the waiter saw the fault, serving it, and the replayed command until
    done. The fault served inside the submission is counted as a batch too."""
    from hmmgpu.host.faultpath import GUEST_FAULTED, GUEST_PLAIN, guest_breakdown

    b = guest_breakdown(GUEST_RUNS_FTRACE)
    n, plain = b.runs["without a fault"]
    assert n == 1 and list(plain) == ["submission", *GUEST_PLAIN]
    assert [round(v, 3) for v in plain.values()] == [36.0, 30.0, 4.0]
    n, faulted = b.runs["with a fault"]
    assert n == 1 and list(faulted) == ["submission", *GUEST_FAULTED]
    assert [round(v, 3) for v in faulted.values()] == [63.0, 31.0, 1.0, 9.0, 21.0]
    assert b.faults == 1 and "1 submissions with a fault" in b.table()
    assert "without a fault is 36.0 us, 30.0 of them its doorbell" in b.fault_adds()
    assert "the fault adds 27.0 us, of which -> the fault seen 1.0, serving it 9.0, " \
        "-> done (the command replayed) 21.0" in b.fault_adds()


def test_the_drivers_fault_timing_reads_into_medians_and_a_budget() -> None:
    """host/faultpath.driver_timing on debugfs fault_timing's text: medians
    per part in microseconds; the budget puts them against the goal."""
    from hmmgpu.host.faultpath import TIMING_PARTS, driver_timing

    text = ("# doorbell_ns seen_ns serve_ns done_ns\n"
            "30000 800 14000 20000\n40000 600 15000 21000\n29000 700 13000 19000\n")
    t = driver_timing(text)
    assert t is not None and t.samples == 3
    assert list(t.us.values()) == [30.0, 0.7, 14.0, 20.0]
    assert list(t.us) == list(TIMING_PARTS)
    assert t.fault_adds() == pytest.approx(34.7)
    budget = t.budget(50.0, 1.5, 71.0)
    assert "allows the faulting READ 75 us; it took 71: its doorbell write 30.0" in budget
    assert "the rest of the ioctl 6.3" in budget
    assert driver_timing("# doorbell_ns seen_ns serve_ns done_ns\n") is None
    with pytest.raises(ValueError):
        driver_timing("1 2 3\n")
