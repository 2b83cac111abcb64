"""pyvfio in-process: a small device on a real libvfio-user context, driven by
the Python vfio-user client from another thread."""

from __future__ import annotations

import errno
import select
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from hmmgpu.device import pyvfio
from hmmgpu.host.vfio_client import GuestRam, VfioUserClient, VfioUserError

REGION_INFO_FLAG_MMAP = 1 << 2  # linux/vfio.h VFIO_REGION_INFO_FLAG_MMAP


class Harness:
    """Serves a pyvfio Context from a thread until stopped."""

    def __init__(self, sock: Path, library: str,
                 access: Callable[[int, bytes | None, int], bytes | None],
                 quiesce: bool = False, **region: object) -> None:
        self.ctx = pyvfio.Context(str(sock), library=library)
        self.ctx.pci_init()
        self.ctx.set_id(0x1234, 0xABCD)
        self.ctx.setup_region(pyvfio.VFU_PCI_DEV_BAR0_REGION_IDX, 4096, access, **region)
        self.registered: list[pyvfio.DmaRegion] = []
        self.quiesced = 0
        self.ctx.setup_dma(on_register=self.registered.append)
        if quiesce:
            # With a quiesce callback, DMA helpers must not race the run
            # thread (libvfio-user is "quiesced" until the message is done).
            self.ctx.setup_quiesce(self.on_quiesce)
        self.ctx.realize()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def on_quiesce(self) -> bool:
        self.quiesced += 1
        return True

    def loop(self) -> None:
        attached = False
        while not self.stop.is_set():
            r, _, _ = select.select([self.ctx.poll_fd], [], [], 0.05)
            if not r:
                continue
            if not attached:
                attached = self.ctx.attach()
                continue
            try:
                self.ctx.run()
            except pyvfio.VfuError:
                return

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.ctx.destroy()


@pytest.fixture
def make_harness(libvfio_user: str, tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(access: Callable[[int, bytes | None, int], bytes | None],
             **kwargs: object) -> Harness:
        h = Harness(tmp_path / "dev.sock", libvfio_user, access, **kwargs)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def test_region_callback_sees_reads_and_writes(make_harness, tmp_path: Path) -> None:
    seen: list[tuple[int, bytes | None, int]] = []

    def access(offset: int, data: bytes | None, count: int) -> bytes | None:
        seen.append((offset, data, count))
        return bytes(range(count)) if data is None else None

    make_harness(access)
    with VfioUserClient(str(tmp_path / "dev.sock")) as c:
        c.negotiate()
        c.write(0, 0x10, b"\xaa\xbb")
        assert c.read(0, 0x20, 4) == b"\x00\x01\x02\x03"
    assert seen == [(0x10, b"\xaa\xbb", 2), (0x20, None, 4)]


def test_exception_in_callback_becomes_an_error_reply_not_a_crash(
        make_harness, tmp_path: Path) -> None:
    def access(offset: int, data: bytes | None, count: int) -> bytes | None:
        if offset == 0x40:
            raise OSError(errno.EPERM, "no")
        if offset == 0x44:
            raise ValueError("bug in the device model")
        return b"\x07" * count

    make_harness(access)
    with VfioUserClient(str(tmp_path / "dev.sock")) as c:
        c.negotiate()
        with pytest.raises(VfioUserError) as e:
            c.read(0, 0x40, 4)
        assert e.value.errno == errno.EPERM
        with pytest.raises(VfioUserError) as e:
            c.read(0, 0x44, 4)
        assert e.value.errno == errno.EINVAL
        assert c.read(0, 0, 4) == b"\x07" * 4  # still serving


def test_errors_carry_errno(libvfio_user: str, tmp_path: Path) -> None:
    ctx = pyvfio.Context(str(tmp_path / "e.sock"), library=libvfio_user)
    try:
        with pytest.raises(pyvfio.VfuError) as e:
            ctx.setup_region(pyvfio.VFU_PCI_DEV_BAR0_REGION_IDX, 4096, None, flags=0x100)
        assert e.value.errno == errno.EINVAL
    finally:
        ctx.destroy()
    assert not (tmp_path / "e.sock").exists()


def test_dma_view_is_zero_copy_on_the_clients_memfd(make_harness, tmp_path: Path) -> None:
    h = make_harness(lambda o, d, n: b"\0" * n if d is None else None)
    ram = GuestRam(1 << 20)
    try:
        with VfioUserClient(str(tmp_path / "dev.sock")) as c:
            c.negotiate()
            c.dma_map(0x100000, ram.size, ram.fd)
            assert [(r.iova, r.length) for r in h.registered] == [(0x100000, ram.size)]
            ram.mem[0x1000:0x1004] = b"abcd"
            with h.ctx.dma_view(0x101000, 8, write=True) as view:
                assert isinstance(view, np.ndarray) and view.nbytes == 8
                assert bytes(view[:4]) == b"abcd"
                view[4:8] = np.frombuffer(b"wxyz", dtype=np.uint8)
            assert ram.mem[0x1004:0x1008] == b"wxyz"
            with pytest.raises(pyvfio.VfuError):
                with h.ctx.dma_view(0x100000 + ram.size, 8):
                    pass
    finally:
        ram.close()


def test_dma_map_quiesces_the_device_first(make_harness, tmp_path: Path) -> None:
    h = make_harness(lambda o, d, n: b"\0" * n if d is None else None, quiesce=True)
    ram = GuestRam(1 << 16)
    try:
        with VfioUserClient(str(tmp_path / "dev.sock")) as c:
            c.negotiate()
            c.dma_map(0, ram.size, ram.fd)
            assert h.quiesced >= 1
    finally:
        ram.close()


def test_region_with_mmap_area_is_announced_as_mappable(make_harness, tmp_path: Path) -> None:
    backing = GuestRam(4096)  # any memfd can back a mappable region
    try:
        make_harness(lambda o, d, n: b"\0" * n if d is None else None,
                     fd=backing.fd, mmap_areas=[(0, 4096)])
        with VfioUserClient(str(tmp_path / "dev.sock")) as c:
            c.negotiate()
            info = c.region_info(0)
            assert info.flags & REGION_INFO_FLAG_MMAP
    finally:
        backing.close()
