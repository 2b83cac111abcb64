"""The C anchor of the register benchmark (bench/anchor/mmio_anchor.c), built
against the project's libvfio-user and driven by a vfio-user client: it must be
the BAR0 it claims to be, or bench_lab's ratio compares unlike things."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hmmgpu.device import hwdef as hw
from hmmgpu.host import mmio_anchor
from hmmgpu.host.paths import Paths
from hmmgpu.host.vfio_client import VfioUserClient, VfioUserError

PCI_CONFIG_REGION = 7  # VFU_PCI_DEV_CFG_REGION_IDX
REGION_FLAG_MMAP = 4  # VFIO_REGION_INFO_FLAG_MMAP


@pytest.fixture
def anchor(paths: Paths, tmp_path: Path):
    binary = mmio_anchor.build(paths, tmp_path)
    with mmio_anchor.AnchorServer(binary, tmp_path / "a.sock", tmp_path / "a.log") as a:
        with VfioUserClient(str(a.socket)) as c:
            c.negotiate()
            yield c


def test_anchor_bar0_has_hmmgpu_shape_and_stores_registers(anchor: VfioUserClient) -> None:
    assert anchor.region_info(0).size == hw.BAR0_SIZE
    ids = anchor.read32(PCI_CONFIG_REGION, 0)
    assert ids == hw.PCI_VENDOR_ID | mmio_anchor.DEVICE_ID << 16  # no hmmgpu.ko binds it
    assert anchor.read32(0, hw.Reg.SCRATCH) == 0
    anchor.write32(0, hw.Reg.SCRATCH, 0xC0FFEE11)
    assert anchor.read32(0, hw.Reg.SCRATCH) == 0xC0FFEE11
    assert anchor.read32(0, hw.BAR0_SIZE - 4) == 0
    # a mapped BAR where hmmgpu has its VRAM BAR: QEMU posts writes only without one
    vram = anchor.region_info(hw.VRAM_BAR)
    if vram.fd >= 0:
        os.close(vram.fd)
    assert vram.flags & REGION_FLAG_MMAP and vram.size > 0


def test_anchor_refuses_access_past_bar0(anchor: VfioUserClient) -> None:
    with pytest.raises(VfioUserError):
        anchor.read(0, hw.BAR0_SIZE - 2, 4)
    assert anchor.read32(0, hw.Reg.SCRATCH) == 0  # and still serves
