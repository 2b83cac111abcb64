"""The GPU engine through the real server process: guest RAM is a memfd the
client maps into the device (as QEMU does), registers go over the vfio-user
socket, interrupts arrive on eventfds."""

from __future__ import annotations

import os
import select
import struct
from pathlib import Path

import numpy as np
import pytest

from hmmgpu.device import hwdef as hw
from hmmgpu.device.hwdef import Aperture, ErrorCode, Opcode, Pte, QReg, Reg
from hmmgpu.host import vfio_client as vu
from hmmgpu.host.userdrv import ClientMmio, UserDriver
from hmmgpu.host.vfio_client import GuestRam, VfioUserClient

RAM_BUS = 0x4000_0000
RAM_SIZE = 64 << 20
K = hw.KERNEL_QUEUE


class Session:
    def __init__(self, sock: Path) -> None:
        self.client = VfioUserClient(str(sock))
        self.client.negotiate()
        self.ram = GuestRam(RAM_SIZE)
        self.client.dma_map(RAM_BUS, RAM_SIZE, self.ram.fd)
        self.irq = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(hw.IRQ_VECTORS)]
        self.client.set_msix_enable(True)
        self.client.set_irq_eventfds(vu.MSIX_IRQ_INDEX, 0, self.irq)
        self.bus_master(True)
        array = np.frombuffer(self.ram.mem, dtype=np.uint8)
        self.drv = UserDriver(ClientMmio(self.client), array, RAM_BUS)
        self.drv.enable_faults()

    def bus_master(self, on: bool) -> None:
        # COMMAND register: memory decoding + bus master, written as 16 bits
        self.client.write(vu.CFG_REGION_INDEX, 4, struct.pack("<H", 0x6 if on else 0x2))

    def interrupts(self, vector: int, timeout: float = 5.0) -> int:
        ready, _, _ = select.select([self.irq[vector]], [], [], timeout)
        return struct.unpack("<Q", os.read(self.irq[vector], 8))[0] if ready else 0

    def close(self) -> None:
        self.client.close()
        for fd in self.irq:
            os.close(fd)
        del self.drv
        self.ram.close()


@pytest.fixture
def gpu(server_socket: Path):
    s = Session(server_socket)
    yield s
    s.close()


def test_copy_to_vram_and_back_then_fence_with_interrupt(gpu: Session) -> None:
    drv = gpu.drv
    src, dst = drv.alloc(1 << 20), drv.alloc(1 << 20)
    data = np.random.default_rng(7).integers(0, 256, 1 << 20, dtype=np.uint8)
    drv.view(src, data.size)[:] = data
    drv.submit(K, Opcode.COPY, (src, 0x100000, data.size),
               flags=hw.cmd_flags(Aperture.SYS, Aperture.VRAM))
    drv.submit(K, Opcode.COPY, (0x100000, dst, data.size),
               flags=hw.cmd_flags(Aperture.VRAM, Aperture.SYS))
    addr, value = drv.fence(K, irq=True)
    assert gpu.interrupts(hw.IrqVector.COMPLETION) == 1
    assert drv.u64(addr) == value
    assert np.array_equal(drv.view(dst, data.size), data)


def test_device_fault_is_delivered_and_replayed_over_the_socket(gpu: Session) -> None:
    drv = gpu.drv
    page, out = drv.alloc(4096), drv.alloc(64)
    drv.view(page, 4096)[:] = 0x3C
    drv.context(2)
    drv.submit(2, Opcode.READ, (0x7000_0000, out, 64))
    assert gpu.interrupts(hw.IrqVector.FAULT) == 1
    (f,) = drv.faults()
    assert (f.va, f.ctx, f.reason) == (0x7000_0000, 2, hw.FaultReason.NOT_PRESENT)
    drv.map(2, 0x7000_0000, page, Pte.READ | Pte.WRITE)
    drv.replay(2)
    addr, value = drv.fence(2)
    drv.wait(addr, value)
    assert drv.read(out, 64) == b"\x3c" * 64


def test_dma_outside_guest_ram_is_an_error_and_the_device_keeps_working(gpu: Session) -> None:
    drv = gpu.drv
    status = drv.alloc(8, 8)
    drv.submit(K, Opcode.FILL, (RAM_BUS + RAM_SIZE, 4096, 0xFFFFFFFF), status=status)
    addr, value = drv.fence(K)
    drv.wait(addr, value)
    assert drv.u64(status) == ErrorCode.DMA_UNMAPPED
    assert gpu.interrupts(hw.IrqVector.ERROR) == 1
    assert drv.mmio.read32(Reg.ERROR_ADDR_LO) == (RAM_BUS + RAM_SIZE) & 0xFFFFFFFF
    drv.submit(K, Opcode.FILL, (drv.alloc(64), 64, 0x01020304))
    addr, value = drv.fence(K)
    drv.wait(addr, value)


def test_bus_master_off_stops_dma(gpu: Session) -> None:
    drv = gpu.drv
    dst = drv.alloc(64)
    gpu.bus_master(False)
    drv.submit(K, Opcode.FILL, (dst, 64, 0x55555555))
    assert gpu.interrupts(hw.IrqVector.ERROR) == 1
    assert drv.read(dst, 64) == bytes(64)
    assert drv.qreg(K, QReg.ERROR) == ErrorCode.BUS_MASTER_OFF


def test_registers_answer_while_a_long_copy_runs(gpu: Session) -> None:
    drv = gpu.drv
    src = drv.alloc(32 << 20)
    for _ in range(8):
        drv.submit(K, Opcode.COPY, (src, 0, 32 << 20),
                   flags=hw.cmd_flags(Aperture.SYS, Aperture.VRAM), ring_doorbell=False)
    addr, value = drv.fence(K)
    answered = 0
    while drv.u64(addr) != value:
        assert drv.mmio.read32(Reg.ID) == hw.ID_MAGIC
        answered += 1
    assert answered > 0


def test_vram_size_register_matches_the_server_default(gpu: Session) -> None:
    lo = gpu.drv.mmio.read32(Reg.VRAM_SIZE_LO)
    hi = gpu.drv.mmio.read32(Reg.VRAM_SIZE_HI)
    assert (hi << 32 | lo) == hw.DEFAULT_VRAM_SIZE >= 512 << 20
