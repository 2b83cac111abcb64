"""Where a device fault's time goes, from a DMA trace of fault_bench.

fault_bench (guest/tools) READs a fresh page through the device (it faults)
and then the same page again (it does not), many times. In the trace of
that run each faulting READ is one chain of device events on its context
queue, and each segment between two events is a part of the round trip:

    doorbell        the driver writes the queue's TAIL (MMIO)
    fetch           the engine starts the command (CMD_START)
    fault           the walk found no PTE: fault record written (FAULT)
    fault irq       the FAULT interrupt raised (IRQ)
    REPLAY          the driver saw the records (a polling fence waiter, or
                    the fault work after the interrupt), served them
                    (hmm_range_fault, PTEs written, TLB and sanitizer told)
                    and restarted the queue: the device took the count from
                    the queue's replay word, or a CONTROL write came. The
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

The guest's part (between the fault interrupt and the REPLAY) is split
further by guest_breakdown(), from the guest kernel's own function_graph
trace of the interrupt handler, the fault work, the driver's fault-in and
hmm_range_fault(); those durations are guest time, so they are not mixed
with the device's time stamps.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field

import numpy as np

from ..device import hwdef as hw
from ..device.trace import REPLAY_STALE, Kind, TraceFile

FAULT_EVENTS = ("doorbell", "fetch", "fault", "fault irq", "REPLAY", "refetch", "done",
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
    for t, kind, q, addr, aux, flags in zip(
            r["t_ns"].tolist(), r["kind"].tolist(), r["queue"].tolist(), r["addr"].tolist(),
            r["aux"].tolist(), r["flags"].tolist(), strict=True):
        if kind == Kind.MMIO_WRITE and addr == tail:
            cur = Chain({"doorbell": t})
            out.append(cur)
            continue
        if cur is None:
            continue
        ev = cur.t
        if kind == Kind.CMD_START and q == queue:
            ev.setdefault("refetch" if "REPLAY" in ev else "fetch", t)
        elif kind == Kind.FAULT and q == queue:
            ev.setdefault("fault", t)
        elif kind == Kind.IRQ:
            if aux == hw.IrqVector.FAULT and "fault" in ev:
                ev.setdefault("fault irq", t)
            elif aux == hw.IrqVector.COMPLETION and "done" in ev:
                ev.setdefault("completion irq", t)
        elif kind == Kind.REPLAY and q == queue and not flags & REPLAY_STALE:
            ev.setdefault("REPLAY", t)
        elif kind == Kind.CMD_DONE and q == queue:
            ev.setdefault("done", t)
        if kind in (Kind.MMIO_READ, Kind.MMIO_WRITE) and "fault irq" in ev \
                and "REPLAY" not in ev and addr != control:
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

    def budget(self, anchor_us: float, goal: float) -> str:
        """What a fault may add for the round trip to stay within `goal`
        times the anchor (the untraced READ without a fault), next to the
        guest's share (fault irq -> REPLAY: the driver's service, its
        kernel's hmm_range_fault) and what the device adds besides, both
        from this trace."""
        allowed = (goal - 1) * anchor_us
        guest = self.fault_us.get("fault irq -> REPLAY", 0.0)
        device = self.fault_total_us - self.plain_total_us - guest
        f = self.fault_us
        first = f.get("doorbell -> fetch", 0.0) + f.get("fetch -> fault", 0.0)
        after = sum(f.get(k, 0.0) for k in ("REPLAY -> refetch", "refetch -> done",
                                            "done -> completion irq"))
        return (f"budget: {goal}x the {anchor_us:.0f} us anchor lets a fault add "
                f"{allowed:.0f} us; the guest's share (fault irq -> REPLAY) is {guest:.1f} us, "
                f"leaving the device {allowed - guest:.1f} us to find the fault, record it, "
                f"take the replay and run the command again; it spends {device:.1f} us "
                f"(traced: the faulting chain's {self.fault_total_us:.1f} us less the plain "
                f"one's {self.plain_total_us:.1f} and the guest's share). But the first "
                f"attempt (doorbell -> fault, {first:.1f} us) runs while the guest still "
                f"waits for its doorbell's MMIO write (the guest's view below), so the "
                f"device's part a caller waits for is REPLAY -> completion irq, {after:.1f} us")


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


# ---- the guest's part: ftrace in the guest kernel ----------------------------------------

# The functions the guest-side breakdown times (ftrace's function_graph tracer
# with only these in set_ftrace_filter, so it costs little): a submission and
# its doorbell's MMIO write, the interrupt handler, the two that serve a batch
# of faults (a polling fence waiter, or the fault work after the interrupt),
# the driver's fault-in, and the kernel's hmm_range_fault() inside it.
GUEST_RUN, GUEST_DOORBELL = "hmmgpu_queue_run", "hmmgpu_queue_doorbell"
GUEST_FUNCTIONS = (GUEST_RUN, GUEST_DOORBELL, "hmmgpu_irq", "hmmgpu_fault_work",
                   "hmmgpu_fault_serve_inline", "hmmgpu_fault_in", "hmm_range_fault")
GUEST_SERVERS = {"hmmgpu_fault_serve_inline": "the fence waiter",
                 "hmmgpu_fault_work": "the fault work"}
GUEST_WAIT = "interrupt -> fault work starts"  # the fault work's only
GUEST_SEGMENTS = ("start -> hmm_range_fault", "hmm_range_fault",
                  "-> fault-in done (PTEs, DMA maps, TLB)",
                  "-> done (the REPLAY: replay word, or CONTROL's MMIO round trip)")
# a submission as its caller waits for it: without a fault, and with one
# its own fence waiter served
GUEST_PLAIN = ("doorbell (the MMIO write)", "-> done")
GUEST_FAULTED = ("doorbell (the MMIO write)", "-> the fault seen", "serving it",
                 "-> done (the command replayed)")
# "  101.234567 |   0) + 12.345 us   |      hmm_range_fault();"
_GRAPH_LINE = re.compile(r"^\s*(\d+\.\d+)\s*\|\s*\d+\)\s*([!+#*@$ ]?\s*([\d.]+) us)?\s*\|\s*"
                         r"(.*)$")


def guest_ftrace_script(tracing: str = "/sys/kernel/debug/tracing") -> tuple[str, str]:
    """Shell commands that arm the guest's function_graph tracer on
    GUEST_FUNCTIONS (with absolute times), and those that stop it and print
    the trace."""
    t = tracing
    start = (f"echo 0 > {t}/tracing_on && echo nop > {t}/current_tracer && "
             f"echo '{' '.join(GUEST_FUNCTIONS)}' > {t}/set_ftrace_filter && "
             f"echo 8192 > {t}/buffer_size_kb && echo function_graph > {t}/current_tracer && "
             f"echo funcgraph-abstime > {t}/trace_options && "
             f"echo funcgraph-tail > {t}/trace_options && echo > {t}/trace && "
             f"echo 1 > {t}/tracing_on")
    stop = (f"echo 0 > {t}/tracing_on && cat {t}/trace && echo nop > {t}/current_tracer && "
            f"echo > {t}/set_ftrace_filter")
    return start, stop


@dataclass
class GuestCall:
    name: str
    start: float  # s, guest trace clock
    end: float
    children: list[GuestCall] = field(default_factory=list)


def guest_calls(text: str) -> list[GuestCall]:
    """The top-level calls of a function_graph trace with absolute times,
    each with its nested calls (per CPU: a CPU's lines nest, CPUs interleave)."""
    top: list[GuestCall] = []
    stacks: dict[str, list[GuestCall]] = {}
    for line in text.splitlines():
        m = _GRAPH_LINE.match(line)
        if not m:
            continue
        ts, dur, body = float(m.group(1)), m.group(3), m.group(4).strip()
        cpu = line.split("|")[1].strip().split(")")[0]
        stack = stacks.setdefault(cpu, [])
        if body.startswith("}"):
            if stack:
                call = stack.pop()
                call.end = ts
            continue
        name = body.split("(")[0].split(" [")[0].strip()
        if name not in GUEST_FUNCTIONS:
            continue
        if body.endswith("{"):
            call = GuestCall(name, ts, ts)
            (stack[-1].children if stack else top).append(call)
            stack.append(call)
        else:  # a leaf: one line, stamped at its entry, with its duration
            call = GuestCall(name, ts, ts + float(dur or 0) / 1e6)
            (stack[-1].children if stack else top).append(call)
    return top


@dataclass
class GuestBreakdown:
    # per server (GUEST_SERVERS' values): batches served, median per segment
    served: dict[str, tuple[int, dict[str, float]]]
    # "without a fault" / "with a fault": submissions, median per segment
    # (GUEST_PLAIN, GUEST_FAULTED) and of the whole ("submission")
    runs: dict[str, tuple[int, dict[str, float]]] = field(default_factory=dict)

    @property
    def faults(self) -> int:
        return sum(n for n, _ in self.served.values())

    def fault_adds(self) -> str:
        """What a fault adds to a submission, as its caller sees it."""
        if len(self.runs) < 2:
            return "the guest's trace has no submission of each kind"
        plain, faulted = self.runs["without a fault"][1], self.runs["with a fault"][1]
        bell = GUEST_FAULTED[0]
        return (f"from the guest: a submission without a fault is {plain['submission']:.1f} us, "
                f"{plain[bell]:.1f} of them its doorbell's MMIO write (a round trip to the "
                f"device server, which runs the commands meanwhile); with a fault "
                f"{faulted['submission']:.1f} us, {faulted[bell]:.1f} the doorbell: the fault "
                f"adds {faulted['submission'] - plain['submission']:.1f} us, of which "
                + ", ".join(f"{name} {faulted[name]:.1f}" for name in GUEST_FAULTED[1:]))

    def table(self) -> str:
        lines = [f"the guest's part, from ftrace in the guest (function_graph on "
                 f"{', '.join(GUEST_FUNCTIONS)}), medians:"]
        for kind, (n, us) in self.runs.items():
            lines.append(f"  {n} submissions {kind}:")
            lines += [f"    {name:<46} {v:>8.1f} us" for name, v in us.items()]
        for server, (n, us) in self.served.items():
            lines.append(f"  {n} batches served by {server}:")
            lines += [f"    {name:<46} {v:>8.1f} us" for name, v in us.items()]
        return "\n".join(lines)


def _all(calls: list[GuestCall]) -> list[GuestCall]:
    """Every call, nested ones too, each before its children."""
    out = []
    for c in calls:
        out.append(c)
        out += _all(c.children)
    return out


def _runs(calls: list[GuestCall]) -> dict[str, tuple[int, dict[str, float]]]:
    """The submissions (GUEST_RUN with its doorbell): those with no fault,
    and those whose own waiter served one batch of faults, split."""
    rows: dict[str, list[dict[str, float]]] = {"without a fault": [], "with a fault": []}
    for run in (c for c in _all(calls) if c.name == GUEST_RUN):
        bell = _find(run.children, GUEST_DOORBELL)
        if bell is None:
            continue
        served = [c for c in _all(run.children) if c.name in GUEST_SERVERS]
        if not served:
            row = dict(zip(GUEST_PLAIN, (bell.end - bell.start, run.end - bell.end),
                           strict=True))
            rows["without a fault"].append({"submission": run.end - run.start, **row})
        elif len(served) == 1 and _find(served[0].children, "hmmgpu_fault_in"):
            s = served[0]
            row = dict(zip(GUEST_FAULTED, (bell.end - bell.start, s.start - bell.end,
                                           s.end - s.start, run.end - s.end), strict=True))
            rows["with a fault"].append({"submission": run.end - run.start, **row})
    return {kind: (len(r), {k: statistics.median(x[k] for x in r) * 1e6 for k in r[0]})
            for kind, r in rows.items() if r}


def _find(calls: list[GuestCall], name: str) -> GuestCall | None:
    for c in calls:
        if c.name == name:
            return c
        found = _find(c.children, name)
        if found:
            return found
    return None


def guest_breakdown(text: str) -> GuestBreakdown:
    """Per batch of faults served (by a polling fence waiter or by the fault
    work) that faulted something in: its parts around hmm_range_fault(), and
    for the fault work, the wait from the interrupt before it."""
    top = guest_calls(text)
    calls = sorted(_all(top), key=lambda c: c.start)
    irqs = [c.start for c in calls if c.name == "hmmgpu_irq"]
    rows: dict[str, list[dict[str, float]]] = {}
    for call in (c for c in calls if c.name in GUEST_SERVERS):
        fault_in = _find(call.children, "hmmgpu_fault_in")
        hrf = [c for c in (fault_in.children if fault_in else []) if c.name == "hmm_range_fault"]
        if not fault_in or not hrf:
            continue  # nothing to fault in: a batch not yet whole, or the records taken
        first, last = hrf[0], hrf[-1]
        row = dict(zip(GUEST_SEGMENTS, (first.start - call.start, last.end - first.start,
                                        fault_in.end - last.end, call.end - fault_in.end),
                       strict=True))
        if call.name == "hmmgpu_fault_work":
            before = [t for t in irqs if t <= call.start]
            if not before:
                continue  # its interrupt before the trace
            row = {GUEST_WAIT: call.start - before[-1], **row}
        rows.setdefault(GUEST_SERVERS[call.name], []).append({k: v * 1e6 for k, v in row.items()})
    if not rows:
        raise ValueError("no batch of faults with hmm_range_fault in the guest trace")
    return GuestBreakdown({server: (len(r), {k: statistics.median(x[k] for x in r) for k in r[0]})
                           for server, r in rows.items()}, _runs(top))


# the driver's untraced timing of the submissions whose faults their waiter
# served (hmmgpu.ko's debugfs, docs/architecture.md, Fault timing)
FAULT_TIMING = "/sys/kernel/debug/hmmgpu/*/fault_timing"
TIMING_PARTS = ("doorbell", "-> fault seen", "serving it", "-> done (the command replayed)")


@dataclass
class DriverTiming:
    samples: int
    us: dict[str, float]  # TIMING_PARTS -> median

    def line(self) -> str:
        return (f"untraced, the driver's own timestamps ({self.samples} faulting READs, "
                "debugfs fault_timing): " +
                ", ".join(f"{name} {us:.1f} us" for name, us in self.us.items()))

    def fault_adds(self) -> float:
        """What the fault adds after the doorbell: until it is seen, serving
        it and the replayed command."""
        return sum(self.us[k] for k in TIMING_PARTS[1:])

    def budget(self, anchor_us: float, goal: float, fault_us: float) -> str:
        """The faulting READ (`fault_us`, median) against what `goal` times
        the anchor allows it, in the driver's parts (medians of other
        samples: they need not add up)."""
        seen, serve, replayed = (self.us[k] for k in TIMING_PARTS[1:])
        door = self.us[TIMING_PARTS[0]]
        return (f"untraced budget: {goal}x the {anchor_us:.0f} us anchor allows the faulting "
                f"READ {goal * anchor_us:.0f} us; it took {fault_us:.0f}: its doorbell write "
                f"{door:.1f}, then the fault {self.fault_adds():.1f} (seen {seen:.1f}, the guest "
                f"serving it {serve:.1f}: its kernel's hmm_range_fault, the PTEs, the REPLAY; "
                f"the replayed command until done {replayed:.1f}: the device running it "
                f"again), the rest of the ioctl {fault_us - door - self.fault_adds():.1f}")


def driver_timing(text: str) -> DriverTiming | None:
    """Medians of the samples in `text`, FAULT_TIMING's contents (four
    numbers of ns a line); None without any."""
    rows = [[int(x) for x in line.split()] for line in text.splitlines()
            if line.strip() and not line.startswith("#")]
    if not rows:
        return None
    if any(len(r) != len(TIMING_PARTS) for r in rows):
        raise ValueError(f"fault_timing: a line without {len(TIMING_PARTS)} numbers")
    medians = (statistics.median(col) / 1000 for col in zip(*rows, strict=True))
    return DriverTiming(len(rows), dict(zip(TIMING_PARTS, medians, strict=True)))
