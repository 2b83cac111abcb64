"""A small vfio-user client in Python: what QEMU does, minus the VM.

Tests and benchmarks use it to drive a real device server over its socket:
version negotiation, device/region/IRQ info, region reads and writes, IRQ
eventfds, and DMA regions backed by a shared memfd (the "guest RAM").
Message layouts follow libvfio-user's include/vfio-user.h.
"""

from __future__ import annotations

import array
import json
import mmap
import os
import socket
import struct
from dataclasses import dataclass

VERSION = 1
DMA_MAP = 2
DMA_UNMAP = 3
DEVICE_GET_INFO = 4
DEVICE_GET_REGION_INFO = 5
DEVICE_GET_IRQ_INFO = 7
DEVICE_SET_IRQS = 8
REGION_READ = 9
REGION_WRITE = 10
DEVICE_RESET = 13

F_TYPE_REPLY = 1
F_ERROR = 1 << 5
HEADER = struct.Struct("<HHIII")  # msg_id, cmd, msg_size, flags, error

IRQ_SET_DATA_NONE = 1 << 0
IRQ_SET_DATA_EVENTFD = 1 << 2
IRQ_SET_ACTION_TRIGGER = 1 << 5
DMA_READ_WRITE = 0x3

MSIX_IRQ_INDEX = 2
ERR_IRQ_INDEX = 3
CFG_REGION_INDEX = 7

PCI_CAPABILITY_LIST = 0x34
PCI_CAP_ID_MSIX = 0x11
MSIX_ENABLE = 1 << 15  # in Message Control, the capability's second word


class VfioUserError(OSError):
    pass


@dataclass(frozen=True)
class RegionInfo:
    index: int
    flags: int
    size: int
    offset: int
    caps: bytes = b""  # the capability chain, from the first capability on
    fd: int = -1  # for mmap(), at `offset`: the caller closes it


