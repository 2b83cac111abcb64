"""The hmmgpu hardware interface, defined once.

Everything the driver and the device must agree on lives here: PCI identity,
BAR layout, registers, interrupt vectors. The device imports these names; the
guest driver includes guest/include/hmmgpu_hw.h, which `render_c_header()`
generates from this file (`hmmgpu hwdef --write` refreshes it, and a test fails
when the committed header differs). docs/hardware.md explains the semantics.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

# ---- PCI identity ---------------------------------------------------------
# 0x1234 is the ad-hoc vendor ID QEMU's own test devices use; no driver of the
# Linux 7.3 cloud kernel matches 0x1234:0x4847, so the device stays unbound
# until hmmgpu's driver claims it.
PCI_VENDOR_ID = 0x1234
PCI_DEVICE_ID = 0x4847  # "HG"
PCI_SUBSYS_VENDOR_ID = 0x1234
PCI_SUBSYS_ID = 0x0001
PCI_CLASS_BASE = 0x03  # display controller
PCI_CLASS_SUB = 0x02  # 3D controller
PCI_REVISION = 0x01

# ---- BARs ---------------------------------------------------------------------
# BAR0 holds the registers; the MSI-X table and PBA live alone in their own BAR
# (QEMU emulates them, and removes a device cleanly only when they do not share
# a BAR with registers).
BAR0_SIZE = 0x4000
MSIX_BAR = 2
MSIX_BAR_SIZE = 0x1000
MSIX_TABLE_OFFSET = 0x000
MSIX_PBA_OFFSET = 0x800

ID_MAGIC = 0x4D4D4748  # bytes "HGMM" in little-endian order
VERSION_MAJOR = 0
VERSION_MINOR = 1


class Reg(IntEnum):
    """BAR0 register offsets; all registers are 32 bits wide."""

    ID = 0x000
    VERSION = 0x004
    SCRATCH = 0x008
    TEST_DOORBELL = 0x00C
    IRQ_COUNT = 0x010
    ERROR = 0x014


@dataclass(frozen=True)
class Register:
    reg: Reg
    access: str  # "RO", "RW", "WO"
    reset: int
    doc: str


REGISTERS: tuple[Register, ...] = (
    Register(Reg.ID, "RO", ID_MAGIC, "identification magic"),
    Register(Reg.VERSION, "RO", (VERSION_MAJOR << 16) | VERSION_MINOR,
             "interface version, major in bits 31:16, minor in 15:0"),
    Register(Reg.SCRATCH, "RW", 0, "free for the driver; no side effects"),
    Register(Reg.TEST_DOORBELL, "WO", 0,
             "writing N raises MSI-X vector N (N < IRQ_VECTORS), else sets ERROR=BAD_VECTOR"),
    Register(Reg.IRQ_COUNT, "RO", 0, "interrupts raised since reset (mod 2^32)"),
    Register(Reg.ERROR, "RW", 0, "last error code; writing 0 clears it"),
)


class IrqVector(IntEnum):
    COMPLETION = 0
    FAULT = 1
    ERROR = 2
    TEST = 3


IRQ_VECTORS = len(IrqVector)


class ErrorCode(IntEnum):
    NONE = 0
    BAD_VECTOR = 1  # TEST_DOORBELL named a vector that does not exist
    BAD_REGISTER = 2  # access to an undefined register offset or with a bad width


# ---- the C header ------------------------------------------------------------

def _defines() -> list[tuple[str, int]]:
    out = [
        ("PCI_VENDOR_ID", PCI_VENDOR_ID), ("PCI_DEVICE_ID", PCI_DEVICE_ID),
        ("PCI_CLASS_BASE", PCI_CLASS_BASE), ("PCI_CLASS_SUB", PCI_CLASS_SUB),
        ("BAR0_SIZE", BAR0_SIZE), ("MSIX_BAR", MSIX_BAR), ("MSIX_BAR_SIZE", MSIX_BAR_SIZE),
        ("MSIX_TABLE_OFFSET", MSIX_TABLE_OFFSET),
        ("MSIX_PBA_OFFSET", MSIX_PBA_OFFSET), ("ID_MAGIC", ID_MAGIC),
        ("VERSION_MAJOR", VERSION_MAJOR), ("VERSION_MINOR", VERSION_MINOR),
    ]
    out += [(f"REG_{r.name}", int(r)) for r in Reg]
    out += [(f"IRQ_{v.name}", int(v)) for v in IrqVector]
    out.append(("IRQ_VECTORS", IRQ_VECTORS))
    out += [(f"ERR_{e.name}", int(e)) for e in ErrorCode]
    return out


def render_c_header() -> str:
    lines = [
        "/* SPDX-License-Identifier: GPL-2.0 */",
        "/*",
        " * hmmgpu hardware interface. GENERATED from device/hwdef.py by",
        " * 'hmmgpu hwdef --write': do not edit by hand.",
        " */",
        "#ifndef HMMGPU_HW_H",
        "#define HMMGPU_HW_H",
        "",
    ]
    for name, value in _defines():
        lines.append(f"#define HMMGPU_{name:<24} 0x{value:x}")
    lines += ["", "#endif /* HMMGPU_HW_H */", ""]
    return "\n".join(lines)
