"""DMA trace recording: what the device did, as fixed-size binary records.

A Recorder collects records from the engine, the MMU and the register file
into a bounded buffer of `capacity` records. Streaming (start(path)), a
writer thread drains it to a file, and records that find it full are counted
as dropped instead of slowing the device. Without a file it is a flight
recorder: the newest `capacity` records stay, older ones are counted as
overwritten, and dump(path) writes what it holds.

The file format (docs/trace-format.md) is a 64-byte header, then RECORD
entries, then a JSON trailer (marks, drop count, device facts) once the trace
is closed. load() reads it into a numpy structured array.
"""

from __future__ import annotations

import json
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np

_monotonic_ns = time.monotonic_ns
MAGIC = b"HMMGPUTR"
VERSION = 1
# magic, version, record size, header size, records (0 = not closed), trailer
# offset, t0 wall clock (ns since the epoch), t0 monotonic (ns)
HEADER = struct.Struct("<8sIIIQQQQ")
HEADER_SIZE = 64
COUNT_OFFSET = 20  # records, then trailer offset: patched when the file is closed

RECORD = np.dtype([
    ("t_ns", "<u8"),     # device time: monotonic ns since the device started
    ("kind", "u1"),      # Kind
    ("queue", "u1"),     # queue index (16 = kernel queue), 255 when none
    ("ctx", "u1"),       # context, 255 when none
    ("flags", "u1"),     # per kind, see Kind
    ("cmd", "<u4"),      # command id: the queue's count of completed commands when it ran
    ("va", "<u8"),       # device virtual address, register value, or 0
    ("addr", "<u8"),     # bus address, VRAM offset, PTE address or register offset
    ("length", "<u4"),   # bytes
    ("aux", "<u4"),      # per kind: opcode, status, fault reason, vector, mark id ...
])
assert RECORD.itemsize == 40

NONE = 255
# `length` is 32 bits: a longer range (a TLB invalidation of a process's
# whole address space at exit) is recorded as this, "4 GiB or more"
LENGTH_MAX = 0xFFFF_FFFF
IRQ_HELD = 2  # an IRQ record's flags: held off by the driver's poll word
# a REPLAY record's flags: bit 0 the queue was stalled; these say how it came
REPLAY_WORD = 2  # taken from the queue's replay word, not a CONTROL write
REPLAY_STALE = 4  # a CONTROL write whose count the replay word had brought: dropped
INVALIDATE_LEAF = 1  # a TLB_INVALIDATE record's flags: LEAF, the walk cache kept


class Kind(IntEnum):
    """Record kinds. DMA flags: bit 0 VRAM (else system memory), bit 1 a
    peer's VRAM (fabric id in bits 7:4)."""

    DMA_READ = 1         # va (0 for SYS/VRAM apertures), addr, length
    DMA_WRITE = 2
    WALK = 3             # a walk that found nothing at va, or (flags = PTE permission bits,
                         # addr = PTE address, aux = PTE bits 31:0) a PTE without the access;
                         # a successful walk is a TLB_FILL
    TLB_FILL = 4         # va of the page, addr = target, length = page size
    TLB_INVALIDATE = 5   # va, length (0 = whole context), aux = entries dropped,
                         # flags: INVALIDATE_LEAF
    FAULT = 6            # va, flags = access, aux = reason
    REPLAY = 7           # flags: 1 stalled, REPLAY_WORD, REPLAY_STALE
    CANCEL = 8
    MMIO_READ = 9        # addr = register offset, va = value, length = size
    MMIO_WRITE = 10
    IRQ = 11             # aux = vector, flags = 1 when delivered, IRQ_HELD when held off
    CMD_START = 12       # aux = opcode
    CMD_DONE = 13        # aux = status (error code), flags = opcode
    MARK = 14            # aux = mark id (text in the trailer)
    SANITIZER = 15       # aux = detector, va/addr = what it saw
    ERROR = 16           # aux = error code, addr = the address it names
    INJECT = 17          # an injected fault fired: aux = its kind, va = the injection's id


DMA_VRAM = 1
DMA_PEER = 2  # with DMA_VRAM: a peer's VRAM over the fabric, its fabric id in bits 7:4
DMA_PEER_SHIFT = 4


