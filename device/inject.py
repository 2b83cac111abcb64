"""Fault injection: the device misbehaving on purpose, as real GPUs do.

Each injection has a kind and a scope (a queue, a context, a bus-address
range, an MSI-X vector), fires on a share of its chances (`probability`) and
at most `count` times (None: until removed). Every hit is an INJECT trace
record (aux = kind, va = the injection's id). Set over the control socket
(`{"op": "inject", ...}`), from Python (`gpu.inject.add(...)`) and from the
CLI (`hmmgpu inject`); docs/hardware.md says what a driver sees of each.
"""

from __future__ import annotations

import random
import threading
from dataclasses import asdict, dataclass
from enum import IntEnum
from typing import Any


class InjectKind(IntEnum):
    DMA_ERROR = 1  # a data transfer to or from system memory in [start, end) fails
    HANG = 2  # a command on the queue never completes: the queue shows RUNNING, HEAD stays
    IRQ_LOST = 3  # an interrupt on the vector is not delivered
    SLOW = 4  # each command on the queue takes delay_us longer
    GONE = 5  # surprise removal: registers read all-ones, writes and commands are dropped
    FAULT_BUFFER_FULL = 6  # a fault finds the fault buffer full: lost, counted in FAULT_OVERFLOW
    IRQ_DELAY = 7  # an interrupt on the vector is delivered delay_us late


_ANY = 1 << 64


@dataclass
class Injection:
    id: int
    kind: InjectKind
    queue: int | None = None
    ctx: int | None = None
    start: int = 0
    end: int = _ANY
    vector: int | None = None
    count: int | None = None  # hits left; None: no limit
    probability: float = 1.0
    delay_us: int = 0
    hits: int = 0

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = self.kind.name.lower()
        if self.end == _ANY:
            d["end"] = None
        return d


FIELDS = {"queue", "ctx", "start", "end", "vector", "count", "probability", "delay_us"}


def parse(spec: dict[str, Any], next_id: int) -> Injection:
    """An Injection from its JSON form; ValueError naming what is wrong."""
    kind = str(spec.get("kind", "")).upper()
    if kind not in InjectKind.__members__:
        raise ValueError(f"injection kind {spec.get('kind')!r}: one of "
                         + ", ".join(k.name.lower() for k in InjectKind))
    unknown = set(spec) - FIELDS - {"kind"}
    if unknown:
        raise ValueError(f"unknown injection field(s): {', '.join(sorted(unknown))}")
    args: dict[str, Any] = {}
    for name in FIELDS & set(spec):
        value = spec[name]
        if value is None:
            continue
        if name == "probability":
            if not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise ValueError(f"probability {value!r}: a number in (0, 1]")
            args[name] = float(value)
        elif not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} {value!r}: a non-negative integer")
        else:
            args[name] = value
    inj = Injection(next_id, InjectKind[kind], **args)
    if inj.start >= inj.end:
        raise ValueError(f"empty address range [{inj.start:#x}, {inj.end:#x})")
    if inj.kind in (InjectKind.SLOW, InjectKind.IRQ_DELAY) and not inj.delay_us:
        raise ValueError(f"{kind.lower()} needs delay_us")
    return inj


class Injector:
    """The active injections; `hit` is asked at each chance of a kind."""

    def __init__(self, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._next_id = 1
        self.active: list[Injection] = []
        self.gone = False  # a GONE injection is active (read on every register access)
        self.on_hit = lambda _inj: None  # the device's trace hook

    def add(self, spec: dict[str, Any]) -> Injection:
        with self._lock:
            inj = parse(spec, self._next_id)
            self._next_id += 1
            self.active.append(inj)
            self.gone = any(i.kind == InjectKind.GONE for i in self.active)
        return inj

    def remove(self, ident: int | None = None) -> int:
        """Remove one injection (None: all); how many went."""
        with self._lock:
            keep = [i for i in self.active if ident is not None and i.id != ident]
            gone, self.active = len(self.active) - len(keep), keep
            self.gone = any(i.kind == InjectKind.GONE for i in self.active)
        return gone

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [i.describe() for i in self.active]

    def hit(self, kind: InjectKind, queue: int | None = None, ctx: int | None = None,
            addr: int | None = None, length: int = 1, vector: int | None = None
            ) -> Injection | None:
        """The injection of `kind` that fires for this chance, if any."""
        if not self.active:
            return None
        with self._lock:
            for inj in self.active:
                if inj.kind != kind or (inj.queue is not None and inj.queue != queue) or \
                        (inj.ctx is not None and inj.ctx != ctx) or \
                        (inj.vector is not None and inj.vector != vector):
                    continue
                if addr is not None and not (addr < inj.end and inj.start < addr + length):
                    continue
                if inj.probability < 1 and self._rng.random() >= inj.probability:
                    continue
                inj.hits += 1
                if inj.count is not None:
                    inj.count -= 1
                    if inj.count == 0:
                        self.active.remove(inj)
                break
            else:
                return None
        self.on_hit(inj)
        return inj
