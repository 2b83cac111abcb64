"""The GPU engine's scheduler: queues, the worker thread, completion, errors.

DOC: threads and locking
MMIO handlers (vfio-user thread) only update registers under `lock`. A
doorbell (TAIL) or REPLAY wakes the worker thread, or, with `defer` (the
server sets it), leaves its queue to run_deferred(), which the server's MMIO
thread calls once the write's reply is sent: the vCPU that rang goes on at
once, and the command runs without waking another thread (a wake-up costs
~35 us on a loaded host, as much as a small command). The MMIO thread runs
for at most DEFER_BUDGET_NS, then hands what is left to the worker, so MMIO
stays responsive while a long copy runs. With nothing to run it watches the
replay words of stalled queues (below) until a message waits for it
(`mmio_pending`), then the worker watches on. `_busy` says who executes: one
thread at a time. `lock` protects queue registers, the fault unit and the
error registers; the executing thread drops it while it moves data.
`pause()`/`resume()` park execution between commands (libvfio-user quiesces
the device before it changes DMA mappings).

DOC: execution
Queues are served round-robin, BATCH commands at a time. The scheduler fetches
the command at HEAD and hands it to the executor (executor.py); a Fault leaves
the queue STALLED with HEAD on the command until REPLAY (run it again) or
CANCEL (complete it with FAULT_CANCELLED). A failed command completes with its
error code; a malformed queue halts. Errors are recorded in the global and
per-queue ERROR registers and raise the ERROR vector; other queues go on.

DOC: replay words
A queue that stalls while its poll word has POLL_FAULT (its driver polls,
and will serve the fault at once) is watched for REPLAY_WATCH_NS: the
device sets WATCH_ACTIVE in the queue's watch word, then polls the replay
word, and a new count there is a REPLAY with no MMIO write, whose round
trip through QEMU would hold the driver's CPU (~80 us) and cost the replay
~30 us. When the window closes the device clears WATCH_ACTIVE, then (a
full barrier between) looks once more; the driver stores its count, then
(a full barrier) reads the watch word and writes REPLAY to CONTROL when
the device no longer watches and took no count: one of the two sees the
other's store. Both carry the count, so a REPLAY write whose count the
device took already (the two crossed) is dropped (docs/hardware.md).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from . import hwdef as hw
from . import trace as tr
from .executor import Executor
from .faults import FaultUnit
from .hwdef import Access, ErrorCode, QueueStatus, SanCheck
from .inject import Injection, InjectKind, Injector
from .memory import DeviceError, Fabric, GuestMemory, InjectedError, Vram
from .mmu import Fault, Mmu
from .pollarea import PollArea
from .queue import Command, Queue
from .sanitizer import Sanitizer
from .trace import NONE, Recorder

log = logging.getLogger("hmmgpu.device")

# device errors that are driver bugs the sanitizer reports with their context
_SANITIZED_ERRORS = {ErrorCode.DMA_UNMAPPED: SanCheck.DMA_UNMAPPED,
                     ErrorCode.VRAM_RANGE: SanCheck.VRAM_PTE,
                     ErrorCode.BUS_MASTER_OFF: SanCheck.BUS_MASTER_OFF}
BATCH = 16  # commands run from one queue before the next queue's turn
DEFER_BUDGET_NS = 500_000  # the MMIO thread's share of deferred work per call
# how long a stalled queue's replay word is watched: a fault served by a
# polling driver is replayed within ~30 us under TCG
REPLAY_WATCH_NS = 150_000
GLANCES = 16  # lock-free looks at the replay words between two rounds of the watch
_IRQ = int(hw.CmdFlags.IRQ)
# plain ints on the per-command path: IntFlag arithmetic builds enum objects
_STALLED = int(QueueStatus.STALLED)
_HALTED = int(QueueStatus.HALTED)
_INTR_COMPLETION = int(hw.IntrStatus.COMPLETION)
_POLL_COMPLETION, _POLL_FAULT = int(hw.PollWord.COMPLETION), int(hw.PollWord.FAULT)
_REPLAY, _COUNT_SHIFT = int(hw.QueueControl.REPLAY), hw.REPLAY_COUNT_SHIFT
_COUNT_MASK = hw.REPLAY_COUNT_MASK
# byte offsets of queue 0's words in the poll area (queue q's: + 4q)
_POLL_WORDS, _REPLAY_WORDS, _WATCH_WORDS = (
    hw.POLL_WORDS_OFFSET, hw.REPLAY_WORDS_OFFSET, hw.WATCH_WORDS_OFFSET)
_BARRIER = threading.Lock()  # taking a lock is an atomic read-modify-write
_KERNEL_QUEUE, _COMMAND = hw.KERNEL_QUEUE, hw.COMMAND


class Engine:
    def __init__(self, mem: GuestMemory, vram: Vram, raise_irq: Callable[[int], None],
                 bus_master: Callable[[], bool] = lambda: True,
                 fabric: Fabric | None = None) -> None:
        self.mem = mem
        self.vram = vram
        self._raise_irq = raise_irq
        self._bus_master = bus_master
        self._t0 = time.monotonic_ns()
        # (queue, ctx, command id) of the command executing, for trace records
        self._cur = (NONE, NONE, 0)
        self.queues: list[Queue] = []
        self.trace = Recorder(self._t0, meta={"vram_size": vram.size})
        self.sanitizer = Sanitizer(self.now, self.trace, vram.size, mem, self.where)
        self.mmu = Mmu(mem, vram.size, self.trace, self.sanitizer, fabric)
        self.inject = Injector()
        self.inject.on_hit = self._injected
        self.faults = FaultUnit(mem, self.trace, self.sanitizer, self.now, self.inject)
        self.poll = PollArea(mem)
        self.executor = Executor(mem, vram, self.mmu, self.trace, self.sanitizer,
                                 lambda: self.queues, self.where, self._report_faults,
                                 self.inject)
        self._gen = 0  # generation of the queue the command executing came from
        self.lock = threading.RLock()
        self._wake = threading.Condition(self.lock)
        self._paused = False
        self._busy = False  # a thread is executing commands
        self._stop = False
        self.defer = False  # doorbells and REPLAYs left to run_deferred()
        self._deferred: list[Queue] = []
        self._kicks = 0  # TAIL and CONTROL writes: the replay watch looks for work after one
        # the server's: a message waits for the MMIO thread (it stops watching)
        self.mmio_pending: Callable[[], bool] | None = None
        self._watched: list[Queue] = []  # stalled queues whose replay word is watched
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
            self.faults.reset()
            self.error = ErrorCode.NONE
            self.error_queue = 0xFFFFFFFF
            self.error_addr = 0
            self.error_count = 0
            self.intr_status = 0  # IntrStatus bits, a plain int on the per-command path
            self.poll.base = 0
            self.irq_held = 0
            self.replays_watched = 0
            self._watched = []
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

    def where(self) -> tuple[int, int, int]:
        """(queue, ctx, command id) of the command executing (NONE: none)."""
        return self._cur

    # ---- register side (called from MMIO) ------------------------------------------

    def write_tail(self, q: int, tail: int) -> None:
        with self.lock:
            queue = self.queues[q]
            if not queue.ring_size or tail >= queue.ring_size:
                self._halt(queue, ErrorCode.QUEUE_CONFIG, tail,
                           f"TAIL {tail} with RING_SIZE {queue.ring_size}")
                return
            queue.tail = tail
            self._kick(queue)

    def control(self, q: int, value: int) -> None:
        count = 0
        if value & _COUNT_MASK == _REPLAY:  # REPLAY, with a count or none
            value, count = _REPLAY, value >> _COUNT_SHIFT
        with self.lock:
            queue = self.queues[q]
            stale = bool(count) and count == queue.replay_seen
            if self.trace.on and value in (hw.QueueControl.REPLAY, hw.QueueControl.CANCEL):
                ctx = q if q != hw.KERNEL_QUEUE else NONE
                self.trace.emit(tr.REPLAY if value == hw.QueueControl.REPLAY else tr.CANCEL,
                                q, ctx, queue.completed,
                                flags=int(bool(queue.status & QueueStatus.STALLED)) |
                                (tr.REPLAY_STALE if stale else 0))
            if stale:
                return  # its count came through the replay word first
            if value in (hw.QueueControl.REPLAY, hw.QueueControl.CANCEL,
                         hw.QueueControl.RESET):
                if count:
                    queue.replay_seen = count
                self._unwatch(queue)
            if value == hw.QueueControl.REPLAY:
                queue.status &= ~_STALLED
            elif value == hw.QueueControl.CANCEL:
                if queue.status & _STALLED:
                    queue.status &= ~_STALLED
                    self._complete_cancelled(queue)
            elif value == hw.QueueControl.RESET:
                queue.generation += 1
                queue.hung = False
                queue.head = queue.tail = 0
                queue.status = int(QueueStatus.IDLE)
                queue.error = ErrorCode.NONE
            if value == hw.QueueControl.REPLAY:
                self._kick(queue)
            else:
                self._kicks += 1  # a CANCEL moved HEAD: what follows may run
                self._wake.notify_all()

    def _kick(self, queue: Queue) -> None:
        """`queue` may have work: the worker's, or run_deferred()'s. Under lock."""
        self._kicks += 1
        if self.defer and not self._busy:
            if queue not in self._deferred:
                self._deferred.append(queue)
        else:
            self._wake.notify_all()

    def run_deferred(self) -> bool:
        """Execute the queues that doorbells and REPLAYs left (defer) on the
        calling thread, for up to DEFER_BUDGET_NS, and with nothing to run
        watch replay words until a message waits; the worker gets the rest,
        and all of it if it is executing already. True when a doorbell or
        REPLAY had left work (the driver is submitting)."""
        deadline = time.monotonic_ns() + DEFER_BUDGET_NS
        pending = self.mmio_pending
        with self.lock:
            submitted = bool(self._deferred)
        while True:
            with self.lock:
                queue = next((q for q in self._deferred if q.runnable), None)
                if (self._busy or self._paused or self._stop
                        or time.monotonic_ns() > deadline
                        or queue is None and not (self._watched and pending)):
                    if self._watched or any(q.runnable for q in self._deferred):
                        self._wake.notify_all()
                    self._deferred.clear()
                    return submitted
                if queue is not None:
                    self._deferred.remove(queue)
                self._busy = True
            if queue is None:
                queue = self._watch(pending)
                if queue is None:  # the MMIO thread is wanted: the worker goes on
                    deadline = 0
                    continue
            self._run_batch(queue, deferred=True)
            if queue.runnable:
                with self.lock:
                    self._deferred.append(queue)

    # ---- errors and interrupts ---------------------------------------------------------

    def record_error(self, code: ErrorCode, queue: int | None, addr: int, detail: str,
                     injected: bool = False) -> None:
        with self.lock:
            self.error = code
            self.error_queue = 0xFFFFFFFF if queue is None else queue
            self.error_addr = addr
            self.error_count += 1
            if queue is not None:
                self.queues[queue].error = code
            self.intr_status |= int(hw.IntrStatus.ERROR)
        if self.trace.on:
            self.trace.emit(tr.ERROR, NONE if queue is None else queue, self._cur[1],
                            cmd=self._cur[2], addr=addr, aux=int(code))
        check = _SANITIZED_ERRORS.get(code)
        if check is not None and not injected:
            ctx = self._cur[1]
            self.sanitizer.report(check, queue, None if ctx == NONE else ctx,
                                  self._cur[2] if queue is not None else None, addr, detail)
        log.warning("device error %s (queue %s, addr %#x): %s", code.name, queue, addr, detail)
        self._raise_irq(hw.IrqVector.ERROR)

    def _halt(self, queue: Queue, code: ErrorCode, addr: int, detail: str) -> None:
        queue.status |= _HALTED
        self.record_error(code, queue.index, addr, detail)

    # ---- the worker --------------------------------------------------------------------

    def _injected(self, inj: Injection) -> None:
        if self.trace.on:
            queue, ctx, command = self._cur
            self.trace.emit(tr.INJECT, queue, ctx, command, va=inj.id, aux=int(inj.kind))

    def _next_queue(self, start: int) -> Queue | None:
        if self.inject.gone:
            return None  # a device that is gone runs nothing
        for i in range(hw.NUM_QUEUES):
            q = self.queues[(start + i) % hw.NUM_QUEUES]
            if q.runnable:
                return q
        return None

    def _run(self) -> None:
        rr = 0
        while True:
            with self.lock:
                while not self._stop and (self._paused or self._busy or (
                        self._next_queue(rr) is None and not self._watched)):
                    self._wake.wait()
                if self._stop:
                    return
                queue = self._next_queue(rr)
                self._busy = True
            if queue is None and (queue := self._watch(None)) is None:
                continue
            rr = queue.index + 1
            self._run_batch(queue)

    def _run_batch(self, queue: Queue, deferred: bool = False) -> None:
        """Up to BATCH commands of `queue`; the caller set _busy."""
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
                # pause() and the worker wait for _busy; a deferred batch
                # that left no work wakes nobody (the worker sleeps on)
                if not deferred or self._paused or self._stop or \
                        self._next_queue(0) is not None:
                    self._wake.notify_all()

    # ---- replay words ------------------------------------------------------------------

    def _watch_begin(self, queue: Queue) -> None:
        """`queue` is about to stall: watch its replay word if its driver
        polls for faults. Before the records are stored, so the count read
        here is older than any REPLAY of this stall. Under lock."""
        poll = self.poll
        if not poll.base or queue.watch >= 0:
            return
        q4 = 4 * queue.index
        try:
            if not poll.read(_POLL_WORDS + q4) & _POLL_FAULT:
                return
            count = poll.read(_REPLAY_WORDS + q4) & _COUNT_MASK
            poll.write(_WATCH_WORDS + q4, queue.replay_seen << _COUNT_SHIFT | hw.WATCH_ACTIVE)
        except DeviceError:
            return  # q's words are not in guest RAM: no watching
        queue.watch, queue.watch_until = count, time.monotonic_ns() + REPLAY_WATCH_NS
        self._watched.append(queue)

    def _unwatch(self, queue: Queue, always: bool = False) -> None:
        """Stop watching `queue`: its watch word says so, and which count
        was taken last. `always`: write the word even if not watched. Under
        lock."""
        if queue.watch >= 0:
            queue.watch = -1
            self._watched.remove(queue)
        elif not always or not self.poll.base:
            return
        try:
            self.poll.write(_WATCH_WORDS + 4 * queue.index, queue.replay_seen << _COUNT_SHIFT)
        except DeviceError:
            pass

    def _poll_replays(self) -> Queue | None:
        """One look at each watched replay word: a new count replays its
        queue; a window that closed ends the watch, after one more look
        that follows the watch word's clearing. Returns a queue replayed.
        Under lock."""
        replayed = None
        now = time.monotonic_ns()
        read = self.poll.read
        for queue in list(self._watched):
            snapshot, offset = queue.watch, _REPLAY_WORDS + 4 * queue.index
            try:
                count = read(offset) & _COUNT_MASK
                if count == snapshot:
                    if now <= queue.watch_until:
                        continue
                    self._unwatch(queue)
                    with _BARRIER:  # the clear before the last look: a full barrier
                        pass
                    count = read(offset) & _COUNT_MASK
                    if count == snapshot:
                        continue  # nothing yet: the driver will write CONTROL
            except DeviceError:
                self._unwatch(queue)
                continue
            self._take_replay(queue, count)
            replayed = queue
        return replayed

    def _take_replay(self, queue: Queue, count: int) -> None:
        """The driver's replay word says REPLAY. Under lock."""
        if self.trace.on:
            q = queue.index
            self.trace.emit(tr.REPLAY, q, q if q != _KERNEL_QUEUE else NONE, queue.completed,
                            flags=int(bool(queue.status & _STALLED)) | tr.REPLAY_WORD)
        queue.replay_seen = count
        self._unwatch(queue, always=True)  # the watch word says which count was taken
        queue.status &= ~_STALLED
        self.replays_watched += 1

    def _watch(self, pending: Callable[[], bool] | None) -> Queue | None:
        """Watch replay words (the caller set _busy) until one restarts its
        queue, which is returned with _busy still set for the caller to run
        it at once; else, with _busy cleared, None when none is watched any
        more, another queue can run, execution must stop, or pending() (a
        message for the MMIO thread)."""
        replayed, wake = None, False
        kicks = -1  # the first look checks every queue
        try:
            while True:
                with self.lock:
                    replayed = self._poll_replays()
                    if self._paused or self._stop:
                        replayed, wake = None, True  # pause() waits for _busy
                        break
                    if replayed is not None or not self._watched:
                        break
                    # a queue becomes runnable only by a TAIL or CONTROL
                    # write (they count _kicks): look at the queues (1.6
                    # us) only after one
                    if kicks != self._kicks:
                        kicks = self._kicks
                        if self._next_queue(0) is not None:
                            wake = True  # its doorbell found us busy: the worker's
                            break
                if pending is not None and pending():
                    break
                os.sched_yield()  # the GIL and the CPU for others between looks
                self._glance()
        finally:
            if replayed is None:
                with self.lock:
                    self._busy = False
                    if wake:
                        self._wake.notify_all()
        return replayed

    def _glance(self) -> None:
        """Look at the watched replay words for up to GLANCES rounds, no lock
        taken and no system call made, until one changed: a count the driver
        stores meanwhile is seen within ~0.3 us, not after the next round of
        the loop's lock, message check and yield (~2 us). The locked look
        that follows takes it. Read-only, so a watch that ends meanwhile
        costs at most one round more."""
        read = self.poll.read
        try:
            for _ in range(GLANCES):
                for queue in self._watched:
                    if read(_REPLAY_WORDS + 4 * queue.index) & _COUNT_MASK != queue.watch:
                        return
        except DeviceError:
            return  # the locked look says what happened

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
        index = queue.index
        self._cur = (index, index if index != _KERNEL_QUEUE else NONE, queue.completed)
        self._gen = queue.generation
        if not self._bus_master():
            with self.lock:
                self._halt(queue, ErrorCode.BUS_MASTER_OFF, queue.ring_base,
                           "Bus Master Enable is clear")
            return
        if not queue.ring_config_ok():
            with self.lock:
                self._halt(queue, ErrorCode.QUEUE_CONFIG, queue.ring_base,
                           f"ring base {queue.ring_base:#x} size {queue.ring_size}")
            return
        slot = queue.slot()
        try:
            cmd = Command.of(self.mem.unpack(_COMMAND, slot))
        except DeviceError as e:
            with self.lock:
                self._halt(queue, e.code, e.addr, "command ring not in guest memory")
            return
        if self.trace.on:
            self.trace.emit(tr.CMD_START, *self._cur, addr=slot, length=hw.COMMAND_SIZE,
                            aux=cmd.opcode)
        if self.inject.active:
            if self.inject.hit(InjectKind.HANG, queue.index, cmd.ctx):
                with self.lock:
                    queue.hung = True  # until the driver resets the queue
                return
            if slow := self.inject.hit(InjectKind.SLOW, queue.index, cmd.ctx):
                time.sleep(slow.delay_us / 1e6)
        try:
            self.execute(queue, cmd)
        except Fault:
            return  # stalled; HEAD stays on this command
        except DeviceError as e:
            self.record_error(e.code, queue.index, e.addr, f"{hw.opcode_name(cmd.opcode)}: {e}",
                              isinstance(e, InjectedError))
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
                    self.executor.write_u64(cmd.status, int(code))
                except DeviceError as e:
                    self.record_error(e.code, queue.index, e.addr, "status address")
            queue.head = (queue.head + 1) % queue.ring_size
            queue.completed = (queue.completed + 1) & 0xFFFFFFFF
            if cmd.flags & _IRQ:
                self.intr_status |= _INTR_COMPLETION
        if cmd.flags & _IRQ and not self._held_off(queue.index, _POLL_COMPLETION,
                                                   hw.IrqVector.COMPLETION):
            self._raise_irq(hw.IrqVector.COMPLETION)

    def _held_off(self, q: int, bit: int, vector: int) -> bool:
        """The driver polls queue q for this (its poll word has `bit`): the
        interrupt is held off. The fence, status or fault records were stored
        before; a full barrier orders them before the word's read, so a
        driver that clears the word, then (full barrier) looks once more,
        misses neither (docs/hardware.md, Poll words)."""
        if not self.poll.base:
            return False
        with _BARRIER:  # a locked instruction: x86's full barrier
            pass
        try:
            word = self.poll.read(_POLL_WORDS + 4 * q)
        except DeviceError:
            return False  # not in guest RAM: as if nobody polled
        if not word & bit:
            return False
        with self.lock:
            self.irq_held += 1
        if self.trace.on:
            self.trace.emit(tr.IRQ, flags=tr.IRQ_HELD, aux=vector)
        return True

    def _complete_cancelled(self, queue: Queue) -> None:
        slot = queue.slot()
        try:
            cmd = Command.unpack(self.mem.view(slot, hw.COMMAND_SIZE).tobytes())
        except DeviceError as e:
            self._halt(queue, e.code, e.addr, "command ring not in guest memory")
            return
        queue.error = ErrorCode.FAULT_CANCELLED
        self._complete(queue, cmd, ErrorCode.FAULT_CANCELLED)

    # ---- commands ----------------------------------------------------------------------

    def set_sanitizer(self, enabled: bool) -> None:
        """Switch the driver sanitizer; the device behaves the same either way."""
        self.sanitizer.enabled = enabled

    def execute(self, queue: Queue, cmd: Command) -> None:
        self.executor.execute(queue, cmd)

    # ---- faults ------------------------------------------------------------------------

    def _report_faults(self, queue: Queue, ctx: int, faults: list[Fault],
                       access: Access) -> None:
        """The executor's faults: records written, the queue stalled, one FAULT
        interrupt for the batch."""
        with self.lock:
            if self._gen != queue.generation:
                raise faults[0]  # reset meanwhile: the command is gone, nothing to stall on
            self._watch_begin(queue)
            try:
                self.faults.record(queue.index, ctx, queue.completed, faults, access)
            except DeviceError:
                self._unwatch(queue)  # no stall: the command fails
                raise
            queue.status |= _STALLED
            self.intr_status |= int(hw.IntrStatus.FAULT)
        if not self._held_off(queue.index, _POLL_FAULT, hw.IrqVector.FAULT):
            self._raise_irq(hw.IrqVector.FAULT)
