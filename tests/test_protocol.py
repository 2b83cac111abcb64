"""The real device server process, driven over its vfio-user socket by a
Python client (no QEMU): negotiation, device/region/IRQ info, MMIO, MSI-X."""

from __future__ import annotations

import mmap
import os
import select
import struct
from pathlib import Path

import pytest

from hmmgpu.device import hwdef as hw
from hmmgpu.host import vfio_client as vu
from hmmgpu.host.vfio_client import VfioUserClient

BAR0 = 0
REGION_FLAG_READ, REGION_FLAG_WRITE, REGION_FLAG_MMAP = 1, 2, 4
CAP_SPARSE_MMAP = 1  # VFIO_REGION_INFO_CAP_SPARSE_MMAP


@pytest.fixture
def client(server_socket: Path):
    with VfioUserClient(str(server_socket)) as c:
        c.negotiate()
        yield c


def eventfd_fired(fd: int, timeout: float = 2.0) -> int:
    ready, _, _ = select.select([fd], [], [], timeout)
    return struct.unpack("<Q", os.read(fd, 8))[0] if ready else 0


def test_version_negotiation_returns_server_capabilities(server_socket: Path) -> None:
    with VfioUserClient(str(server_socket)) as c:
        info = c.negotiate()
        major, minor, _ = c.server_version
        assert (major, minor) == (0, 1)
        assert "capabilities" in info


def test_device_info_lists_pci_regions_and_irqs(client: VfioUserClient) -> None:
    _flags, regions, irqs = client.device_info()
    assert regions >= 9  # six BARs, ROM, config, VGA
    assert irqs >= 5  # INTx, MSI, MSI-X, ERR, REQ


def test_bar0_is_a_memory_bar_of_the_documented_size(client: VfioUserClient) -> None:
    info = client.region_info(BAR0)
    assert info.size == hw.BAR0_SIZE
    assert info.flags & REGION_FLAG_READ and info.flags & REGION_FLAG_WRITE


def test_config_space_carries_the_pci_identity(client: VfioUserClient) -> None:
    cfg = client.read(vu.CFG_REGION_INDEX, 0, 64)
    vendor, device = struct.unpack_from("<HH", cfg, 0)
    assert (vendor, device) == (hw.PCI_VENDOR_ID, hw.PCI_DEVICE_ID)
    assert cfg[0x0B] == hw.PCI_CLASS_BASE and cfg[0x0A] == hw.PCI_CLASS_SUB
    assert cfg[0x08] == hw.PCI_REVISION


def test_config_space_has_pcie_and_msix_capabilities(client: VfioUserClient) -> None:
    cfg = client.read(vu.CFG_REGION_INDEX, 0, 256)
    caps = {}
    pos = cfg[0x34]
    while pos:
        caps[cfg[pos]] = pos
        pos = cfg[pos + 1]
    assert 0x10 in caps and 0x11 in caps
    msix = caps[0x11]
    table_size = (struct.unpack_from("<H", cfg, msix + 2)[0] & 0x7FF) + 1
    table, pba = struct.unpack_from("<II", cfg, msix + 4)
    assert table_size == hw.IRQ_VECTORS
    assert (table & ~7, table & 7) == (hw.MSIX_TABLE_OFFSET, hw.MSIX_BAR)
    assert (pba & ~7, pba & 7) == (hw.MSIX_PBA_OFFSET, hw.MSIX_BAR)
    assert client.region_info(hw.MSIX_BAR).size == hw.MSIX_BAR_SIZE


def test_bar0_reads_id_and_version(client: VfioUserClient) -> None:
    assert client.read32(BAR0, hw.Reg.ID) == hw.ID_MAGIC
    assert client.read32(BAR0, hw.Reg.VERSION) >> 16 == hw.VERSION_MAJOR


def test_scratch_round_trips_over_the_socket(client: VfioUserClient) -> None:
    client.write32(BAR0, hw.Reg.SCRATCH, 0xA5A55A5A)
    assert client.read32(BAR0, hw.Reg.SCRATCH) == 0xA5A55A5A


def test_msix_has_the_documented_vector_count(client: VfioUserClient) -> None:
    _flags, count = client.irq_info(vu.MSIX_IRQ_INDEX)
    assert count == hw.IRQ_VECTORS


def test_doorbell_signals_the_msix_eventfd(client: VfioUserClient) -> None:
    fds = [os.eventfd(0) for _ in range(hw.IRQ_VECTORS)]
    try:
        client.set_msix_enable(True)
        client.set_irq_eventfds(vu.MSIX_IRQ_INDEX, 0, fds)
        client.write32(BAR0, hw.Reg.TEST_DOORBELL, hw.IrqVector.TEST)
        assert eventfd_fired(fds[hw.IrqVector.TEST]) == 1
        assert eventfd_fired(fds[hw.IrqVector.COMPLETION], timeout=0.1) == 0
        assert client.read32(BAR0, hw.Reg.IRQ_COUNT) == 1
    finally:
        for fd in fds:
            os.close(fd)


