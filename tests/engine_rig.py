"""An in-process GPU for tests: guest RAM as a numpy array at a 64-bit bus
address, the engine run synchronously, and the Python reference driver."""

from __future__ import annotations

import numpy as np

from hmmgpu.device import hwdef as hw
from hmmgpu.device.gpu import Gpu
from hmmgpu.device.hwdef import Pte, Reg
from hmmgpu.device.memory import Fabric, GuestMemory
from hmmgpu.host.userdrv import ModelMmio, UserDriver

BUS = 0x1_0000_0000


RW = Pte.READ | Pte.WRITE


class Rig:
    def __init__(self, ram_size: int = 32 << 20, vram_size: int = 8 << 20,
                 fabric: Fabric | None = None, vram_path: str | None = None) -> None:
        self.irqs: list[int] = []
        self.bus_master = True
        self.ram = np.zeros(ram_size, dtype=np.uint8)
        self.mem = GuestMemory()
        self.mem.add_array(BUS, self.ram)
        self.gpu = Gpu(raise_irq=lambda v: self.irqs.append(v) is None, mem=self.mem,
                       vram_size=vram_size, bus_master=lambda: self.bus_master,
                       fabric=fabric, vram_path=vram_path)
        self.drv = UserDriver(ModelMmio(self.gpu), self.ram, BUS)
        self.drv.enable_faults()

    def run(self) -> None:
        self.gpu.engine.run_until_idle()

    def page(self, fill: int | None = None) -> int:
        addr = self.drv.alloc(hw.PAGE_SIZE)
        if fill is not None:
            self.drv.view(addr, hw.PAGE_SIZE)[:] = fill
        return addr

    def status_word(self) -> int:
        return self.drv.alloc(8, 8)

    def reg(self, r: Reg) -> int:
        return self.gpu.mmio_read(r, 4)
