"""What the device can address: guest system memory by bus address, and VRAM.

Every device access goes through `view()` of one of these two classes, and
both check the whole range first (overflow-safe), so no command, PTE or ring
pointer from the guest can reach memory outside guest RAM or VRAM.

Guest RAM arrives as DMA regions that QEMU registers with the device (shared
memfd, mapped by libvfio-user into this process); a view is a zero-copy numpy
array over that mapping.
"""

from __future__ import annotations

import bisect
import ctypes
import mmap
import os
import struct
import threading
import weakref
from dataclasses import dataclass

import numpy as np

from .hwdef import PAGE_SIZE as PAGE
from .hwdef import ErrorCode

_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


class DeviceError(Exception):
    """A device-detected error: the code goes to the ERROR registers."""

    def __init__(self, code: ErrorCode, addr: int = 0, detail: str = "") -> None:
        super().__init__(f"{code.name} at {addr:#x}{': ' + detail if detail else ''}")
        self.code = code
        self.addr = addr


class InjectedError(DeviceError):
    """A device error an injection made (device/inject.py): not the driver's
    doing, so the driver sanitizer does not report it."""


def in_range(addr: int, length: int, base: int, size: int) -> bool:
    """[addr, addr+length) lies inside [base, base+size), without overflow."""
    return length >= 0 and addr >= base and length <= size and addr - base <= size - length


@dataclass(frozen=True)
class Region:
    iova: int
    length: int
    array: np.ndarray  # uint8 view of the whole region
    writable: bool


class GuestMemory:
    """Guest system memory as the device sees it: a set of DMA regions."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # writers only
        # (region starts, regions), sorted: replaced whole under _lock, read
        # with no lock (one attribute load sees one consistent map)
        self._map: tuple[tuple[int, ...], tuple[Region, ...]] = ((), ())
        self.epoch = 0  # moves on every change of the map (PollArea's cache)

    def add(self, iova: int, length: int, vaddr: int, writable: bool = True) -> None:
        array = np.ctypeslib.as_array((ctypes.c_uint8 * length).from_address(vaddr))
        self.add_array(iova, array, writable)

    def add_array(self, iova: int, array: np.ndarray, writable: bool = True) -> None:
        with self._lock:
            starts, regions = map(list, self._map)
            i = bisect.bisect(starts, iova)
            starts.insert(i, iova)
            regions.insert(i, Region(iova, array.nbytes, array.reshape(-1).view(np.uint8),
                                     writable))
            self._map = (tuple(starts), tuple(regions))
            self.epoch += 1

    def remove(self, iova: int) -> None:
        with self._lock:
            starts, regions = map(list, self._map)
            i = bisect.bisect_left(starts, iova)
            if i < len(starts) and starts[i] == iova:
                del starts[i]
                del regions[i]
                self._map = (tuple(starts), tuple(regions))
                self.epoch += 1

    def clear(self) -> None:
        with self._lock:
            self._map = ((), ())
            self.epoch += 1

    def _region(self, addr: int) -> Region | None:
        """The region with the highest start at or below addr (it may end
        before addr), from the map as it is now."""
        starts, regions = self._map
        i = bisect.bisect(starts, addr) - 1
        return regions[i] if i >= 0 else None

    def view(self, addr: int, length: int, write: bool = False) -> np.ndarray:
        """uint8 view of [addr, addr+length); DeviceError(DMA_UNMAPPED) if any
        byte lies outside a single mapped region."""
        starts, regions = self._map  # _region(), inline: this runs for every DMA
        i = bisect.bisect(starts, addr) - 1
        if i >= 0:
            r = regions[i]
            off = addr - r.iova
            if 0 <= length <= r.length and 0 <= off <= r.length - length and \
                    (r.writable or not write):
                return r.array[off:off + length]
        raise DeviceError(ErrorCode.DMA_UNMAPPED, addr, f"{length} bytes")

    def page_rows(self, addrs: np.ndarray,
                  write: bool = False) -> tuple[np.ndarray, np.ndarray] | None:
        """For 4 KiB-aligned bus addresses that all lie in one region: that
        region as rows of 4 KiB and each address's row, for one gather or
        scatter of them all; None otherwise (the caller goes page by page)."""
        if not addrs.size or (addrs % PAGE).any():
            return None
        r = self._region(int(addrs.min()))
        if r is None or (write and not r.writable) or r.iova % PAGE:
            return None
        rows = r.length // PAGE
        index = (addrs - r.iova) // PAGE
        if int(index.max()) >= rows:
            return None
        return r.array[:rows * PAGE].reshape(rows, PAGE), index

    def views(self, addr: int, length: int, write: bool = False) -> list[np.ndarray]:
        """Views of [addr, addr+length), which may cross from one region into
        the next where they touch; DeviceError(DMA_UNMAPPED) at the first gap."""
        out = []
        while length > 0:
            r = self._region(addr)
            if r is None or not in_range(addr, 1, r.iova, r.length) or (write and not r.writable):
                raise DeviceError(ErrorCode.DMA_UNMAPPED, addr, f"{length} bytes")
            n = min(length, r.iova + r.length - addr)
            out.append(r.array[addr - r.iova:addr - r.iova + n])
            addr, length = addr + n, length - n
        return out

    def unpack(self, layout: struct.Struct, addr: int) -> tuple:
        """layout.unpack() of the bytes at addr (in one region), with no view
        made: a command's fetch."""
        size = layout.size
        starts, regions = self._map  # _region(), inline: every fetch and PTE read
        i = bisect.bisect(starts, addr) - 1
        if i >= 0:
            r = regions[i]
            off = addr - r.iova
            if 0 <= off <= r.length - size:
                return layout.unpack_from(r.array, off)
        raise DeviceError(ErrorCode.DMA_UNMAPPED, addr, f"{size} bytes")

    def read_u64(self, addr: int) -> int:
        return self.unpack(_U64, addr)[0]

    def read_u32(self, addr: int) -> int:
        return self.unpack(_U32, addr)[0]

    def write_u64(self, addr: int, value: int) -> None:
        _U64.pack_into(self.view(addr, 8, write=True), 0, value & 0xFFFF_FFFF_FFFF_FFFF)

    def write_u32(self, addr: int, value: int) -> None:
        _U32.pack_into(self.view(addr, 4, write=True), 0, value & 0xFFFF_FFFF)


