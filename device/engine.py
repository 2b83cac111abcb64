"""The GPU engine: command queues, the copy engine, replayable faults.

DOC: threads and locking
MMIO handlers (vfio-user thread) only update registers under `lock` and wake
the worker; all command execution happens on the worker thread, so MMIO stays
responsive while a long copy runs. `lock` protects queue registers, the fault
buffer registers and error registers; the worker drops it while it moves data.
`pause()`/`resume()` park the worker between commands (libvfio-user quiesces
the device before it changes DMA mappings).

DOC: execution
Queues are served round-robin, one command at a time. A command that touches
device-virtual memory first translates its whole range; every page that has no
valid or permitted PTE becomes a fault record (all of them, as one batch), the
FAULT vector fires and the queue stalls with HEAD on that command. REPLAY runs
the command again from its start; CANCEL completes it with FAULT_CANCELLED.
A malformed command completes with an error code; a malformed queue halts.
Errors are recorded in the global and per-queue ERROR registers and raise the
ERROR vector; the other queues keep running.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import hwdef as hw
from . import trace as tr
from .hwdef import Access, Aperture, ErrorCode, Opcode, QueueStatus, SanCheck
from .memory import DeviceError, GuestMemory, Vram
from .mmu import Fault, Mmu
from .sanitizer import Sanitizer
from .trace import DMA_VRAM, NONE, Recorder

log = logging.getLogger("hmmgpu.device")

MAX_FAULTS_PER_COMMAND = 64
_PTE_VALID = int(hw.Pte.VALID)
# device errors that are driver bugs the sanitizer reports with their context
_SANITIZED_ERRORS = {ErrorCode.DMA_UNMAPPED: SanCheck.DMA_UNMAPPED,
                     ErrorCode.VRAM_RANGE: SanCheck.VRAM_PTE,
                     ErrorCode.BUS_MASTER_OFF: SanCheck.BUS_MASTER_OFF}
BATCH = 16  # commands run from one queue before the next queue's turn
# plain ints for the hot path (IntFlag arithmetic is slow in CPython)
_STALLED_OR_HALTED = int(QueueStatus.STALLED | QueueStatus.HALTED)
_RUNNING = int(QueueStatus.RUNNING)
_IRQ = int(hw.CmdFlags.IRQ)
_FLAGS_VALID = {int(op): int(mask) for op, mask in hw.CMD_FLAGS_VALID.items()}


@dataclass
class Queue:
    index: int
    ring_base: int = 0
    ring_size: int = 0
    head: int = 0
    tail: int = 0
    status: int = QueueStatus.IDLE  # STALLED and HALTED; RUNNING is derived
    error: ErrorCode = ErrorCode.NONE
    pt_base: int = 0
    completed: int = 0
    # bumped by CONTROL=RESET: a command the worker was executing when the
    # driver reset the queue belongs to the old ring and must not complete
    generation: int = 0

    @property
    def runnable(self) -> bool:
        return self.head != self.tail and not self.status & _STALLED_OR_HALTED

    @property
    def status_register(self) -> int:
        """STATUS as the driver reads it: RUNNING means work the engine will
        run (HEAD != TAIL, neither stalled nor halted), so never with STALLED."""
        return self.status | (_RUNNING if self.runnable else 0)


@dataclass
class Command:
    opcode: int
    flags: int
    ctx: int
    reserved: int
    args: tuple[int, int, int, int, int]
    status: int

    @classmethod
    def unpack(cls, raw: bytes) -> Command:
        op, flags, ctx, res, a0, a1, a2, a3, a4, status = hw.COMMAND.unpack(raw)
        return cls(op, flags, ctx, res, (a0, a1, a2, a3, a4), status)

    def aperture(self, shift: int) -> int:
        return (self.flags >> shift) & hw.APERTURE_MASK


class Engine:
    def __init__(self, mem: GuestMemory, vram: Vram, raise_irq: Callable[[int], None],
                 bus_master: Callable[[], bool] = lambda: True) -> None:
        self.mem = mem
        self.vram = vram
        self.mmu = Mmu(mem, vram.size)
        self._raise_irq = raise_irq
        self._bus_master = bus_master
        self._t0 = time.monotonic_ns()
        self.trace = Recorder(self._t0, meta={"vram_size": vram.size})
        self.mmu.trace = self.trace
        self.sanitizer = Sanitizer(self.now, self.trace, vram.size)
        self.set_sanitizer(True)
        # (queue, ctx, command id) of the command executing, for trace records
        self._cur = (NONE, NONE, 0)
        self._gen = 0  # generation of the queue the command executing came from
        self.lock = threading.RLock()
        self._wake = threading.Condition(self.lock)
        self._paused = False
        self._busy = False
        self._stop = False
        self.internal_errors = 0  # device bugs caught by the worker; must stay 0
        self.reset()
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hmmgpu-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self.lock:
            self._stop = True
            self._wake.notify_all()
        if self._thread:
            self._thread.join(10)

    def reset(self) -> None:
        """Every register back to its reset value; TLB flushed."""
        with self.lock:
            self.queues = [Queue(i) for i in range(hw.NUM_QUEUES)]
            self.fault_base = 0
            self.fault_size = 0
            self.fault_put = 0
            self.fault_get = 0
            self.fault_overflow = 0
            self.error = ErrorCode.NONE
            self.error_queue = 0xFFFFFFFF
            self.error_addr = 0
            self.error_count = 0
            self.intr_status = hw.IntrStatus(0)
            self.mmu.flush()
            self.sanitizer.reset()

    def pause(self) -> None:
        """Park the worker between commands (no DMA until resume())."""
        with self.lock:
            self._paused = True
            while self._busy:
                self._wake.wait()

    def resume(self) -> None:
        with self.lock:
            if self._paused:
                self._paused = False
                self._wake.notify_all()

    def now(self) -> int:
        return time.monotonic_ns() - self._t0

    # ---- register side (called from MMIO) ------------------------------------------

    def write_tail(self, q: int, tail: int) -> None:
        with self.lock:
            queue = self.queues[q]
            if not queue.ring_size or tail >= queue.ring_size:
                self._halt(queue, ErrorCode.QUEUE_CONFIG, tail,
                           f"TAIL {tail} with RING_SIZE {queue.ring_size}")
                return
            queue.tail = tail
            self._wake.notify_all()

    def control(self, q: int, value: int) -> None:
        with self.lock:
            queue = self.queues[q]
            if self.trace.on and value in (hw.QueueControl.REPLAY, hw.QueueControl.CANCEL):
                ctx = q if q != hw.KERNEL_QUEUE else NONE
                self.trace.emit(tr.REPLAY if value == hw.QueueControl.REPLAY else tr.CANCEL,
                                q, ctx, queue.completed,
                                flags=int(bool(queue.status & QueueStatus.STALLED)))
            if value == hw.QueueControl.REPLAY:
                queue.status &= ~QueueStatus.STALLED
            elif value == hw.QueueControl.CANCEL:
                if queue.status & QueueStatus.STALLED:
                    queue.status &= ~QueueStatus.STALLED
                    self._complete_cancelled(queue)
            elif value == hw.QueueControl.RESET:
                queue.generation += 1
                queue.head = queue.tail = 0
                queue.status = QueueStatus.IDLE
                queue.error = ErrorCode.NONE
            self._wake.notify_all()

    # ---- errors and interrupts ---------------------------------------------------------

    def record_error(self, code: ErrorCode, queue: int | None, addr: int, detail: str) -> None:
        with self.lock:
            self.error = code
            self.error_queue = 0xFFFFFFFF if queue is None else queue
            self.error_addr = addr
            self.error_count += 1
            if queue is not None:
                self.queues[queue].error = code
            self.intr_status |= hw.IntrStatus.ERROR
        if self.trace.on:
            self.trace.emit(tr.ERROR, NONE if queue is None else queue, self._cur[1],
                            cmd=self._cur[2], addr=addr, aux=int(code))
        check = _SANITIZED_ERRORS.get(code)
        if check is not None:
            ctx = self._cur[1]
            self.sanitizer.report(check, queue, None if ctx == NONE else ctx,
                                  self._cur[2] if queue is not None else None, addr, detail)
        log.warning("device error %s (queue %s, addr %#x): %s", code.name, queue, addr, detail)
        self._raise_irq(hw.IrqVector.ERROR)

    def _halt(self, queue: Queue, code: ErrorCode, addr: int, detail: str) -> None:
        queue.status |= QueueStatus.HALTED
        self.record_error(code, queue.index, addr, detail)

    # ---- the worker --------------------------------------------------------------------

    def _next_queue(self, start: int) -> Queue | None:
        for i in range(hw.NUM_QUEUES):
            q = self.queues[(start + i) % hw.NUM_QUEUES]
            if q.runnable:
                return q
        return None

    def _run(self) -> None:
        rr = 0
        while True:
            with self.lock:
                while not self._stop and (self._paused or self._next_queue(rr) is None):
                    self._wake.wait()
                if self._stop:
                    return
                queue = self._next_queue(rr)
                assert queue is not None
                rr = queue.index + 1
                self._busy = True
            try:
                for _ in range(BATCH):
                    self.step(queue)
                    if self._paused or self._stop or not queue.runnable:
                        break
            except Exception:  # noqa: BLE001 - a device bug must not kill the device
                log.exception("engine failure on queue %d", queue.index)
                with self.lock:
                    self.internal_errors += 1
                    self._halt(queue, ErrorCode.BAD_COMMAND, queue.head, "internal error")
            finally:
                with self.lock:
                    self._busy = False
                    self._wake.notify_all()

    def run_until_idle(self, limit: int = 100000) -> None:
        """Execute synchronously until no queue is runnable (tests, no thread)."""
        rr = 0
        for _ in range(limit):
            queue = self._next_queue(rr)
            if queue is None:
                return
            rr = queue.index + 1
            self.step(queue)
        raise RuntimeError("queues still runnable")

    def step(self, queue: Queue) -> None:
        """Fetch and execute the command at the queue's HEAD."""
        # kernel-queue commands belong to no context unless they name one (VA aperture)
        self._cur = (queue.index, queue.index if queue.index != hw.KERNEL_QUEUE else NONE,
                     queue.completed)
        self._gen = queue.generation
        if not self._bus_master():
            with self.lock:
                self._halt(queue, ErrorCode.BUS_MASTER_OFF, queue.ring_base,
                           "Bus Master Enable is clear")
            return
        if (queue.ring_size < 2 or queue.ring_size > hw.MAX_RING_ENTRIES
                or queue.ring_size & (queue.ring_size - 1) or queue.ring_base % 64):
            with self.lock:
                self._halt(queue, ErrorCode.QUEUE_CONFIG, queue.ring_base,
                           f"ring base {queue.ring_base:#x} size {queue.ring_size}")
            return
        slot = queue.ring_base + queue.head * hw.COMMAND_SIZE
        try:
            raw = self.mem.view(slot, hw.COMMAND_SIZE).tobytes()
        except DeviceError as e:
            with self.lock:
                self._halt(queue, e.code, e.addr, "command ring not in guest memory")
            return
        cmd = Command.unpack(raw)
        if self.trace.on:
            self.trace.emit(tr.CMD_START, *self._cur, addr=slot, length=hw.COMMAND_SIZE,
                            aux=cmd.opcode)
        try:
            self.execute(queue, cmd)
        except Fault:
            return  # stalled; HEAD stays on this command
        except DeviceError as e:
            self.record_error(e.code, queue.index, e.addr, f"{hw.opcode_name(cmd.opcode)}: {e}")
            self._complete(queue, cmd, e.code, self._gen)
            return
        self._complete(queue, cmd, ErrorCode.NONE, self._gen)

    def _complete(self, queue: Queue, cmd: Command, code: ErrorCode,
                  gen: int | None = None) -> None:
        """Write the status, advance HEAD, interrupt if asked. `gen` is the
        queue generation the command was fetched in: after a RESET it is
        dropped whole (no status, no HEAD move), so HEAD never passes TAIL."""
        with self.lock:
            if gen is not None and gen != queue.generation:
                return
            if self.trace.on:
                self.trace.emit(tr.CMD_DONE, queue.index, self._cur[1], cmd=queue.completed,
                                flags=cmd.opcode & 0xFF, aux=int(code))
            if cmd.status:
                try:
                    self._write_u64(cmd.status, int(code))
                except DeviceError as e:
                    self.record_error(e.code, queue.index, e.addr, "status address")
            queue.head = (queue.head + 1) % queue.ring_size
            queue.completed = (queue.completed + 1) & 0xFFFFFFFF
            if cmd.flags & _IRQ:
                self.intr_status |= hw.IntrStatus.COMPLETION
        if cmd.flags & _IRQ:
            self._raise_irq(hw.IrqVector.COMPLETION)

    def _complete_cancelled(self, queue: Queue) -> None:
        slot = queue.ring_base + queue.head * hw.COMMAND_SIZE
        try:
            cmd = Command.unpack(self.mem.view(slot, hw.COMMAND_SIZE).tobytes())
        except DeviceError as e:
            self._halt(queue, e.code, e.addr, "command ring not in guest memory")
            return
        queue.error = ErrorCode.FAULT_CANCELLED
        self._complete(queue, cmd, ErrorCode.FAULT_CANCELLED)

    # ---- commands ----------------------------------------------------------------------

    def set_sanitizer(self, enabled: bool) -> None:
        """Switch the driver sanitizer; off, the MMU runs without its hooks."""
        self.sanitizer.enabled = enabled
        self.mmu.check_hit = self._check_tlb_hit if enabled else None
        self.mmu.check_walk = self._check_walk if enabled else None

    def _check_tlb_hit(self, ctx: int, t) -> None:
        """Sanitizer (a): the PTE behind a TLB hit must still say what the TLB holds.

        A PTE rewritten to another valid mapping is reported at once: without
        TLB_INVALIDATE the device keeps the old page. A cleared PTE is the
        first half of a correct invalidation (clear, then TLB_INVALIDATE), and
        commands already running may use the entry in between; it is reported
        when a command that started after that first sighting still uses it.
        """
        try:
            now = self.mem.read_u64(t.pte_addr)
        except DeviceError:
            now = 0
        if now == t.pte:
            return
        queue, _, command = self._cur
        if not now & _PTE_VALID and self.sanitizer.first_use_of_cleared(ctx, t.va, queue,
                                                                          command):
            return  # still the command that first saw it: inside the window
        self.sanitizer.report(
            SanCheck.STALE_TLB, queue, ctx, command, t.va,
            f"TLB entry for va {t.va:#x} used, but its PTE at {t.pte_addr:#x} changed "
            f"from {t.pte:#x} to {now:#x} without TLB_INVALIDATE", once_key=t.va)

    def _check_walk(self, ctx: int, t) -> None:
        """Sanitizer (c): a VRAM PTE must point at VRAM the driver holds."""
        if t.vram and self.sanitizer.vram_page_freed(t.addr, t.size):
            self.sanitizer.report(
                SanCheck.VRAM_PTE, self._cur[0], ctx, self._cur[2], t.va,
                f"PTE at {t.pte_addr:#x} maps va {t.va:#x} to VRAM offset {t.addr:#x}, "
                "a page the driver freed", once_key=t.va)

    def _write_u64(self, addr: int, value: int) -> None:
        """A device write of one word to system memory (status, fence, result)."""
        if self.trace.on:
            self.trace.emit(tr.DMA_WRITE, *self._cur, addr=addr, length=8)
        self.mem.write_u64(addr, value)

    def _ctx_of(self, queue: Queue, cmd: Command) -> int:
        """The context of a command (checked by execute() for every opcode)."""
        return cmd.ctx if queue.index == hw.KERNEL_QUEUE else queue.index

    @staticmethod
    def _check_ctx(queue: Queue, cmd: Command) -> None:
        # a context queue only reaches its own address space: ctx is 0 or
        # names it; the kernel queue may name any context that exists
        if queue.index == hw.KERNEL_QUEUE:
            if cmd.ctx >= hw.NUM_CONTEXTS:
                raise DeviceError(ErrorCode.CONTEXT, cmd.ctx, "no such context")
        elif cmd.ctx not in (0, queue.index):
            raise DeviceError(ErrorCode.CONTEXT, cmd.ctx,
                              f"context queue {queue.index} cannot name context {cmd.ctx}")

    def execute(self, queue: Queue, cmd: Command) -> None:
        a = cmd.args
        if cmd.reserved:
            raise DeviceError(ErrorCode.BAD_COMMAND, cmd.reserved, "reserved field set")
        valid = _FLAGS_VALID.get(cmd.opcode)
        if valid is not None and cmd.flags & ~valid:
            raise DeviceError(ErrorCode.BAD_COMMAND, cmd.flags,
                              f"flag bits {cmd.flags & ~valid:#x} undefined for "
                              f"{hw.opcode_name(cmd.opcode)}")
        self._check_ctx(queue, cmd)
        match cmd.opcode:
            case Opcode.NOP:
                pass
            case Opcode.COPY:
                self._copy(queue, cmd, cmd.aperture(hw.SRC_APERTURE_SHIFT), a[0],
                           cmd.aperture(hw.DST_APERTURE_SHIFT), a[1], a[2])
            case Opcode.READ:
                self._copy(queue, cmd, Aperture.VA, a[0], Aperture.SYS, a[1], a[2])
            case Opcode.WRITE:
                self._copy(queue, cmd, Aperture.SYS, a[1], Aperture.VA, a[0], a[2])
            case Opcode.FILL:
                self._fill(queue, cmd, cmd.aperture(hw.DST_APERTURE_SHIFT), a[0], a[1], a[2])
            case Opcode.ATOMIC:
                self._atomic(queue, cmd)
            case Opcode.TLB_INVALIDATE:
                ctx = self._ctx_of(queue, cmd)
                dropped = self.mmu.invalidate(ctx, a[0], a[1])
                self.sanitizer.invalidated(ctx)
                if self.trace.on:
                    self.trace.emit(tr.TLB_INVALIDATE, queue.index, ctx, cmd=queue.completed,
                                    va=a[0], length=a[1], aux=dropped)
            case Opcode.FENCE:
                if a[0] % 8:
                    raise DeviceError(ErrorCode.BAD_COMMAND, a[0], "fence address not 8-aligned")
                self._write_u64(a[0], a[1])
            case _:
                raise DeviceError(ErrorCode.BAD_OPCODE, cmd.opcode, "unknown opcode")

    def _segments(self, queue: Queue, cmd: Command, aperture: int, addr: int, length: int,
                  access: Access) -> list[np.ndarray]:
        """Views covering [addr, addr+length) in `aperture`; faults for all
        missing pages of a VA range are reported together."""
        if length <= 0:
            raise DeviceError(ErrorCode.BAD_COMMAND, addr, "length 0")
        if addr + length > 1 << 64:
            raise DeviceError(ErrorCode.BAD_COMMAND, addr, "range wraps past 2^64")
        # an ATOMIC writes as well as reads: a read-only DMA mapping refuses it
        write = bool(access & (Access.WRITE | Access.ATOMIC))
        tracing = self.trace.on
        kind = tr.DMA_WRITE if write else tr.DMA_READ
        if aperture == Aperture.SYS:
            if tracing:
                self.trace.emit(kind, *self._cur, addr=addr, length=length)
            return [self.mem.view(addr, length, write)]
        if aperture == Aperture.VRAM:
            if tracing:
                self.trace.emit(kind, *self._cur, flags=DMA_VRAM, addr=addr, length=length)
            return [self.vram.view(addr, length)]
        if aperture != Aperture.VA:
            raise DeviceError(ErrorCode.BAD_COMMAND, aperture, "bad aperture")
        if addr + length > 1 << hw.VA_BITS:  # no page table can map it: not a fault
            raise DeviceError(ErrorCode.BAD_COMMAND, addr, "VA range past 2^48")
        ctx = self._ctx_of(queue, cmd)
        root = self.queues[ctx].pt_base
        runs: list[list] = []  # [vram, target, length]: pages contiguous on both sides merge
        faults: list[Fault] = []
        va, end = addr, addr + length
        while va < end:
            try:
                t = self.mmu.translate(ctx, root, va, access)
            except Fault as f:
                faults.append(f)
                if len(faults) >= MAX_FAULTS_PER_COMMAND:
                    break
                va = (va & ~(hw.PAGE_SIZE - 1)) + hw.PAGE_SIZE
                continue
            n = min(end, t.va + t.size) - va
            assert n > 0, f"translation {t} does not cover {va:#x}"
            if not faults:
                target = t.target(va)
                last = runs[-1] if runs else None
                if last is not None and last[0] == t.vram and last[1] + last[2] == target:
                    last[2] += n
                else:
                    runs.append([t.vram, target, n, va])
            va += n
        if faults:
            self._report_faults(queue, ctx, faults, access)
            raise faults[0]
        views: list[np.ndarray] = []
        for vram, target, n, run_va in runs:
            if tracing:
                self.trace.emit(kind, queue.index, ctx, self._cur[2], DMA_VRAM if vram else 0,
                                va=run_va, addr=target, length=n)
            if vram:
                views.append(self.vram.view(target, n))
            else:
                views.extend(self.mem.views(target, n, write))
        return views

    def _copy(self, queue: Queue, cmd: Command, src_ap: int, src: int, dst_ap: int, dst: int,
              length: int) -> None:
        src_views = self._segments(queue, cmd, src_ap, src, length, Access.READ)
        dst_views = self._segments(queue, cmd, dst_ap, dst, length, Access.WRITE)
        si = di = so = do = 0
        while si < len(src_views):
            s, d = src_views[si], dst_views[di]
            n = min(len(s) - so, len(d) - do)
            np.copyto(d[do:do + n], s[so:so + n])
            so += n
            do += n
            if so == len(s):
                si, so = si + 1, 0
            if do == len(d):
                di, do = di + 1, 0

    def _fill(self, queue: Queue, cmd: Command, dst_ap: int, dst: int, length: int,
              pattern: int) -> None:
        if length % 4 or dst % 4:
            raise DeviceError(ErrorCode.BAD_COMMAND, dst, "FILL needs 4-byte alignment")
        if pattern >> 32:
            raise DeviceError(ErrorCode.BAD_COMMAND, pattern, "FILL pattern is 32 bits")
        for v in self._segments(queue, cmd, dst_ap, dst, length, Access.WRITE):
            v.view(np.uint32)[:] = pattern

    def _atomic(self, queue: Queue, cmd: Command) -> None:
        va, operand, result = cmd.args[0], cmd.args[1], cmd.args[2]
        if va % 8:
            raise DeviceError(ErrorCode.BAD_COMMAND, va, "ATOMIC needs 8-byte alignment")
        op = (cmd.flags >> hw.ATOMIC_OP_SHIFT) & hw.ATOMIC_OP_MASK
        if op not in (hw.AtomicOp.FETCH_ADD, hw.AtomicOp.SWAP):
            # malformed is an error before it can fault: no replay would fix it
            raise DeviceError(ErrorCode.BAD_COMMAND, op, "unknown atomic op")
        # the trace shows the atomic's 8 bytes as written (a read-modify-write)
        (view,) = self._segments(queue, cmd, Aperture.VA, va, 8, Access.ATOMIC)
        word = view.view(np.uint64)
        old = int(word[0])
        word[0] = (old + operand) & 0xFFFF_FFFF_FFFF_FFFF if op == hw.AtomicOp.FETCH_ADD \
            else operand
        if result:
            self._write_u64(result, old)

    # ---- faults ------------------------------------------------------------------------

    def _report_faults(self, queue: Queue, ctx: int, faults: list[Fault],
                       access: Access) -> None:
        with self.lock:
            if self._gen != queue.generation:
                raise faults[0]  # reset meanwhile: the command is gone, nothing to stall on
            size, base = self.fault_size, self.fault_base
            if not size or size & (size - 1) or size > hw.MAX_FAULT_ENTRIES or base % 4096:
                # Nobody to tell: the command fails instead of stalling forever.
                raise DeviceError(ErrorCode.FAULT_BUFFER, base,
                                  f"fault at {faults[0].va:#x} with no valid fault buffer")
            for f in faults:
                if (self.fault_put + 1) % size == self.fault_get % size:
                    self.fault_overflow += 1
                    self.sanitizer.report(
                        SanCheck.FAULT_OVERFLOW, queue.index, ctx, queue.completed, f.va,
                        f"fault at {f.va:#x} lost: the fault buffer ({size} entries) is full; "
                        f"PUT {self.fault_put} GET {self.fault_get}")
                    continue
                rec = hw.FAULT_RECORD.pack(f.va, self.now(), ctx, int(access), queue.index,
                                           int(f.reason))
                slot = base + (self.fault_put % size) * hw.FAULT_RECORD_SIZE
                if self.trace.on:  # the fault, and the record's DMA write
                    self.trace.emit(tr.FAULT, queue.index, ctx, queue.completed,
                                    flags=int(access), va=f.va, addr=slot,
                                    length=hw.FAULT_RECORD_SIZE, aux=int(f.reason))
                try:
                    self.mem.view(slot, hw.FAULT_RECORD_SIZE, write=True)[:] = \
                        np.frombuffer(rec, dtype=np.uint8)
                except DeviceError as e:
                    raise DeviceError(ErrorCode.FAULT_BUFFER, e.addr,
                                      "fault buffer not in guest memory") from e
                self.fault_put = (self.fault_put + 1) % size
            queue.status |= QueueStatus.STALLED
            self.intr_status |= hw.IntrStatus.FAULT
        self._raise_irq(hw.IrqVector.FAULT)