class VfioUserClient:
    def __init__(self, path: str, timeout: float = 10) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.msg_id = 0
        self.last_fds: list[int] = []  # file descriptors the last reply carried
        self.server_version: tuple[int, int, dict[str, object]] | None = None

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> VfioUserClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- framing -------------------------------------------------------------

    def _recv_header(self) -> bytes:
        """The reply header, and any descriptors sent with it (SCM_RIGHTS
        arrives with the message's first bytes) into last_fds."""
        data, anc, _flags, _addr = self.sock.recvmsg(HEADER.size, socket.CMSG_SPACE(8 * 4))
        self.last_fds = []
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
                self.last_fds += list(fds)
        if not data:
            raise VfioUserError(104, "server closed the connection")
        return data + self._recv_exact(HEADER.size - len(data))

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise VfioUserError(104, "server closed the connection")
            buf += chunk
        return bytes(buf)

    def request(self, cmd: int, payload: bytes = b"", fds: list[int] | None = None) -> bytes:
        self.msg_id = (self.msg_id + 1) & 0xFFFF
        msg = HEADER.pack(self.msg_id, cmd, HEADER.size + len(payload), 0, 0) + payload
        if fds:
            self.sock.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                       array.array("i", fds))])
        else:
            self.sock.sendall(msg)
        hdr = self._recv_header()
        msg_id, rcmd, size, flags, error = HEADER.unpack(hdr)
        body = self._recv_exact(size - HEADER.size)
        if msg_id != self.msg_id or rcmd != cmd or (flags & 0xF) != F_TYPE_REPLY:
            raise VfioUserError(71, f"unexpected reply id={msg_id} cmd={rcmd} flags={flags:#x}")
        if flags & F_ERROR:
            raise VfioUserError(error, f"command {cmd} failed: {os.strerror(error)}")
        return body

    # ---- commands -------------------------------------------------------------

    def negotiate(self, max_fds: int = 8, max_xfer: int = 1 << 20) -> dict[str, object]:
        caps = json.dumps({"capabilities": {"max_msg_fds": max_fds,
                                            "max_data_xfer_size": max_xfer}}).encode() + b"\0"
        body = self.request(VERSION, struct.pack("<HH", 0, 1) + caps)
        major, minor = struct.unpack_from("<HH", body)
        info = json.loads(body[4:].rstrip(b"\0") or b"{}")
        self.server_version = (major, minor, info)
        return info

    def device_info(self) -> tuple[int, int, int]:
        """(flags, num_regions, num_irqs)"""
        body = self.request(DEVICE_GET_INFO, struct.pack("<IIII", 16, 0, 0, 0))
        _argsz, flags, regions, irqs = struct.unpack_from("<IIII", body)
        return flags, regions, irqs

    def region_info(self, index: int, argsz: int = 32) -> RegionInfo:
        """A region's info; with a larger argsz, its capability chain too
        (`caps`), and the region's file descriptor when it can be mapped (`fd`)."""
        body = self.request(DEVICE_GET_REGION_INFO,
                            struct.pack("<IIIIQQ", argsz, 0, index, 0, 0, 0) + bytes(argsz - 32))
        _argsz, flags, idx, cap, size, offset = struct.unpack_from("<IIIIQQ", body)
        return RegionInfo(idx, flags, size, offset, body[cap:] if cap else b"",
                          self.last_fds[0] if self.last_fds else -1)

    def irq_info(self, index: int) -> tuple[int, int]:
        """(flags, count)"""
        body = self.request(DEVICE_GET_IRQ_INFO, struct.pack("<IIII", 16, 0, index, 0))
        _argsz, flags, _idx, count = struct.unpack_from("<IIII", body)
        return flags, count

    def set_irq_eventfds(self, index: int, start: int, fds: list[int]) -> None:
        flags = IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER
        self.request(DEVICE_SET_IRQS,
                     struct.pack("<IIIII", 20, flags, index, start, len(fds)), fds)

    def read(self, region: int, offset: int, count: int) -> bytes:
        body = self.request(REGION_READ, struct.pack("<QII", offset, region, count))
        return body[16:16 + count]

    def write(self, region: int, offset: int, data: bytes) -> None:
        self.request(REGION_WRITE, struct.pack("<QII", offset, region, len(data)) + data)

    def read32(self, region: int, offset: int) -> int:
        return struct.unpack("<I", self.read(region, offset, 4))[0]

    def write32(self, region: int, offset: int, value: int) -> None:
        self.write(region, offset, struct.pack("<I", value))

    def capability(self, cap_id: int) -> int | None:
        """Config-space offset of the first capability with this ID."""
        pos = self.read(CFG_REGION_INDEX, PCI_CAPABILITY_LIST, 1)[0]
        for _ in range(48):  # the list cannot be longer than config space
            if not pos:
                return None
            ident, nxt = self.read(CFG_REGION_INDEX, pos, 2)
            if ident == cap_id:
                return pos
            pos = nxt
        raise VfioUserError(71, "capability list loops")

    def set_msix_enable(self, on: bool) -> None:
        """What a guest driver does to turn MSI-X on or off: Message Control's
        enable bit. Eventfds are a separate step (set_irq_eventfds), as in QEMU."""
        pos = self.capability(PCI_CAP_ID_MSIX)
        if pos is None:
            raise VfioUserError(19, "the device has no MSI-X capability")
        ctl = struct.unpack("<H", self.read(CFG_REGION_INDEX, pos + 2, 2))[0]
        ctl = ctl | MSIX_ENABLE if on else ctl & ~MSIX_ENABLE
        self.write(CFG_REGION_INDEX, pos + 2, struct.pack("<H", ctl))

    def dma_map(self, iova: int, size: int, fd: int, offset: int = 0) -> None:
        self.request(DMA_MAP, struct.pack("<IIQQQ", 32, DMA_READ_WRITE, offset, iova, size),
                     [fd])

    def dma_unmap(self, iova: int, size: int) -> None:
        self.request(DMA_UNMAP, struct.pack("<IIQQ", 24, 0, iova, size))

    def reset(self) -> None:
        self.request(DEVICE_RESET)


class GuestRam:
    """A memfd standing in for the guest RAM QEMU shares with the device."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.fd = os.memfd_create("hmmgpu-guest-ram")
        os.ftruncate(self.fd, size)
        self.mem = mmap.mmap(self.fd, size)

    def close(self) -> None:
        self.mem.close()
        os.close(self.fd)
