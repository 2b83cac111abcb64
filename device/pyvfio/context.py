"""pyvfio's Python face of a libvfio-user context (vfu_ctx_t).

A Context owns one vfio-user server socket and one emulated PCI function.
The set-up calls mirror the C API in the order a device uses them: create,
PCI identity and capabilities, regions, IRQs, DMA callbacks, realize, then
attach and run from an event loop built on `poll_fd`.

Callbacks from C run on the thread that calls `run()`. A Python exception in
a callback never unwinds into C: it is logged and turned into -1/errno (or, for
void callbacks, only logged).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from . import _lib as L

log = logging.getLogger("pyvfio")

PROT_READ = 1
PROT_WRITE = 2

# region access: (offset, data-to-write or None, count) -> bytes read or None
RegionAccess = Callable[[int, bytes | None, int], bytes | None]


class VfuError(OSError):
    """A libvfio-user call failed; carries errno like OSError."""


def _check(ret: int, what: str) -> int:
    if ret is not None and ret < 0:
        e = ctypes.get_errno()
        raise VfuError(e, f"{what}: {os.strerror(e)}")
    return ret


@dataclass(frozen=True)
class DmaRegion:
    """One DMA region the client (QEMU) registered: guest bus range -> our mapping."""

    iova: int
    length: int
    vaddr: int | None  # None when the client gave no fd: not directly accessible
    prot: int


class SgList:
    """A scatter-gather list from vfu_addr_to_sgl, opaque like dma_sg_t."""

    def __init__(self, ctx: Context, count: int) -> None:
        self.size = ctx._lib.dma_sg_size()
        self.buf = ctypes.create_string_buffer(self.size * count)
        self.count = count
        self.used = 0

    @property
    def ptr(self) -> int:
        return ctypes.addressof(self.buf)


class Context:
    def __init__(self, socket_path: str, *, library: str | None = None,
                 nonblocking: bool = True, log_level: int = logging.INFO) -> None:
        self._lib = L.load(library)
        self.socket_path = socket_path
        self._keep: list[object] = []  # ctypes callback objects must outlive the ctx
        self.dma_regions: dict[int, DmaRegion] = {}
        flags = L.LIBVFIO_USER_FLAG_ATTACH_NB if nonblocking else 0
        ctypes.set_errno(0)
        ctx = self._lib.vfu_create_ctx(L.VFU_TRANS_SOCK, socket_path.encode(), flags, None,
                                       L.VFU_DEV_TYPE_PCI)
        if not ctx:
            e = ctypes.get_errno()
            raise VfuError(e, f"vfu_create_ctx({socket_path}): {os.strerror(e)}")
        self._ctx: int | None = ctx
        self._setup_log(log_level)

    # ---- lifecycle -------------------------------------------------------

    @property
    def ctx(self) -> int:
        if self._ctx is None:
            raise VfuError(errno.EBADF, "context destroyed")
        return self._ctx

    def realize(self) -> None:
        _check(self._lib.vfu_realize_ctx(self.ctx), "vfu_realize_ctx")

    def attach(self) -> bool:
        """Accept a client. Non-blocking contexts return False while none waits."""
        ctypes.set_errno(0)
        if self._lib.vfu_attach_ctx(self.ctx) < 0:
            e = ctypes.get_errno()
            if e in (errno.EAGAIN, errno.EWOULDBLOCK):
                return False
            raise VfuError(e, f"vfu_attach_ctx: {os.strerror(e)}")
        return True

    @property
    def poll_fd(self) -> int:
        return _check(self._lib.vfu_get_poll_fd(self.ctx), "vfu_get_poll_fd")

    def run(self) -> int:
        """Process pending client messages; returns how many. Raises VfuError
        (ENOTCONN, ECONNRESET) when the client went away."""
        ctypes.set_errno(0)
        ret = self._lib.vfu_run_ctx(self.ctx)
        if ret < 0:
            e = ctypes.get_errno()
            if e in (errno.EAGAIN, errno.EWOULDBLOCK):
                return 0
            raise VfuError(e, f"vfu_run_ctx: {os.strerror(e)}")
        return ret

    def destroy(self) -> None:
        if self._ctx is None:
            return
        self._lib.vfu_destroy_ctx(self._ctx)
        self._ctx = None
        # libvfio-user leaves the socket file behind.
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    # ---- logging ---------------------------------------------------------

    def _setup_log(self, level: int) -> None:
        def on_log(_ctx: int, lvl: int, msg: bytes) -> None:
            try:
                # syslog levels: 0 emerg .. 7 debug
                pylvl = (logging.ERROR if lvl <= 3 else logging.WARNING if lvl == 4
                         else logging.INFO if lvl <= 6 else logging.DEBUG)
                log.log(pylvl, "%s: %s", self.socket_path, msg.decode(errors="replace"))
            except Exception:  # noqa: BLE001 - never unwind into C
                pass

        cb = L.LOG_FN(on_log)
        self._keep.append(cb)
        syslog_level = 7 if level <= logging.DEBUG else 6 if level <= logging.INFO else 4
        _check(self._lib.vfu_setup_log(self.ctx, cb, syslog_level), "vfu_setup_log")

    # ---- PCI identity ----------------------------------------------------

    def pci_init(self, pci_type: int = L.VFU_PCI_TYPE_EXPRESS, hdr_type: int = 0,
                 revision: int = 0) -> None:
        _check(self._lib.vfu_pci_init(self.ctx, pci_type, hdr_type, revision), "vfu_pci_init")

    def set_id(self, vendor: int, device: int, subsys_vendor: int = 0,
               subsys: int = 0) -> None:
        self._lib.vfu_pci_set_id(self.ctx, vendor, device, subsys_vendor, subsys)

    def set_class(self, base: int, sub: int, prog_if: int = 0) -> None:
        self._lib.vfu_pci_set_class(self.ctx, base, sub, prog_if)

    def config_space(self, size: int = 256) -> np.ndarray:
        """A writable numpy view of the PCI config space libvfio-user keeps."""
        ptr = self._lib.vfu_pci_get_config_space(self.ctx)
        if not ptr:
            raise VfuError(errno.EINVAL, "vfu_pci_get_config_space: no PCI device")
        return np.ctypeslib.as_array((ctypes.c_uint8 * size).from_address(ptr))

    def add_capability(self, data: bytes, pos: int = 0, flags: int = 0) -> int:
        """Add a capability (its bytes, header first); returns its config offset."""
        buf = ctypes.create_string_buffer(bytes(data), len(data))
        return _check(self._lib.vfu_pci_add_capability(self.ctx, pos, flags, buf),
                      "vfu_pci_add_capability")

    # ---- regions ---------------------------------------------------------

    def setup_region(self, index: int, size: int, access: RegionAccess | None,
                     flags: int = L.VFU_REGION_FLAG_RW | L.VFU_REGION_FLAG_MEM,
                     mmap_areas: list[tuple[int, int]] | None = None, fd: int = -1,
                     offset: int = 0) -> None:
        """Declare region `index`. `access(offset, data, count)` handles reads
        (data is None, return `count` bytes) and writes (return None)."""
        cb = L.REGION_ACCESS_FN(self._region_trampoline(index, access)) if access else \
            L.REGION_ACCESS_FN()
        self._keep.append(cb)
        areas = None
        n = 0
        if mmap_areas:
            n = len(mmap_areas)
            arr = (L.Iovec * n)(*[L.Iovec(off, length) for off, length in mmap_areas])
            self._keep.append(arr)
            areas = ctypes.cast(arr, ctypes.POINTER(L.Iovec))
        _check(self._lib.vfu_setup_region(self.ctx, index, size, cb, flags, areas, n, fd,
                                          offset), f"vfu_setup_region({index})")

    def _region_trampoline(self, index: int, access: RegionAccess):
        def trampoline(_ctx: int, buf, count: int, offset: int, is_write: bool) -> int:
            try:
                if is_write:
                    access(offset, ctypes.string_at(buf, count), count)
                else:
                    data = access(offset, None, count)
                    if data is None or len(data) != count:
                        raise ValueError(f"read handler returned {data!r} for {count} bytes")
                    ctypes.memmove(buf, data, count)
                return count
            except Exception as e:  # noqa: BLE001 - never unwind into C
                log.exception("region %d %s at %#x+%d failed", index,
                              "write" if is_write else "read", offset, count)
                ctypes.set_errno(getattr(e, "errno", None) or errno.EINVAL)
                return -1
        return trampoline

    # ---- reset / quiesce -------------------------------------------------

    def setup_reset(self, on_reset: Callable[[int], None]) -> None:
        """on_reset(kind) with kind one of VFU_RESET_* ."""
        def trampoline(_ctx: int, kind: int) -> int:
            return self._call_int(on_reset, kind, what="reset")
        cb = L.RESET_FN(trampoline)
        self._keep.append(cb)
        _check(self._lib.vfu_setup_device_reset_cb(self.ctx, cb), "vfu_setup_device_reset_cb")

    def setup_quiesce(self, on_quiesce: Callable[[], bool]) -> None:
        """on_quiesce() parks the device before it returns (no DMA until the
        message is done); this binding has no asynchronous quiesce, so it must
        return True."""
        def trampoline(_ctx: int) -> int:
            try:
                if not on_quiesce():
                    raise RuntimeError("asynchronous quiesce is not supported")
                return 0
            except Exception:  # noqa: BLE001
                log.exception("quiesce callback failed")
                return 0
        cb = L.QUIESCE_FN(trampoline)
        self._keep.append(cb)
        self._lib.vfu_setup_device_quiesce_cb(self.ctx, cb)

    @staticmethod
    def _call_int(fn: Callable[..., object], *args: object, what: str) -> int:
        try:
            fn(*args)
            return 0
        except Exception as e:  # noqa: BLE001 - never unwind into C
            log.exception("%s callback failed", what)
            ctypes.set_errno(getattr(e, "errno", None) or errno.EINVAL)
            return -1

    # ---- IRQs --------------------------------------------------------------

    def setup_irqs(self, kind: int, count: int) -> None:
        _check(self._lib.vfu_setup_device_nr_irqs(self.ctx, kind, count),
               "vfu_setup_device_nr_irqs")

    def irq_trigger(self, vector: int) -> None:
        _check(self._lib.vfu_irq_trigger(self.ctx, vector), f"vfu_irq_trigger({vector})")

    # ---- DMA -----------------------------------------------------------------

    def setup_dma(self, on_register: Callable[[DmaRegion], None] | None = None,
                  on_unregister: Callable[[DmaRegion], None] | None = None) -> None:
        """Track the client's DMA regions; optional hooks see each change."""
        def region(info) -> DmaRegion:
            i = info.contents
            return DmaRegion(i.iova.iov_base or 0, i.iova.iov_len, i.vaddr or None, i.prot)

        def reg(_ctx: int, info) -> None:
            try:
                r = region(info)
                self.dma_regions[r.iova] = r
                if on_register:
                    on_register(r)
            except Exception:  # noqa: BLE001
                log.exception("dma register callback failed")

        def unreg(_ctx: int, info) -> None:
            try:
                r = region(info)
                self.dma_regions.pop(r.iova, None)
                if on_unregister:
                    on_unregister(r)
            except Exception:  # noqa: BLE001
                log.exception("dma unregister callback failed")

        cbs = (L.DMA_FN(reg), L.DMA_FN(unreg))
        self._keep.extend(cbs)
        _check(self._lib.vfu_setup_device_dma(self.ctx, *cbs), "vfu_setup_device_dma")

    def addr_to_sgl(self, addr: int, length: int, prot: int = PROT_READ,
                    max_segments: int = 16) -> SgList:
        sgl = SgList(self, max_segments)
        ctypes.set_errno(0)
        n = self._lib.vfu_addr_to_sgl(self.ctx, addr, length, sgl.ptr, max_segments, prot)
        if n < 0:
            e = ctypes.get_errno() or errno.EFAULT
            raise VfuError(e, f"vfu_addr_to_sgl({addr:#x}, {length}): {os.strerror(e)}")
        sgl.used = n
        return sgl

    def sgl_get(self, sgl: SgList) -> tuple[list[np.ndarray], ctypes.Array]:
        iov = (L.Iovec * sgl.used)()
        _check(self._lib.vfu_sgl_get(self.ctx, sgl.ptr, iov, sgl.used, 0), "vfu_sgl_get")
        views = [np.ctypeslib.as_array((ctypes.c_uint8 * v.iov_len).from_address(v.iov_base))
                 for v in iov]
        return views, iov

    def sgl_put(self, sgl: SgList, iov: ctypes.Array, dirty: bool = False) -> None:
        if dirty:
            self._lib.vfu_sgl_mark_dirty(self.ctx, sgl.ptr, sgl.used)
        self._lib.vfu_sgl_put(self.ctx, sgl.ptr, iov, sgl.used)

    @contextmanager
    def dma_view(self, addr: int, length: int, write: bool = False) -> Iterator[np.ndarray]:
        """Zero-copy numpy view of guest memory [addr, addr+length).

        Raises VfuError(EFAULT/ENOENT) when the range is not covered by a
        mapped DMA region; the range may not straddle two regions. With a
        quiesce callback set, call it from the thread that calls run():
        libvfio-user counts as quiesced until the current message is done."""
        prot = PROT_READ | (PROT_WRITE if write else 0)
        sgl = self.addr_to_sgl(addr, length, prot, max_segments=1)
        views, iov = self.sgl_get(sgl)
        try:
            yield views[0]
        finally:
            self.sgl_put(sgl, iov, dirty=write)
