"""The copy engine: what one command does, once the scheduler fetched it.

execute() checks the command (reserved field, flag bits, context), then runs
it. A range is checked whole before any byte moves; a device-virtual range is
translated page by page first, and every page without a valid or permitted
PTE becomes a Fault handed to the fault unit as one batch (then Fault is
raised and the scheduler leaves the queue stalled on the command). Errors are
raised as DeviceError with the code and the ERROR_ADDR value of
docs/hardware.md; the scheduler records them and completes the command.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import hwdef as hw
from . import trace as tr
from .hwdef import Access, Aperture, ErrorCode, Opcode
from .inject import InjectKind, Injector
from .memory import DeviceError, GuestMemory, InjectedError, Vram
from .mmu import Fault, Mmu
from .queue import Command, Queue
from .sanitizer import Sanitizer
from .trace import DMA_VRAM, Recorder, dma_flags

MAX_FAULTS_PER_COMMAND = 64
_FLAGS_VALID = {int(op): int(mask) for op, mask in hw.CMD_FLAGS_VALID.items()}
_VA_END = 1 << hw.VA_BITS
_TO_SYS, _LEAF = int(hw.CmdFlags.TO_SYS), int(hw.CmdFlags.LEAF)
_OP_COPY = int(Opcode.COPY)
_SYS, _VA = int(Aperture.SYS), int(Aperture.VA)
_AP_MASK = hw.APERTURE_MASK
_SRC_SHIFT, _DST_SHIFT = hw.SRC_APERTURE_SHIFT, hw.DST_APERTURE_SHIFT

# report_faults(queue, ctx, faults, access): record them and stall the queue
ReportFaults = Callable[[Queue, int, list[Fault], Access], None]


class Executor:
    def __init__(self, mem: GuestMemory, vram: Vram, mmu: Mmu, trace: Recorder,
                 sanitizer: Sanitizer, queues: Callable[[], list[Queue]],
                 where: Callable[[], tuple[int, int, int]],
                 report_faults: ReportFaults, inject: Injector) -> None:
        self.mem = mem
        self.vram = vram
        self.mmu = mmu
        self.trace = trace
        self.sanitizer = sanitizer
        self._queues = queues
        self._where = where
        self._report_faults = report_faults
        self.inject = inject

    # ---- checks ------------------------------------------------------------------------

    @staticmethod
    def context(queue: Queue, cmd: Command) -> int:
        """The context of a command (checked by execute() for every opcode)."""
        return cmd.ctx if queue.index == hw.KERNEL_QUEUE else queue.index

    @staticmethod
    def _check(queue: Queue, cmd: Command) -> None:
        if cmd.reserved:
            raise DeviceError(ErrorCode.BAD_COMMAND, cmd.reserved, "reserved field set")
        valid = _FLAGS_VALID.get(cmd.opcode)
        if valid is not None and cmd.flags & ~valid:
            raise DeviceError(ErrorCode.BAD_COMMAND, cmd.flags,
                              f"flag bits {cmd.flags & ~valid:#x} undefined for "
                              f"{hw.opcode_name(cmd.opcode)}")
        # a context queue only reaches its own address space: ctx is 0 or
        # names it; the kernel queue may name any context that exists
        if queue.index == hw.KERNEL_QUEUE:
            if cmd.ctx >= hw.NUM_CONTEXTS:
                raise DeviceError(ErrorCode.CONTEXT, cmd.ctx, "no such context")
        elif cmd.ctx not in (0, queue.index):
            raise DeviceError(ErrorCode.CONTEXT, cmd.ctx,
                              f"context queue {queue.index} cannot name context {cmd.ctx}")

    # ---- commands ----------------------------------------------------------------------

    def execute(self, queue: Queue, cmd: Command) -> None:
        self._check(queue, cmd)
        a = cmd.args
        if cmd.opcode == _OP_COPY and self._copy_direct(cmd.flags, a[0], a[1], a[2]):
            return
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
                ctx = self.context(queue, cmd)
                leaf = bool(cmd.flags & _LEAF)
                dropped = self.mmu.invalidate(ctx, a[0], a[1], leaf,
                                              self._queues()[ctx].pt_base)
                self.sanitizer.invalidated(ctx)
                if self.trace.on:
                    self.trace.emit(tr.TLB_INVALIDATE, queue.index, ctx, cmd=queue.completed,
                                    flags=tr.INVALIDATE_LEAF if leaf else 0, va=a[0],
                                    length=min(a[1], tr.LENGTH_MAX), aux=dropped)
            case Opcode.COPY_PAGES:
                self._copy_pages(queue, cmd, a[0], a[1], a[2],
                                 bool(cmd.flags & _TO_SYS))
            case Opcode.FENCE:
                if a[0] % 8:
                    raise DeviceError(ErrorCode.BAD_COMMAND, a[0], "fence address not 8-aligned")
                self.write_u64(a[0], a[1])
            case _:
                raise DeviceError(ErrorCode.BAD_OPCODE, cmd.opcode, "unknown opcode")

    def write_u64(self, addr: int, value: int) -> None:
        """A device write of one word to system memory (status, fence, result)."""
        if self.trace.on:
            self.trace.emit(tr.DMA_WRITE, *self._where(), addr=addr, length=8)
        self.mem.write_u64(addr, value)

    def _segments(self, queue: Queue, cmd: Command, aperture: int, addr: int, length: int,
                  access: Access) -> list[np.ndarray]:
        """Views covering [addr, addr+length) in `aperture`; faults for all
        missing pages of a VA range are reported together."""
        if length <= 0:
            raise DeviceError(ErrorCode.BAD_COMMAND, addr, "length 0")
        if addr + length > 1 << 64:
            raise DeviceError(ErrorCode.BAD_COMMAND, addr, "range wraps past 2^64")
        # an ATOMIC writes as well as reads: a read-only DMA mapping refuses it
        write = access != Access.READ
        tracing = self.trace.on
        kind = tr.DMA_WRITE if write else tr.DMA_READ
        if aperture == Aperture.SYS:
            if tracing:
                self.trace.emit(kind, *self._where(), addr=addr, length=length)
            self._dma_error(queue, cmd, addr, length)
            return [self.mem.view(addr, length, write)]
        if aperture == Aperture.VRAM:
            if tracing:
                self.trace.emit(kind, *self._where(), flags=DMA_VRAM, addr=addr, length=length)
            return [self.vram.view(addr, length)]
        if aperture != Aperture.VA:
            raise DeviceError(ErrorCode.BAD_COMMAND, aperture, "bad aperture")
        if addr + length > _VA_END:  # no page table can map it: not a fault
            raise DeviceError(ErrorCode.BAD_COMMAND, addr, "VA range past 2^48")
        ctx = self.context(queue, cmd)
        root = self._queues()[ctx].pt_base
        mmu = self.mmu
        translate = mmu.translate
        va, end = addr, addr + length
        faults: list[Fault] = []
        ahead: list = []  # translations of va and on, walked already (Mmu.walk_ahead)
        k = 0
        # untraced: a range in one page needs no runs; a longer one starts the
        # loop below with its first page's translation (and those walked ahead)
        if not tracing and not self.inject.active:
            try:
                t = translate(ctx, root, addr, access)
            except Fault as f:
                if (addr ^ (end - 1)) < hw.PAGE_SIZE:  # its one page: the batch
                    self._report_faults(queue, ctx, [f], access)
                    raise
                faults.append(f)  # the loop below collects the others
                va = (addr & ~(hw.PAGE_SIZE - 1)) + hw.PAGE_SIZE
            else:
                stop = t.va + t.size
                if end <= stop:
                    target = t.addr + (addr - t.va)
                    if t.vram:
                        return [self._vram_of(t.peer).view(target, length)]
                    try:
                        return [self.mem.view(target, length, write)]
                    except DeviceError:
                        pass  # across two regions, or an error: the general path says
                elif end - stop <= hw.PAGE_SIZE and not t.vram:
                    # into the next page (an unaligned buffer of a page or
                    # less): two views, or one, without the runs (a 4 KiB
                    # COPY to an unaligned buffer 20.3 -> 16.0 us in-process)
                    if (views := self._two_pages(ctx, root, t, addr, stop, end, access)):
                        return views
                ahead = [t, *mmu.walk_ahead(ctx, t, end, access)] if mmu.walked else [t]
        # [(vram, peer), target, length, va]: contiguous pages of one memory merge
        runs: list[list] = []
        while va < end:
            if k < len(ahead):
                t = ahead[k]
                k += 1
            else:
                try:
                    t = translate(ctx, root, va, access)
                except Fault as f:
                    faults.append(f)
                    if len(faults) >= MAX_FAULTS_PER_COMMAND:
                        break
                    va = (va & ~(hw.PAGE_SIZE - 1)) + hw.PAGE_SIZE
                    continue
                if mmu.walked and t.va + t.size < end:
                    ahead, k = mmu.walk_ahead(ctx, t, end, access), 0
            n = min(end, t.va + t.size) - va
            assert n > 0, f"translation {t} does not cover {va:#x}"
            if not faults:
                target = t.addr + (va - t.va)  # t.target(va), inline: once per page
                memory = (t.vram, t.peer)
                last = runs[-1] if runs else None
                if last is not None and last[0] == memory and last[1] + last[2] == target:
                    last[2] += n
                else:
                    runs.append([memory, target, n, va])
            va += n
        if faults:
            self._report_faults(queue, ctx, faults, access)
            raise faults[0]
        views: list[np.ndarray] = []
        command = self._where()[2] if tracing else 0
        for (vram, peer), target, n, run_va in runs:
            if tracing:
                self.trace.emit(kind, queue.index, ctx, command, dma_flags(vram, peer),
                                va=run_va, addr=target, length=n)
            if not vram:
                self._dma_error(queue, cmd, target, n)
                views.extend(self.mem.views(target, n, write))
            else:
                views.append(self._vram_of(peer).view(target, n))
        return views

    def _two_pages(self, ctx: int, root: int, t, addr: int, stop: int, end: int,
                   access: Access) -> list[np.ndarray] | None:
        """_segments() for [addr, end) in system memory that `t` covers up
        to `stop`, the rest lying in the page at `stop`; None when the
        general path must do it (a fault there, VRAM, a region boundary, an
        error): it translates again, and reports what it finds in its order."""
        try:
            t2 = self.mmu.translate(ctx, root, stop, access)
        except Fault:
            return None
        if t2.vram:
            return None
        write = access != Access.READ
        first, second = t.addr + (addr - t.va), t2.addr + (stop - t2.va)
        try:
            if first + (stop - addr) == second:  # contiguous: one view
                return [self.mem.view(first, end - addr, write)]
            return [self.mem.view(first, stop - addr, write),
                    self.mem.view(second, end - stop, write)]
        except DeviceError:
            return None

    def _dma_error(self, queue: Queue, cmd: Command, addr: int, length: int) -> None:
        """An injected DMA error on [addr, addr+length) of system memory: the
        command fails as if the bus had refused the transfer."""
        if self.inject.active and self.inject.hit(InjectKind.DMA_ERROR, queue.index, cmd.ctx,
                                                  addr, length):
            raise InjectedError(ErrorCode.DMA_UNMAPPED, addr, "injected DMA error")

    def _vram_of(self, peer: int) -> Vram:
        """This device's VRAM (peer -1), or the VRAM of fabric id `peer`."""
        if peer < 0:
            return self.vram
        vram = self.mmu.fabric.peer(peer) if self.mmu.fabric is not None else None
        if vram is None:  # the walk saw the link; it cannot go down while the device runs
            raise DeviceError(ErrorCode.PTE_INVALID, peer, f"no link to fabric id {peer}")
        return vram

    def _copy_direct(self, flags: int, src: int, dst: int, length: int) -> bool:
        """A COPY between system memory and VRAM, untraced, nothing injected:
        the one-view case of _copy() without its general machinery (the
        per-command cost of small copies). False: _copy() must do it (a VA
        side, tracing, injection, or an error it reports)."""
        src_ap, dst_ap = (flags >> _SRC_SHIFT) & _AP_MASK, (flags >> _DST_SHIFT) & _AP_MASK
        if src_ap >= _VA or dst_ap >= _VA or length <= 0 or self.trace.on or self.inject.active:
            return False
        try:
            s = self.mem.view(src, length) if src_ap == _SYS else self.vram.view(src, length)
            d = self.mem.view(dst, length, True) if dst_ap == _SYS else \
                self.vram.view(dst, length)
        except DeviceError:
            return False  # _copy() raises it, in its order (source first)
        np.copyto(d, s)
        return True

    def _copy(self, queue: Queue, cmd: Command, src_ap: int, src: int, dst_ap: int, dst: int,
              length: int) -> None:
        src_views = self._segments(queue, cmd, src_ap, src, length, Access.READ)
        dst_views = self._segments(queue, cmd, dst_ap, dst, length, Access.WRITE)
        if len(src_views) == 1:  # the common cases: one side in one piece
            s, off = src_views[0], 0
            for d in dst_views:
                n = len(d)
                np.copyto(d, s[off:off + n])
                off += n
            return
        if len(dst_views) == 1:
            d, off = dst_views[0], 0
            for s in src_views:
                n = len(s)
                np.copyto(d[off:off + n], s)
                off += n
            return
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

    def _copy_pages(self, queue: Queue, cmd: Command, lst: int, vram: int, count: int,
                    to_sys: bool) -> None:
        """COPY_PAGES: `count` 4 KiB system pages, listed by bus address at
        `lst`, to or from the VRAM range at `vram` (page k <-> vram + k pages)."""
        page = hw.PAGE_SIZE
        if not 1 <= count <= hw.MAX_COPY_PAGES:
            raise DeviceError(ErrorCode.BAD_COMMAND, count,
                              f"COPY_PAGES of {count} pages (1..{hw.MAX_COPY_PAGES})")
        if lst % 8 or vram % page:
            raise DeviceError(ErrorCode.BAD_COMMAND, lst if lst % 8 else vram,
                              "COPY_PAGES list not 8-aligned or VRAM offset not 4 KiB-aligned")
        (listed,) = self._segments(queue, cmd, Aperture.SYS, lst, count * 8, Access.READ)
        addrs = np.frombuffer(listed.tobytes(), dtype="<u8")
        if self._copy_pages_direct(addrs, vram, to_sys):
            return
        pages = addrs.tolist()
        for addr in pages:
            if addr % page:
                raise DeviceError(ErrorCode.BAD_COMMAND, addr, "page address not 4 KiB-aligned")
        (dev,) = self._segments(queue, cmd, Aperture.VRAM, vram, count * page,
                                Access.READ if to_sys else Access.WRITE)
        access = Access.WRITE if to_sys else Access.READ
        for k, addr in enumerate(pages):
            (sys,) = self._segments(queue, cmd, Aperture.SYS, addr, page, access)
            if to_sys:
                np.copyto(sys, dev[k * page:(k + 1) * page])
            else:
                np.copyto(dev[k * page:(k + 1) * page], sys)

    def _copy_pages_direct(self, addrs: np.ndarray, vram: int, to_sys: bool) -> bool:
        """COPY_PAGES as one gather or scatter, untraced and with nothing
        injected, when every listed page is aligned and in one region of
        guest RAM (a page listed twice: only when reading it). False: the
        page-by-page path must do it (tracing, injection, or an error it
        reports in its order)."""
        if self.trace.on or self.inject.active:
            return False
        found = self.mem.page_rows(addrs.astype(np.int64), write=to_sys)
        if found is None:
            return False
        rows, index = found
        n, page = addrs.size, hw.PAGE_SIZE
        try:
            dev = self.vram.view(vram, n * page).reshape(n, page)
        except DeviceError:
            return False
        if to_sys:
            if np.unique(index).size != n:
                return False  # which copy of a page wins is the loop's to say
            rows[index] = dev
        else:
            np.take(rows, index, axis=0, out=dev)
        return True

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
            self.write_u64(result, old)