def dma_flags(vram: bool, peer: int = -1) -> int:
    """DMA and TLB_FILL flags for memory in local VRAM, a peer's (fabric id
    `peer` >= 0) or system memory."""
    if not vram:
        return 0
    return DMA_VRAM if peer < 0 else DMA_VRAM | DMA_PEER | peer << DMA_PEER_SHIFT
# plain ints for the hot paths (an IntEnum costs a conversion per record)
(DMA_READ, DMA_WRITE, WALK, TLB_FILL, TLB_INVALIDATE, FAULT, REPLAY, CANCEL, MMIO_READ,
 MMIO_WRITE, IRQ, CMD_START, CMD_DONE, MARK, SANITIZER, ERROR, INJECT) = (int(k) for k in Kind)


@dataclass
class TraceFile:
    records: np.ndarray
    marks: dict[int, str] = field(default_factory=dict)
    dropped: int = 0
    overwritten: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    wall_t0_ns: int = 0
    mono_t0_ns: int = 0  # host CLOCK_MONOTONIC at device time 0 (aligns with CPU traces)

    def of_kind(self, *kinds: Kind) -> np.ndarray:
        return self.records[np.isin(self.records["kind"], [int(k) for k in kinds])]


def load(path: str | Path) -> TraceFile:
    """A trace file as numpy records, with its marks and drop count. A file
    whose writer did not close it (no trailer) loads up to its last whole record."""
    data = Path(path).read_bytes()
    if len(data) < HEADER_SIZE or data[:8] != MAGIC:
        raise ValueError(f"{path}: not an hmmgpu trace")
    _, version, rsize, hsize, count, trailer, wall_t0, mono_t0 = HEADER.unpack_from(data)
    if version != VERSION or rsize != RECORD.itemsize:
        raise ValueError(f"{path}: trace version {version}, record size {rsize}: unsupported")
    end = trailer if trailer else hsize + (len(data) - hsize) // rsize * rsize
    records = np.frombuffer(data, dtype=RECORD, offset=hsize,
                            count=(end - hsize) // rsize).copy()
    if count and len(records) != count:
        raise ValueError(f"{path}: header says {count} records, file holds {len(records)}")
    info: dict[str, Any] = json.loads(data[trailer:]) if trailer else {}
    return TraceFile(records, {int(k): v for k, v in info.get("marks", {}).items()},
                     int(info.get("dropped", 0)), int(info.get("overwritten", 0)),
                     info.get("meta", {}), wall_t0, mono_t0)


# each field's width, for a value that does not fit (the fast path refuses it)
_FIELD_MASKS = tuple((1 << (8 * RECORD[name].itemsize)) - 1 for name in RECORD.names)


def _to_records(rows: list[tuple], t0_mono: int) -> np.ndarray:
    """Buffered tuples (host monotonic time first) as RECORDs in device time.
    A value wider than its field is cut to the field (a hook's bug must not
    cost the trace: numpy refuses the whole batch otherwise)."""
    try:
        arr = np.array(rows, dtype=RECORD)
    except OverflowError:
        arr = np.array([tuple(v & m for v, m in zip(row, _FIELD_MASKS, strict=True))
                        for row in rows], dtype=RECORD)
    arr["t_ns"] -= np.uint64(t0_mono)
    return arr


class _Sink:
    """One open trace file: header now, records as they come, trailer on close."""

    def __init__(self, path: Path, t0_mono: int) -> None:
        self.path = path
        self.t0_mono = t0_mono
        self.f = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.count = 0
        self.f.write(HEADER.pack(MAGIC, VERSION, RECORD.itemsize, HEADER_SIZE, 0, 0,
                                 time.time_ns() - (time.monotonic_ns() - t0_mono), t0_mono)
                     .ljust(HEADER_SIZE, b"\0"))

    def write(self, rows: list[tuple]) -> None:
        if rows:
            self.f.write(_to_records(rows, self.t0_mono).tobytes())
            self.count += len(rows)

    def close(self, trailer: dict[str, Any]) -> None:
        offset = self.f.tell()
        self.f.write(json.dumps(trailer).encode())
        self.f.seek(COUNT_OFFSET)
        self.f.write(struct.pack("<QQ", self.count, offset))
        self.f.close()


class Recorder:
    """The device's trace buffer. `on` is read by every hook before it builds
    a record, so a device that is not tracing pays one attribute test."""

    def __init__(self, t0_ns: int, capacity: int = 1 << 20, meta: dict | None = None) -> None:
        self.t0_ns = t0_ns  # host CLOCK_MONOTONIC at device time 0
        self.capacity = capacity
        self.meta = meta or {}
        self.on = False
        self.dropped = 0
        self.overwritten = 0
        self.recorded = 0
        self.marks: dict[int, str] = {}
        self._buf: deque[tuple] = deque(maxlen=capacity)
        self._lock = threading.Lock()  # control operations; emit() relies on deque.append
        self._sink: _Sink | None = None
        self._writer: threading.Thread | None = None
        self._wake = threading.Event()

    # ---- hooks -------------------------------------------------------------------

    def emit(self, kind: int, queue: int = NONE, ctx: int = NONE, cmd: int = 0, flags: int = 0,
             va: int = 0, addr: int = 0, length: int = 0, aux: int = 0) -> None:
        """One record; called on the device's hot paths, so it only appends a
        tuple (host monotonic time, converted when written). Values must fit
        their fields (see RECORD)."""
        buf = self._buf
        if len(buf) >= self.capacity:
            if self._sink is not None:
                self.dropped += 1
                return
            self.overwritten += 1  # the deque lets the oldest go
        buf.append((_monotonic_ns(), kind, queue, ctx, flags, cmd, va, addr, length, aux))
        self.recorded += 1

    # ---- control -----------------------------------------------------------------

    def start(self, path: str | Path | None = None, capacity: int | None = None) -> None:
        """Record from now on; with `path`, stream the records to that file."""
        self.stop()
        with self._lock:
            if capacity:
                self.capacity = capacity
            self._buf = deque(maxlen=self.capacity)
            self.dropped = self.overwritten = self.recorded = 0
            self.marks = {}
            if path is not None:
                self._sink = _Sink(Path(path), self.t0_ns)
                self._wake.clear()
                self._writer = threading.Thread(target=self._drain, name="hmmgpu-trace",
                                                daemon=True)
                self._writer.start()
            self.on = True

    def mark(self, text: str) -> int:
        with self._lock:
            mid = len(self.marks) + 1
            self.marks[mid] = text
        self.emit(MARK, aux=mid)
        return mid

    def stop(self) -> dict[str, Any]:
        """Stop recording; close the streamed file. Returns the counts."""
        self.on = False
        writer, self._writer = self._writer, None
        if writer is not None:
            self._wake.set()
            writer.join()
        with self._lock:
            sink, self._sink = self._sink, None
            if sink is not None:
                sink.write(self._take())
                sink.close(self._trailer())
        return self.status()

    def dump(self, path: str | Path) -> int:
        """Write the buffered records to `path` (a complete trace file) and
        empty the buffer; returns how many were written."""
        with self._lock:
            rows = self._take()
            sink = _Sink(Path(path), self.t0_ns)
            sink.write(rows)
            sink.close(self._trailer())
        return len(rows)

    def status(self) -> dict[str, Any]:
        return {"on": self.on, "recorded": self.recorded, "dropped": self.dropped,
                "overwritten": self.overwritten, "buffered": len(self._buf),
                "capacity": self.capacity,
                "streaming": self._sink.path.as_posix() if self._sink else None}

    def _trailer(self) -> dict[str, Any]:
        return {"marks": self.marks, "dropped": self.dropped, "overwritten": self.overwritten,
                "meta": self.meta}

    def _take(self) -> list[tuple]:
        """Empty the buffer into a list, one record at a time: emit() appends
        meanwhile without a lock, and a copy followed by clear() would lose
        what it appended in between (deque append and popleft are atomic)."""
        buf, rows = self._buf, []
        pop, put = buf.popleft, rows.append
        try:
            for _ in range(len(buf)):
                put(pop())
        except IndexError:  # the flight recorder let the oldest go meanwhile
            pass
        return rows

    def _drain(self) -> None:
        while True:
            self._wake.wait(0.1)  # emit() never signals: it must stay cheap
            self._wake.clear()
            with self._lock:
                rows = self._take()
                sink = self._sink
            if sink is None:
                return
            sink.write(rows)
            if not self.on:
                return