class Vram:
    """Device-local memory in a shared memory file (a memfd, or a file a peer
    can open by path). The VRAM BAR maps the same file into the guest, so the
    CPU's view and the copy engine's are one memory; pages are committed on
    first touch."""

    def __init__(self, size: int, path: str | None = None, create: bool = True) -> None:
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        self.fd = os.open(path, flags, 0o600) if path else \
            os.memfd_create("hmmgpu-vram", os.MFD_CLOEXEC)
        try:
            if create:
                os.ftruncate(self.fd, size)
            else:
                size = os.fstat(self.fd).st_size
            self.size = size
            self._map = mmap.mmap(self.fd, size) if size else None
        except OSError:
            os.close(self.fd)
            raise
        self.array = np.frombuffer(self._map, dtype=np.uint8) if self._map is not None \
            else np.zeros(0, dtype=np.uint8)
        weakref.finalize(self, os.close, self.fd)

    @classmethod
    def attach(cls, path: str) -> Vram:
        """A peer's VRAM, by the path of its file."""
        return cls(0, path, create=False)

    def view(self, offset: int, length: int) -> np.ndarray:
        if not in_range(offset, length, 0, self.size):
            raise DeviceError(ErrorCode.VRAM_RANGE, offset, f"{length} bytes")
        return self.array[offset:offset + length]


class Fabric:
    """The device-to-device links: peers by fabric id, each a VRAM file. A
    peer's file is opened on first use (its server may start after this one)
    and kept; a link whose file is missing is down."""

    def __init__(self, own_id: int = 0, peers: dict[int, str] | None = None) -> None:
        self.own_id = own_id
        self.paths = dict(peers or {})
        self._open: dict[int, Vram] = {}
        self._lock = threading.Lock()

    @property
    def links(self) -> int:
        """PEER_LINKS: one bit per configured peer."""
        return sum(1 << p for p in self.paths)

    def peer(self, fabric_id: int) -> Vram | None:
        with self._lock:
            v = self._open.get(fabric_id)
            if v is None and fabric_id in self.paths:
                try:
                    v = self._open[fabric_id] = Vram.attach(self.paths[fabric_id])
                except OSError:
                    return None
            return v
