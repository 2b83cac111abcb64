"""Where a device fault's time goes, from a DMA trace of fault_bench.

fault_bench (guest/tools) READs a fresh page through the device (it faults)
and then the same page again (it does not), many times. In the trace of
that run each faulting READ is one chain of device events on its context
queue, and each segment between two events is a part of the round trip:

    doorbell        the driver writes the queue's TAIL (MMIO)
    fetch           the engine starts the command (CMD_START)
    fault           the walk found no PTE: fault record written (FAULT)
    fault irq       the FAULT interrupt raised (IRQ)
    REPLAY write    the interrupt reached the guest, the fault work ran
                    (records read, hmm_range_fault, PTEs written, TLB and
                    sanitizer told) and restarted the queue (MMIO). The
                    driver's MMIO accesses in between are counted: each is a
                    round trip to the server while the guest CPU waits
    refetch         the engine starts the command again (CMD_START)
    done            the command completes (CMD_DONE)
    completion irq  the COMPLETION interrupt raised (IRQ)

Device time stamps are host CLOCK_MONOTONIC; an MMIO record is stamped when
the server handles the access, so a segment ending in an MMIO access holds
the guest's part (interrupt delivery, handler, work queue, the driver's code)
and the trip of that access to the server. A READ without a fault is the
same chain without the middle part.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import numpy as np

from ..device import hwdef as hw
from ..device.trace import Kind, TraceFile

FAULT_EVENTS = ("doorbell", "fetch", "fault", "fault irq", "REPLAY write", "refetch", "done",
                "completion irq")
PLAIN_EVENTS = ("doorbell", "fetch", "done", "completion irq")


@dataclass
class Chain:
    t: dict[str, int] = field(default_factory=dict)   # event name -> t_ns
    mmio_in_driver: int = 0   # MMIO accesses between the fault irq and REPLAY

    def faulted(self) -> bool:
        return "fault" in self.t

    def segments(self) -> dict[str, float] | None:
        """Microseconds per segment between consecutive events; None when the
        chain is incomplete."""
        names = FAULT_EVENTS if self.faulted() else PLAIN_EVENTS
        if any(n not in self.t for n in names):
            return None
        return {f"{a} -> {b}": (self.t[b] - self.t[a]) / 1e3
                for a, b in zip(names[:-1], names[1:], strict=True)}


def chains(trace: TraceFile, queue: int) -> list[Chain]:
    """The command chains of `queue`, one per doorbell, in time order."""
    r = np.sort(trace.records, order="t_ns", kind="stable")
    tail = hw.queue_reg(queue, hw.QReg.TAIL)
    control = hw.queue_reg(queue, hw.QReg.CONTROL)
    out: list[Chain] = []
    cur: Chain | None = None
    for t, kind, q, addr, va, aux in zip(r["t_ns"].tolist(), r["kind"].tolist(),
                                         r["queue"].tolist(), r["addr"].tolist(),
                                         r["va"].tolist(), r["aux"].tolist(), strict=True):
        if kind == Kind.MMIO_WRITE and addr == tail:
            cur = Chain({"doorbell": t})
            out.append(cur)
            continue
        if cur is None:
            continue
        ev = cur.t
        if kind == Kind.CMD_START and q == queue:
            ev.setdefault("refetch" if "REPLAY write" in ev else "fetch", t)
        elif kind == Kind.FAULT and q == queue:
            ev.setdefault("fault", t)
        elif kind == Kind.IRQ:
            if aux == hw.IrqVector.FAULT and "fault" in ev:
                ev.setdefault("fault irq", t)
            elif aux == hw.IrqVector.COMPLETION and "done" in ev:
                ev.setdefault("completion irq", t)
        elif kind == Kind.MMIO_WRITE and addr == control and va == hw.QueueControl.REPLAY:
            ev.setdefault("REPLAY write", t)
        elif kind == Kind.CMD_DONE and q == queue:
            ev.setdefault("done", t)
        if kind in (Kind.MMIO_READ, Kind.MMIO_WRITE) and "fault irq" in ev \
                and "REPLAY write" not in ev and addr != control:
            cur.mmio_in_driver += 1
    return out


@dataclass
class Breakdown:
    faults: int
    plain: int
    fault_us: dict[str, float]     # median per segment
    plain_us: dict[str, float]
    mmio_in_driver: float          # median MMIO accesses between the fault irq and REPLAY
    fault_total_us: float          # median doorbell -> completion irq
    plain_total_us: float

    def table(self) -> str:
        total_f, total_p = self.fault_total_us, self.plain_total_us
        lines = [f"fault round trip from the device trace, median of {self.faults} faulting "
                 f"READs (and {self.plain} READs without a fault); the segments' medians "
                 "need not add up to the total's:"]
        for name, us in self.fault_us.items():
            lines.append(f"  {name:<34} {us:>8.1f} us  {100 * us / total_f:>4.0f} %")
        lines.append(f"  {'doorbell -> completion irq':<34} {total_f:>8.1f} us  "
                     f"(the driver's MMIO accesses before REPLAY: {self.mmio_in_driver:.0f})")
        lines.append("  without a fault: " + ", ".join(
            f"{name} {us:.1f} us" for name, us in self.plain_us.items()) +
            f"; doorbell -> completion irq {total_p:.1f} us")
        return "\n".join(lines)


def breakdown(trace: TraceFile, queue: int | None = None) -> Breakdown:
    """Medians per segment over the complete chains of `queue` (default: the
    queue with the most faults)."""
    if queue is None:
        faults = trace.of_kind(Kind.FAULT)
        if not len(faults):
            raise ValueError("no faults in the trace")
        qs, counts = np.unique(faults["queue"], return_counts=True)
        queue = int(qs[np.argmax(counts)])
    segs = [(c.faulted(), c.segments(), c.mmio_in_driver) for c in chains(trace, queue)]
    fault = [(s, m) for f, s, m in segs if f and s is not None]
    plain = [s for f, s, _ in segs if not f and s is not None]
    if not fault or not plain:
        raise ValueError(f"queue {queue}: {len(fault)} complete faulting chains, "
                         f"{len(plain)} without a fault")
    labels = list(dict.fromkeys(k for s, _ in fault for k in s))
    return Breakdown(
        faults=len(fault), plain=len(plain),
        fault_us={k: statistics.median(s[k] for s, _ in fault if k in s) for k in labels},
        plain_us={k: statistics.median(s[k] for s in plain) for k in plain[0]},
        mmio_in_driver=statistics.median(m for _, m in fault),
        fault_total_us=statistics.median(sum(s.values()) for s, _ in fault),
        plain_total_us=statistics.median(sum(s.values()) for s in plain))
