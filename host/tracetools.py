"""Reading DMA traces: summary, Perfetto export, and a diff of two runs.

All three work on trace.load()'s numpy records (see docs/trace-format.md).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..device import hwdef as hw
from ..device.trace import DMA_VRAM, INVALIDATE_LEAF, NONE, Kind, TraceFile
from .cputrace import BarAccess

PAGE = hw.PAGE_SIZE


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# ---- summary --------------------------------------------------------------------------

def stats(t: TraceFile) -> dict[str, Any]:
    """The numbers `trace summary` and `trace diff` print."""
    r = t.records
    dma = r[np.isin(r["kind"], [Kind.DMA_READ, Kind.DMA_WRITE])]
    faults = r[r["kind"] == Kind.FAULT]
    span = (int(r["t_ns"][-1]) - int(r["t_ns"][0])) / 1e9 if len(r) > 1 else 0.0
    out: dict[str, Any] = {
        "records": len(r), "seconds": span, "dropped": t.dropped,
        "overwritten": t.overwritten,
        "kinds": {Kind(k).name: int(n) for k, n in zip(*np.unique(r["kind"], return_counts=True),
                                                       strict=True)},
        "faults": len(faults),
        "faults_per_s": len(faults) / span if span else 0.0,
        "commands": Counter(hw.opcode_name(int(a)) for a in r[r["kind"] == Kind.CMD_DONE]["flags"]),
    }
    by_dir: Counter[str] = Counter()
    by_ctx: Counter[str] = Counter()
    for kind, where in ((Kind.DMA_READ, "read"), (Kind.DMA_WRITE, "write")):
        for vram, name in ((0, "system"), (DMA_VRAM, "VRAM")):
            sel = dma[(dma["kind"] == kind) & ((dma["flags"] & DMA_VRAM) == vram)]
            by_dir[f"{where} {name}"] = int(sel["length"].sum())
    for ctx in np.unique(dma["ctx"]):
        by_ctx["kernel/none" if ctx == NONE else f"ctx {ctx}"] = \
            int(dma[dma["ctx"] == ctx]["length"].sum())
    out["bytes_by_direction"] = dict(by_dir)
    out["bytes_by_context"] = dict(by_ctx)
    # hottest pages: device-virtual pages (per context) by bytes moved
    va = dma[dma["va"] != 0]
    pages: Counter[tuple[int, int]] = Counter()
    for ctx, v, n in zip(va["ctx"].tolist(), va["va"].tolist(), va["length"].tolist(),
                         strict=True):
        first, last = v // PAGE, (v + max(n, 1) - 1) // PAGE
        share = n / (last - first + 1)
        for p in range(first, min(last, first + 4096) + 1):
            pages[(ctx, p * PAGE)] += int(share)
    out["hottest_pages"] = [(c, v, n) for (c, v), n in pages.most_common(10)]
    return out


def summary(t: TraceFile, source: str = "") -> str:
    s = stats(t)
    lines = [f"trace {source}: {s['records']} records over {s['seconds']:.3f} s"
             + (f", {s['dropped']} dropped" if s["dropped"] else "")
             + (f", {s['overwritten']} overwritten (flight recorder)" if s["overwritten"]
                else "")]
    lines.append("bytes by direction:")
    lines += [f"  {k:<14} {_human(v):>12}" for k, v in s["bytes_by_direction"].items()]
    lines.append("bytes by context:")
    lines += [f"  {k:<14} {_human(v):>12}" for k, v in sorted(s["bytes_by_context"].items())]
    lines.append(f"faults: {s['faults']} ({s['faults_per_s']:.1f}/s)")
    if s["commands"]:
        lines.append("commands: " + ", ".join(f"{k} {v}" for k, v in
                                               sorted(s["commands"].items())))
    if s["hottest_pages"]:
        lines.append("hottest device-virtual pages:")
        lines += [f"  ctx {c:<3} {v:#018x} {_human(n):>12}" for c, v, n in s["hottest_pages"]]
    if t.marks:
        lines.append("marks: " + ", ".join(f"{i}: {m}" for i, m in sorted(t.marks.items())))
    return "\n".join(lines)


# ---- Perfetto -------------------------------------------------------------------------

MMIO_TID, IRQ_TID, MMU_TID = 100, 101, 102


def perfetto(traces: list[tuple[str, TraceFile]],
             cpu: list[BarAccess] | None = None) -> dict[str, Any]:
    """Chrome trace-event JSON (Perfetto UI opens it): one process per GPU, a
    track per queue with its commands as slices and DMA as instants, tracks
    for the MMU, MMIO and interrupts, faults and invalidations as instants,
    and a flow from each fault to the REPLAY or CANCEL that answered it. With
    `cpu` (the TCG plugin's BAR accesses), a "guest CPU" process shows each
    register access with the guest function that made it."""
    events: list[dict[str, Any]] = []
    flow_id = 0
    # everything on the host's monotonic clock, from the first event
    starts = [int(t.records["t_ns"][0]) + t.mono_t0_ns for _, t in traces if len(t.records)]
    starts += [cpu[0].t_ns] if cpu else []
    t0 = min(starts, default=0)
    for pid, (name, t) in enumerate(traces):
        base = t.mono_t0_ns - t0

        def us(ns: int, base: int = base) -> float:
            return (ns + base) / 1000

        events.append({"ph": "M", "pid": pid, "name": "process_name", "args": {"name": name}})
        tids = {MMIO_TID: "MMIO", IRQ_TID: "interrupts", MMU_TID: "MMU"}
        open_cmds: dict[tuple[int, int], tuple[float, int]] = {}
        pending_faults: dict[int, list[int]] = {}
        for rec in t.records.tolist():
            ts_ns, kind, queue, ctx, flags, cmd, va, addr, length, aux = rec
            ts = us(ts_ns)
            kind = Kind(kind)
            if queue != NONE:
                tids.setdefault(queue, hw.queue_name(queue))
            if kind == Kind.CMD_START:
                open_cmds.setdefault((queue, cmd), (ts, aux))
            elif kind == Kind.CMD_DONE:
                start, op = open_cmds.pop((queue, cmd), (ts, flags))
                events.append({"ph": "X", "pid": pid, "tid": queue, "ts": start,
                               "dur": max(ts - start, 0.001), "name": hw.opcode_name(op),
                               "args": {"command": cmd, "status": hw.name_of(hw.ErrorCode, aux),
                                        "ctx": ctx}})
            elif kind in (Kind.DMA_READ, Kind.DMA_WRITE):
                where = "VRAM" if flags & DMA_VRAM else "sys"
                events.append({"ph": "i", "s": "t", "pid": pid,
                               "tid": queue if queue != NONE else MMU_TID, "ts": ts,
                               "name": f"{'read' if kind == Kind.DMA_READ else 'write'} "
                                       f"{where} {length}",
                               "args": {"va": hex(va), "addr": hex(addr), "length": length,
                                        "ctx": ctx}})
            elif kind == Kind.FAULT:
                flow_id += 1
                pending_faults.setdefault(queue, []).append(flow_id)
                events += [{"ph": "X", "pid": pid, "tid": queue, "ts": ts, "dur": 0.5,
                            "name": "fault", "args": {"va": hex(va), "ctx": ctx,
                                                      "reason": hw.name_of(hw.FaultReason, aux),
                                                      "access": flags}},
                           {"ph": "s", "pid": pid, "tid": queue, "ts": ts, "id": flow_id,
                            "name": "fault", "cat": "fault", "bp": "e"}]
            elif kind in (Kind.REPLAY, Kind.CANCEL):
                label = kind.name.lower()
                events.append({"ph": "X", "pid": pid, "tid": queue, "ts": ts, "dur": 0.5,
                               "name": label, "args": {"command": cmd}})
                for fid in pending_faults.pop(queue, []):
                    events.append({"ph": "f", "pid": pid, "tid": queue, "ts": ts, "id": fid,
                                   "name": "fault", "cat": "fault", "bp": "e"})
            elif kind == Kind.TLB_INVALIDATE:
                events.append({"ph": "i", "s": "p", "pid": pid, "tid": MMU_TID, "ts": ts,
                               "name": "TLB invalidate",
                               "args": {"ctx": ctx, "va": hex(va), "length": length,
                                        "dropped": aux,
                                        "leaf": bool(flags & INVALIDATE_LEAF)}})
            elif kind in (Kind.WALK, Kind.TLB_FILL):
                events.append({"ph": "i", "s": "t", "pid": pid, "tid": MMU_TID, "ts": ts,
                               "name": "walk" if kind == Kind.WALK else "TLB fill",
                               "args": {"ctx": ctx, "va": hex(va), "addr": hex(addr),
                                        "size": length}})
            elif kind in (Kind.MMIO_READ, Kind.MMIO_WRITE):
                events.append({"ph": "i", "s": "t", "pid": pid, "tid": MMIO_TID, "ts": ts,
                               "name": f"{'rd' if kind == Kind.MMIO_READ else 'wr'} "
                                       f"{hw.reg_name(addr)}",
                               "args": {"offset": hex(addr), "value": hex(va)}})
            elif kind == Kind.IRQ:
                events.append({"ph": "i", "s": "t", "pid": pid, "tid": IRQ_TID, "ts": ts,
                               "name": f"MSI-X {aux}", "args": {"delivered": bool(flags)}})
            elif kind == Kind.MARK:
                events.append({"ph": "i", "s": "g", "pid": pid, "tid": 0, "ts": ts,
                               "name": t.marks.get(aux, f"mark {aux}")})
            elif kind in (Kind.ERROR, Kind.SANITIZER):
                events.append({"ph": "i", "s": "p", "pid": pid,
                               "tid": queue if queue != NONE else MMU_TID, "ts": ts,
                               "name": f"{kind.name.lower()} {aux}",
                               "args": {"va": hex(va), "addr": hex(addr), "ctx": ctx,
                                        "command": cmd}})
        for tid, tname in tids.items():
            events.append({"ph": "M", "pid": pid, "tid": tid, "name": "thread_name",
                           "args": {"name": tname}})
    if cpu:
        pid = len(traces)
        events.append({"ph": "M", "pid": pid, "name": "process_name",
                       "args": {"name": "guest CPU (TCG plugin)"}})
        for a in cpu:
            events.append({"ph": "i", "s": "t", "pid": pid, "tid": a.gpu,
                           "ts": (a.t_ns - t0) / 1000,
                           "name": f"{'wr' if a.store else 'rd'} {hw.reg_name(a.offset)}",
                           "args": {"value": hex(a.value), "pc": hex(a.pc),
                                    "function": a.symbol, "gpu": a.gpu}})
        for g in sorted({a.gpu for a in cpu}):
            events.append({"ph": "M", "pid": pid, "tid": g, "name": "thread_name",
                           "args": {"name": f"gpu{g} BAR0"}})
    return {"traceEvents": events, "displayTimeUnit": "ns"}


def write_perfetto(traces: list[tuple[str, TraceFile]], out: Path,
                   cpu: list[BarAccess] | None = None) -> None:
    out.write_text(json.dumps(perfetto(traces, cpu)))


# ---- diff -----------------------------------------------------------------------------

def diff(a: TraceFile, b: TraceFile, names: tuple[str, str] = ("A", "B")) -> str:
    sa, sb = stats(a), stats(b)
    rows: list[tuple[str, float, float]] = [
        ("records", sa["records"], sb["records"]),
        ("seconds", sa["seconds"], sb["seconds"]),
        ("faults", sa["faults"], sb["faults"]),
        ("faults/s", sa["faults_per_s"], sb["faults_per_s"]),
    ]
    for k in sorted(set(sa["bytes_by_direction"]) | set(sb["bytes_by_direction"])):
        rows.append((f"bytes {k}", sa["bytes_by_direction"].get(k, 0),
                     sb["bytes_by_direction"].get(k, 0)))
    for k in sorted(set(sa["commands"]) | set(sb["commands"])):
        rows.append((f"{k} commands", sa["commands"].get(k, 0), sb["commands"].get(k, 0)))
    for k in sorted(set(sa["kinds"]) | set(sb["kinds"])):
        rows.append((f"{k} records", sa["kinds"].get(k, 0), sb["kinds"].get(k, 0)))
    width = max(len(r[0]) for r in rows)
    lines = [f"{'':<{width}}  {names[0]:>14}  {names[1]:>14}  change"]
    for name, x, y in rows:
        change = "" if x == y else ("new" if not x else f"{(y - x) / x * 100:+.1f}%")
        fmt = (lambda v: f"{v:.3f}") if isinstance(x, float) or isinstance(y, float) \
            else (lambda v: f"{v}")
        lines.append(f"{name:<{width}}  {fmt(x):>14}  {fmt(y):>14}  {change}")
    return "\n".join(lines)
