"""The VRAM file and the device-to-device fabric: a PEER PTE reaches the
VRAM of another GPU through its file, and every malformed PEER PTE is an
error, not an access."""

from __future__ import annotations

import numpy as np
import pytest
from engine_rig import RW, Rig

from hmmgpu.device import hwdef as hw
from hmmgpu.device.hwdef import ErrorCode, Opcode, Pte, QReg, Reg
from hmmgpu.device.memory import DeviceError, Fabric, Vram
from hmmgpu.device.trace import DMA_PEER, DMA_PEER_SHIFT, DMA_VRAM, Kind, load

VA = 0x7000_0000


@pytest.fixture
def pair(tmp_path):
    """GPU 0 (a Vram file only) and GPU 1, linked to it as fabric id 0."""
    peer_file = tmp_path / "gpu0.vram"
    gpu0 = Vram(4 << 20, str(peer_file))
    gpu0.array[:hw.PAGE_SIZE] = np.arange(hw.PAGE_SIZE, dtype=np.uint32).view(np.uint8)[
        :hw.PAGE_SIZE]
    rig = Rig(fabric=Fabric(1, {0: str(peer_file)}))
    return gpu0, rig


def peer_pte(offset: int, fabric_id: int = 0) -> int:
    return offset | RW | Pte.VRAM | Pte.PEER | fabric_id << hw.PTE_PEER_SHIFT


def test_the_vram_file_is_the_vram_a_second_mapping_sees(tmp_path) -> None:
    path = tmp_path / "v"
    v = Vram(1 << 20, str(path))
    v.view(0x1000, 4)[:] = [1, 2, 3, 4]
    assert path.read_bytes()[0x1000:0x1004] == bytes([1, 2, 3, 4])
    assert Vram.attach(str(path)).size == 1 << 20


def test_fabric_registers_name_the_device_and_its_links(pair) -> None:
    _, rig = pair
    assert rig.reg(Reg.FABRIC_ID) == 1
    assert rig.reg(Reg.PEER_LINKS) == 0b1
    assert rig.reg(Reg.CAPS) == hw.Caps.VRAM_BAR


def test_a_peer_pte_reads_and_writes_the_peers_vram(pair, tmp_path) -> None:
    gpu0, rig = pair
    rig.gpu.engine.trace.start()
    rig.drv.map(2, VA, 0, RW | Pte.VRAM | Pte.PEER)
    out = rig.drv.alloc(hw.PAGE_SIZE)
    rig.drv.submit(2, Opcode.READ, (VA, out, hw.PAGE_SIZE))
    rig.run()
    assert rig.drv.qreg(2, QReg.ERROR) == 0
    assert rig.drv.read(out, hw.PAGE_SIZE) == gpu0.array[:hw.PAGE_SIZE].tobytes()
    src = rig.page(fill=0x5A)
    rig.drv.submit(2, Opcode.WRITE, (VA + 0x100, src, 0x80))
    rig.run()
    assert (gpu0.array[0x100:0x180] == 0x5A).all()
    assert (rig.gpu.vram.array[0x100:0x180] == 0).all(), "the local VRAM was written"
    tr = rig.gpu.engine.trace
    tr.stop()
    tr.dump(tmp_path / "t.hmmtrace")
    recs = load(tmp_path / "t.hmmtrace").records
    dma = recs[np.isin(recs["kind"], [Kind.DMA_READ, Kind.DMA_WRITE]) & (recs["va"] >= VA)]
    assert len(dma) == 2
    assert (dma["flags"] == DMA_VRAM | DMA_PEER | 0 << DMA_PEER_SHIFT).all()


@pytest.mark.parametrize("pte, code", [
    (peer_pte(0) & ~Pte.VRAM, ErrorCode.PTE_INVALID),  # PEER without VRAM
    (RW | Pte.VRAM | 3 << hw.PTE_PEER_SHIFT, ErrorCode.PTE_INVALID),  # id bits, no PEER
    (peer_pte(0, fabric_id=5), ErrorCode.PTE_INVALID),  # no link to 5
    (peer_pte(0, fabric_id=1), ErrorCode.PTE_INVALID),  # this device itself
    (peer_pte(4 << 20), ErrorCode.VRAM_RANGE),  # past the peer's 4 MiB
])
def test_malformed_peer_ptes_are_errors(pair, pte, code) -> None:
    _, rig = pair
    rig.drv.map(1, 0x1000, rig.page(), RW)  # builds the tables
    rig.drv.set_u64(rig.drv.pte_slot(1, VA, 0), pte | Pte.VALID)
    with pytest.raises(DeviceError) as e:
        rig.gpu.engine.mmu.walk(rig.drv.roots[1], VA)
    assert e.value.code == code


def test_a_link_whose_file_is_missing_is_down(tmp_path) -> None:
    rig = Rig(fabric=Fabric(1, {0: str(tmp_path / "absent.vram")}))
    rig.drv.map(1, VA, 0, RW | Pte.VRAM | Pte.PEER)
    out = rig.drv.alloc(64)
    rig.drv.submit(1, Opcode.READ, (VA, out, 64))
    rig.run()
    assert rig.drv.qreg(1, QReg.ERROR) == ErrorCode.PTE_INVALID
    assert rig.reg(Reg.ERROR) == ErrorCode.PTE_INVALID


def test_a_device_without_the_vram_bar_says_so() -> None:
    from hmmgpu.device.gpu import Gpu
    assert Gpu(vram_size=1 << 20, vram_bar=False).mmio_read(Reg.CAPS, 4) == 0


@pytest.mark.parametrize("args", [["--peer", "x"], ["--peer", "16=/tmp/v"],
                                  ["--peer", "0=/tmp/v"], ["--fabric-id", "16"]])
def test_a_bad_fabric_option_is_one_plain_line(args, capsys) -> None:
    from hmmgpu.device import server
    with pytest.raises(SystemExit) as e:
        server.main(["--socket", "/nonexistent/s", *args])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("hmmgpu device serve: error:") and "Traceback" not in "".join(err)