def test_every_vector_with_msix_off_is_counted_and_lost_then_delivered_when_on(
        client: VfioUserClient) -> None:
    """QEMU registers its error notifier (the ERR IRQ index) at start-up; in
    libvfio-user it shares the slot of MSI-X vector 0. A vector raised before
    the guest enables MSI-X must reach no eventfd at all: QEMU stops the VM
    when its error notifier fires."""
    err = os.eventfd(0)
    fds = [os.eventfd(0) for _ in range(hw.IRQ_VECTORS)]
    try:
        client.set_irq_eventfds(vu.ERR_IRQ_INDEX, 0, [err])
        for v in range(hw.IRQ_VECTORS):
            client.write32(BAR0, hw.Reg.TEST_DOORBELL, v)
        assert eventfd_fired(err, timeout=0.2) == 0, "the ERR notifier fired"
        client.set_irq_eventfds(vu.MSIX_IRQ_INDEX, 0, fds)  # eventfds alone do not enable
        for v in range(hw.IRQ_VECTORS):
            client.write32(BAR0, hw.Reg.TEST_DOORBELL, v)
        assert [eventfd_fired(fd, timeout=0.1) for fd in fds] == [0] * hw.IRQ_VECTORS
        assert client.read32(BAR0, hw.Reg.IRQ_COUNT) == 2 * hw.IRQ_VECTORS
        client.set_msix_enable(True)
        for v in range(hw.IRQ_VECTORS):
            client.write32(BAR0, hw.Reg.TEST_DOORBELL, v)
            assert [eventfd_fired(fd, timeout=0.1 + (i == v)) for i, fd in enumerate(fds)] \
                == [int(i == v) for i in range(hw.IRQ_VECTORS)], f"vector {v}"
        client.set_msix_enable(False)
        client.write32(BAR0, hw.Reg.TEST_DOORBELL, hw.IrqVector.TEST)
        assert eventfd_fired(fds[hw.IrqVector.TEST], timeout=0.2) == 0
        assert client.read32(BAR0, hw.Reg.IRQ_COUNT) == 3 * hw.IRQ_VECTORS + 1
    finally:
        for fd in [err, *fds]:
            os.close(fd)


def test_bad_doorbell_value_reports_error_and_error_interrupt(client: VfioUserClient) -> None:
    fds = [os.eventfd(0) for _ in range(hw.IRQ_VECTORS)]
    try:
        client.set_msix_enable(True)
        client.set_irq_eventfds(vu.MSIX_IRQ_INDEX, 0, fds)
        client.write32(BAR0, hw.Reg.TEST_DOORBELL, 0xFFFF)
        assert eventfd_fired(fds[hw.IrqVector.ERROR]) == 1
        assert client.read32(BAR0, hw.Reg.ERROR) == hw.ErrorCode.BAD_VECTOR
    finally:
        for fd in fds:
            os.close(fd)


def test_narrow_access_is_an_error_and_the_server_keeps_serving(
        client: VfioUserClient) -> None:
    client.write(BAR0, hw.Reg.SCRATCH, b"\x01")
    assert client.read32(BAR0, hw.Reg.ERROR) == hw.ErrorCode.BAD_REGISTER
    assert client.read32(BAR0, hw.Reg.ID) == hw.ID_MAGIC


def test_access_past_the_end_of_bar0_is_refused(client: VfioUserClient) -> None:
    with pytest.raises(vu.VfioUserError):
        client.read(BAR0, hw.BAR0_SIZE, 4)
    assert client.read32(BAR0, hw.Reg.ID) == hw.ID_MAGIC


def test_device_reset_returns_registers_to_reset_values(client: VfioUserClient) -> None:
    client.write32(BAR0, hw.Reg.SCRATCH, 0x1234)
    client.reset()
    assert client.read32(BAR0, hw.Reg.SCRATCH) == 0


def test_server_accepts_a_new_client_after_the_first_leaves(server_socket: Path) -> None:
    for value in (1, 2):
        with VfioUserClient(str(server_socket)) as c:
            c.negotiate()
            assert c.read32(BAR0, hw.Reg.SCRATCH) == 0, "state must reset on disconnect"
            c.write32(BAR0, hw.Reg.SCRATCH, value)


def test_the_vram_bar_is_a_mappable_64bit_prefetchable_bar_over_the_vram(
        paths, tmp_path) -> None:
    """BAR4 is the VRAM file: a client (QEMU) maps it with the fd of the
    region info, and what it stores there is what the device reads (the BAR
    callback answers from the device's VRAM); past the 3 MiB VRAM, the 4 MiB
    BAR reads 0."""
    from conftest import serving
    with serving(paths, tmp_path, "--vram", "3M") as sock, VfioUserClient(str(sock)) as c:
        c.negotiate()
        info = c.region_info(hw.VRAM_BAR, argsz=256)
        assert info.size == 4 << 20 and info.flags & REGION_FLAG_MMAP and info.fd >= 0
        cap_id, _version, _next, nr_areas = struct.unpack_from("<HHII", info.caps)
        assert cap_id == CAP_SPARSE_MMAP and nr_areas == 1
        assert struct.unpack_from("<QQ", info.caps, 16) == (0, 3 << 20)  # the VRAM only
        bar_type = c.read32(vu.CFG_REGION_INDEX, 0x10 + 4 * hw.VRAM_BAR) & 0xF
        assert bar_type == 0xC  # memory, 64-bit, prefetchable
        with mmap.mmap(info.fd, 3 << 20, offset=info.offset) as m:
            m[0x2000:0x2004] = b"\xde\xad\xbe\xef"
            assert c.read(hw.VRAM_BAR, 0x2000, 4) == b"\xde\xad\xbe\xef"
            c.write(hw.VRAM_BAR, 0x3000, b"\x01\x02")
            assert m[0x3000:0x3002] == b"\x01\x02"
        os.close(info.fd)
        assert c.read(hw.VRAM_BAR, (3 << 20) + 8, 4) == bytes(4)
        assert c.read32(BAR0, hw.Reg.CAPS) == hw.Caps.VRAM_BAR


def test_a_server_without_the_vram_bar_has_no_bar4(paths, tmp_path) -> None:
    from conftest import serving
    with serving(paths, tmp_path, "--no-vram-bar") as sock, VfioUserClient(str(sock)) as c:
        c.negotiate()
        assert c.region_info(hw.VRAM_BAR).size == 0
        assert c.read32(BAR0, hw.Reg.CAPS) == 0
