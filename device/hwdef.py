"""The hmmgpu hardware interface, defined once.

Everything the driver and the device must agree on lives here: PCI identity,
BAR layout, registers, command, PTE and fault-record formats, interrupt
vectors, error codes. The device imports these names; the guest driver
includes guest/include/hmmgpu_hw.h, which `render_c_header()` generates from
this file (`hmmgpu hwdef --write` refreshes it, and a test fails when the
committed header differs). docs/hardware.md explains the semantics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from .layout import Field, Layout

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
# BAR0 holds the registers; the MSI-X table and PBA have a BAR of their own, as
# the PCI spec recommends.
BAR0_SIZE = 0x4000
MSIX_BAR = 2
MSIX_BAR_SIZE = 0x1000
MSIX_TABLE_OFFSET = 0x000
MSIX_PBA_OFFSET = 0x800
# BAR4 (64-bit, prefetchable): the VRAM, CPU-addressable and coherent with the
# device's own accesses (one memory behind both). Its size is the VRAM size
# rounded up to a power of two; bytes past the VRAM read 0 and ignore writes.
# A device served with --no-vram-bar has no BAR4 and CAPS.VRAM_BAR clear.
VRAM_BAR = 4

ID_MAGIC = 0x4D4D4748  # bytes "HGMM" in little-endian order
VERSION_MAJOR = 0
VERSION_MINOR = 5

# ---- device geometry -------------------------------------------------------------
PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
LARGE_PAGE_SHIFT = 21
LARGE_PAGE_SIZE = 1 << LARGE_PAGE_SHIFT
NUM_CONTEXTS = 16
KERNEL_QUEUE = NUM_CONTEXTS  # queues 0..15 belong to contexts 0..15; 16 is the kernel queue
NUM_QUEUES = NUM_CONTEXTS + 1
VA_BITS = 48
PT_LEVELS = 4  # level 3 is the root; a level-1 entry may map a 2 MiB page
PT_INDEX_BITS = 9  # VA bits per level
PT_ENTRIES = 1 << PT_INDEX_BITS
# bus addresses a PTE can hold (address field bits 51:12): the driver's DMA mask
DMA_ADDR_BITS = 52
DEFAULT_VRAM_SIZE = 1 << 30
MAX_RING_ENTRIES = 1 << 16
MAX_FAULT_ENTRIES = 1 << 16


class Reg(IntEnum):
    """Global BAR0 registers; all are 32 bits wide."""

    ID = 0x000
    VERSION = 0x004
    SCRATCH = 0x008
    TEST_DOORBELL = 0x00C
    IRQ_COUNT = 0x010
    ERROR = 0x014
    ERROR_QUEUE = 0x018
    ERROR_COUNT = 0x01C
    ERROR_ADDR_LO = 0x020
    ERROR_ADDR_HI = 0x024
    VRAM_SIZE_LO = 0x028
    VRAM_SIZE_HI = 0x02C
    NUM_CONTEXTS = 0x030
    INTR_STATUS = 0x034
    DEVICE_RESET = 0x038
    FAULT_BASE_LO = 0x040
    FAULT_BASE_HI = 0x044
    FAULT_SIZE = 0x048
    FAULT_PUT = 0x04C
    FAULT_GET = 0x050
    FAULT_OVERFLOW = 0x054
    TIMESTAMP_LO = 0x058
    TIMESTAMP_HI = 0x05C
    # driver sanitizer (docs/hardware.md): the driver tells the device which
    # VRAM pages it holds, so a PTE at a freed page is caught; write
    # SAN_VRAM_ALLOC | order << SAN_ORDER_SHIFT | page << SAN_PAGE_SHIFT
    SAN_VRAM = 0x060
    SAN_REPORTS = 0x064  # read: sanitizer reports since reset
    CAPS = 0x068  # Caps: what this device has
    FABRIC_ID = 0x06C  # this device's id on the device-to-device fabric
    PEER_LINKS = 0x070  # bit N: a link to the device with fabric id N
    # the poll area in guest memory (POLL_AREA_SIZE bytes): per queue a poll
    # word, a replay word and a watch word (see below)
    POLL_BASE_LO = 0x074
    POLL_BASE_HI = 0x078
    IRQ_HELD = 0x07C  # read: interrupts held off by a poll word since reset
    REPLAYS_WATCHED = 0x080  # read: REPLAYs taken from a replay word since reset


class PollWord(IntFlag):
    """A queue's poll word: the driver polls for what these name, so the
    device sends no interrupt for them."""

    COMPLETION = 1 << 0  # the queue's fences: no COMPLETION interrupt
    FAULT = 1 << 1  # the fault buffer, for the queue's faults: no FAULT interrupt


# The poll area: three arrays of NUM_QUEUES little-endian u32s. Poll words
# (driver): PollWord. Replay words (driver): a count the driver bumps to
# REPLAY its queue without an MMIO write, heeded while the device watches.
# Watch words (device): WATCH_ACTIVE while the device watches the replay
# word of its stalled queue; bits 31:16 the count it last took from it.
POLL_WORDS_OFFSET = 0
REPLAY_WORDS_OFFSET = 4 * NUM_QUEUES
WATCH_WORDS_OFFSET = 8 * NUM_QUEUES
POLL_AREA_SIZE = 12 * NUM_QUEUES
WATCH_ACTIVE = 1 << 0
REPLAY_COUNT_SHIFT = 16  # in a watch word, and in CONTROL with REPLAY
REPLAY_COUNT_MASK = 0xFFFF


class Caps(IntFlag):
    VRAM_BAR = 1 << 0  # BAR4 maps the VRAM, coherent with the device


# Per-queue registers: queue q's window starts at QUEUE_BASE + q * QUEUE_STRIDE.
QUEUE_BASE = 0x1000
QUEUE_STRIDE = 0x40


class QReg(IntEnum):
    """Per-queue registers, offsets inside a queue's window."""

    RING_BASE_LO = 0x00
    RING_BASE_HI = 0x04
    RING_SIZE = 0x08
    HEAD = 0x0C
    TAIL = 0x10  # the doorbell: writing it starts the queue
    STATUS = 0x14
    ERROR = 0x18
    CONTROL = 0x1C
    PT_BASE_LO = 0x20  # context queues only: this context's root page table
    PT_BASE_HI = 0x24
    COMPLETED = 0x28  # commands completed since the queue was set up


class QueueStatus(IntFlag):
    IDLE = 0
    RUNNING = 1 << 0
    STALLED = 1 << 1  # waiting for REPLAY or CANCEL of a fault
    HALTED = 1 << 2  # stopped by an error in the queue registers; reset it


class QueueControl(IntEnum):
    """Values written to a queue's CONTROL register."""

    REPLAY = 1  # retry the faulted command; bits 31:16 may carry a replay count
    CANCEL = 2  # complete the faulted command with FAULT_CANCELLED
    RESET = 3  # HEAD = TAIL = 0, clear STATUS and ERROR


class IntrStatus(IntFlag):
    COMPLETION = 1 << 0
    FAULT = 1 << 1
    ERROR = 1 << 2


@dataclass(frozen=True)
class Register:
    reg: Reg
    access: str  # "RO", "RW", "WO", "RW1C"
    reset: int | None  # None: a running value (a clock) with no reset value
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
    Register(Reg.ERROR_QUEUE, "RO", 0xFFFFFFFF,
             "queue of the last error; 0xFFFFFFFF for register errors"),
    Register(Reg.ERROR_COUNT, "RO", 0, "errors recorded since reset"),
    Register(Reg.ERROR_ADDR_LO, "RO", 0, "address involved in the last error, bits 31:0"),
    Register(Reg.ERROR_ADDR_HI, "RO", 0, "address involved in the last error, bits 63:32"),
    Register(Reg.VRAM_SIZE_LO, "RO", DEFAULT_VRAM_SIZE & 0xFFFFFFFF, "VRAM bytes, bits 31:0"),
    Register(Reg.VRAM_SIZE_HI, "RO", DEFAULT_VRAM_SIZE >> 32, "VRAM bytes, bits 63:32"),
    Register(Reg.NUM_CONTEXTS, "RO", NUM_CONTEXTS, "address spaces (context queues)"),
    Register(Reg.INTR_STATUS, "RW1C", 0, "interrupt causes seen (IntrStatus); write 1s to clear"),
    Register(Reg.DEVICE_RESET, "WO", 0, "writing 1 resets the device (all registers)"),
    Register(Reg.FAULT_BASE_LO, "RW", 0, "fault buffer bus address, bits 31:0 (4 KiB aligned)"),
    Register(Reg.FAULT_BASE_HI, "RW", 0, "fault buffer bus address, bits 63:32"),
    Register(Reg.FAULT_SIZE, "RW", 0,
             "fault buffer entries (power of two <= 65536); 0 disables fault reporting"),
    Register(Reg.FAULT_PUT, "RO", 0, "next entry the device writes"),
    Register(Reg.FAULT_GET, "RW", 0, "next entry the driver reads; the driver advances it"),
    Register(Reg.FAULT_OVERFLOW, "RO", 0, "fault records dropped because the buffer was full"),
    Register(Reg.TIMESTAMP_LO, "RO", None,
             "device clock in ns, bits 31:0 (reading LO latches HI)"),
    Register(Reg.TIMESTAMP_HI, "RO", None, "device clock in ns, bits 63:32, latched"),
    Register(Reg.SAN_VRAM, "WO", None,
             "sanitizer: VRAM folio allocated (bit 0 = 1) or freed; order in bits 4:1, "
             "page index in bits 31:5"),
    Register(Reg.SAN_REPORTS, "RO", 0, "sanitizer reports since reset"),
    Register(Reg.CAPS, "RO", int(Caps.VRAM_BAR),
             "capabilities (Caps); VRAM_BAR clear on a device served with --no-vram-bar"),
    Register(Reg.FABRIC_ID, "RO", 0, "fabric id of this device (0..15), set when it is served"),
    Register(Reg.PEER_LINKS, "RO", 0,
             "bit N set: a link to the device with fabric id N (its VRAM by PEER PTEs)"),
    Register(Reg.POLL_BASE_LO, "RW", 0,
             "poll area bus address, bits 31:0 (4-byte aligned; 0: none): per queue a "
             "poll word (PollWord bits hold off its interrupts), a replay word and a "
             "watch word"),
    Register(Reg.POLL_BASE_HI, "RW", 0, "poll area bus address, bits 63:32"),
    Register(Reg.IRQ_HELD, "RO", 0, "interrupts held off by a poll word since reset"),
    Register(Reg.REPLAYS_WATCHED, "RO", 0, "REPLAYs taken from a replay word since reset"),
)

def pt_level_shift(level: int) -> int:
    """VA bit where a level's table index starts (level 0: the 4 KiB leaf)."""
    return PAGE_SHIFT + level * PT_INDEX_BITS


def pt_index(va: int, level: int) -> int:
    return (va >> pt_level_shift(level)) & (PT_ENTRIES - 1)


def queue_reg(queue: int, reg: QReg) -> int:
    return QUEUE_BASE + queue * QUEUE_STRIDE + reg


class IrqVector(IntEnum):
    COMPLETION = 0
    FAULT = 1
    ERROR = 2
    TEST = 3


IRQ_VECTORS = len(IrqVector)


class ErrorCode(IntEnum):
    NONE = 0
    BAD_VECTOR = 1  # TEST_DOORBELL named a vector that does not exist
    BAD_REGISTER = 2  # register access of the wrong width or alignment
    BAD_OPCODE = 3  # unknown command opcode
    BAD_COMMAND = 4  # reserved bits set, bad aperture, length 0 or misaligned
    DMA_UNMAPPED = 5  # bus address not in guest memory (no DMA mapping)
    VRAM_RANGE = 6  # VRAM offset past the end of VRAM
    PTE_INVALID = 7  # malformed PTE: reserved bits, misaligned address, bad level
    PT_LOOP = 8  # a page-table walk revisited a table
    QUEUE_CONFIG = 9  # ring base, size or TAIL out of range
    FAULT_CANCELLED = 10  # the driver cancelled this command's fault
    BUS_MASTER_OFF = 11  # DMA attempted while Bus Master Enable is clear
    FAULT_BUFFER = 12  # fault buffer misconfigured or unmapped
    CONTEXT = 13  # command names a context that does not exist


class SanCheck(IntEnum):
    """What the driver sanitizer detects (its report names one)."""

    STALE_TLB = 1  # a TLB entry used after its PTE changed without TLB_INVALIDATE
    DMA_UNMAPPED = 2  # DMA to a bus address QEMU has not mapped
    VRAM_PTE = 3  # a PTE past the end of VRAM, or at a VRAM page the driver freed
    FAULT_OVERFLOW = 4  # a fault found the fault buffer full
    BUS_MASTER_OFF = 5  # a command after the driver disabled bus mastering
    STALE_PATH = 6  # a LEAF TLB_INVALIDATE kept a cached path the driver had changed


SAN_VRAM_ALLOC = 1 << 0  # else: free
SAN_ORDER_SHIFT = 1
SAN_ORDER_BITS = 4  # the folio order: 0..15
SAN_ORDER_MASK = (1 << SAN_ORDER_BITS) - 1
SAN_PAGE_SHIFT = SAN_ORDER_SHIFT + SAN_ORDER_BITS  # VRAM page index, bits 31:5


# ---- commands ----------------------------------------------------------------------
COMMAND_SIZE = 64
COMMAND_LAYOUT = Layout("hmmgpu_command", (
    Field("opcode", "u32"),
    Field("flags", "u32", doc="IRQ, apertures, atomic op"),
    Field("ctx", "u32", doc="the command's context"),
    Field("reserved", "u32", doc="must be 0"),
    Field("args", "u64", 5),
    Field("status", "u64", doc="bus address for the status, or 0"),
), COMMAND_SIZE, "A command: 64 bytes, little-endian, in a queue's ring.")
COMMAND = COMMAND_LAYOUT.struct()


class Opcode(IntEnum):
    NOP = 0
    COPY = 1  # a0 src, a1 dst, a2 length; apertures in flags
    FILL = 2  # a0 dst, a1 length, a2 32-bit pattern; dst aperture in flags
    READ = 3  # a0 device VA, a1 bounce bus address, a2 length: VA -> system memory
    WRITE = 4  # a0 device VA, a1 bounce bus address, a2 length: system memory -> VA
    ATOMIC = 5  # a0 device VA (8-aligned), a1 operand, a2 bus address for the old value
    TLB_INVALIDATE = 6  # ctx; a0 VA, a1 length (0: the whole context)
    FENCE = 7  # a0 bus address, a1 64-bit value; flags.IRQ raises COMPLETION
    COPY_PAGES = 8  # a0 bus address of a list of page bus addresses, a1 VRAM offset, a2 pages


class Aperture(IntEnum):
    SYS = 0  # system memory by bus address
    VRAM = 1  # device memory by offset
    VA = 2  # device virtual address through the context's page table


class CmdFlags(IntFlag):
    IRQ = 1 << 0  # raise the COMPLETION vector when this command completes
    TO_SYS = 1 << 12  # COPY_PAGES: VRAM -> the listed pages (else the pages -> VRAM)
    # TLB_INVALIDATE: only leaf PTEs changed (no page table freed or
    # replaced): cached paths to level-0 tables may stay (Arm's last-level TLBI)
    LEAF = 1 << 13
    # bits 8-9: source aperture, bits 10-11: destination aperture


SRC_APERTURE_SHIFT = 8
DST_APERTURE_SHIFT = 10
APERTURE_MASK = 0x3
ATOMIC_OP_MASK = 0xF  # flags bits 16-19


class AtomicOp(IntEnum):
    """ATOMIC's operation, in flags bits 16-19."""

    FETCH_ADD = 0
    SWAP = 1


ATOMIC_OP_SHIFT = 16

_SRC_AP = APERTURE_MASK << SRC_APERTURE_SHIFT
_DST_AP = APERTURE_MASK << DST_APERTURE_SHIFT
# The flag bits each opcode defines; any other bit set is BAD_COMMAND. FILL's
# aperture is the destination field; READ and WRITE fix theirs (VA <-> SYS).
CMD_FLAGS_VALID: dict[Opcode, int] = {
    Opcode.NOP: CmdFlags.IRQ,
    Opcode.COPY: CmdFlags.IRQ | _SRC_AP | _DST_AP,
    Opcode.FILL: CmdFlags.IRQ | _DST_AP,
    Opcode.READ: CmdFlags.IRQ,
    Opcode.WRITE: CmdFlags.IRQ,
    Opcode.ATOMIC: CmdFlags.IRQ | (ATOMIC_OP_MASK << ATOMIC_OP_SHIFT),
    Opcode.TLB_INVALIDATE: CmdFlags.IRQ | CmdFlags.LEAF,
    Opcode.FENCE: CmdFlags.IRQ,
    Opcode.COPY_PAGES: CmdFlags.IRQ | CmdFlags.TO_SYS,
}
# COPY_PAGES moves at most this many 4 KiB pages (one 2 MiB large page)
MAX_COPY_PAGES = 512


def cmd_flags(src: Aperture = Aperture.SYS, dst: Aperture = Aperture.SYS, irq: bool = False,
              atomic: AtomicOp = AtomicOp.FETCH_ADD) -> int:
    return (int(irq) | (src << SRC_APERTURE_SHIFT) | (dst << DST_APERTURE_SHIFT)
            | (atomic << ATOMIC_OP_SHIFT))


# ---- page tables ----------------------------------------------------------------------
class Pte(IntFlag):
    VALID = 1 << 0
    READ = 1 << 1
    WRITE = 1 << 2
    ATOMIC = 1 << 3
    VRAM = 1 << 4  # aperture: address is a VRAM offset, else a bus address
    LARGE = 1 << 5  # level-1 entry maps a 2 MiB page
    PEER = 1 << 6  # with VRAM: the VRAM of the peer named in PEER_ID, over the fabric


PTE_PEER_SHIFT = 7  # bits 10:7: the peer's fabric id (a PEER PTE only)
PTE_PEER_MASK = 0xF
MAX_FABRIC_ID = PTE_PEER_MASK
PTE_ADDR_MASK = ((1 << DMA_ADDR_BITS) - 1) & ~(PAGE_SIZE - 1)
PTE_FLAGS_MASK = 0x7FF
PTE_RESERVED_MASK = ~(PTE_ADDR_MASK | PTE_FLAGS_MASK) & 0xFFFF_FFFF_FFFF_FFFF


class Access(IntFlag):
    READ = 1 << 0
    WRITE = 1 << 1
    ATOMIC = 1 << 2


# ---- fault records ------------------------------------------------------------------
FAULT_RECORD_SIZE = 32
FAULT_RECORD_LAYOUT = Layout("hmmgpu_fault_record", (
    Field("va", "u64"),
    Field("timestamp", "u64", doc="device clock, ns"),
    Field("ctx", "u32"),
    Field("access", "u32", doc="Access bits, FAULT_LAST; FAULT_VALID set last by the device"),
    Field("queue", "u32"),
    Field("reason", "u32", doc="FaultReason"),
), FAULT_RECORD_SIZE, "A fault record: 32 bytes, written by the device into the fault buffer.")
FAULT_RECORD = FAULT_RECORD_LAYOUT.struct()
# in a record's access word, stored after the rest of the record: the driver
# finds new records without reading FAULT_PUT, and clears it when consumed
FAULT_VALID = 1 << 31
# on the last record a faulting command wrote (lost ones after it included):
# its batch is complete, a driver that polls the buffer may serve it
FAULT_LAST = 1 << 30
FAULT_ACCESS_OFFSET = 20


class FaultReason(IntEnum):
    NOT_PRESENT = 1  # no valid PTE
    PERMISSION = 2  # valid PTE without the needed READ/WRITE/ATOMIC bit


# ---- the C header ---------------------------------------------------------------------

# ---- names for logs and traces ---------------------------------------------------------
_OPCODE_NAMES = {int(o): o.name for o in Opcode}


def opcode_name(op: int) -> str:
    return _OPCODE_NAMES.get(op) or f"op{op}"


def name_of(enum: type[IntEnum], value: int, unknown: Callable[[int], str] = str) -> str:
    """The name of `value` in `enum`, else unknown(value)."""
    try:
        return enum(value).name
    except ValueError:
        return unknown(value)


def queue_name(q: int) -> str:
    return "kernel queue" if q == KERNEL_QUEUE else f"queue {q}"


def reg_name(offset: int) -> str:
    """A BAR0 offset as a register name: "ID", "queue 3 TAIL", "kernel queue HEAD"."""
    if QUEUE_BASE <= offset < QUEUE_BASE + NUM_QUEUES * QUEUE_STRIDE:
        q, reg = divmod(offset - QUEUE_BASE, QUEUE_STRIDE)
        return f"{queue_name(q)} {name_of(QReg, reg, hex)}"
    return name_of(Reg, offset, hex)


def _defines() -> list[tuple[str, int]]:
    out = [
        ("PCI_VENDOR_ID", PCI_VENDOR_ID), ("PCI_DEVICE_ID", PCI_DEVICE_ID),
        ("PCI_CLASS_BASE", PCI_CLASS_BASE), ("PCI_CLASS_SUB", PCI_CLASS_SUB),
        ("BAR0_SIZE", BAR0_SIZE), ("MSIX_BAR", MSIX_BAR), ("MSIX_BAR_SIZE", MSIX_BAR_SIZE),
        ("MSIX_TABLE_OFFSET", MSIX_TABLE_OFFSET),
        ("MSIX_PBA_OFFSET", MSIX_PBA_OFFSET), ("VRAM_BAR", VRAM_BAR), ("ID_MAGIC", ID_MAGIC),
        ("VERSION_MAJOR", VERSION_MAJOR), ("VERSION_MINOR", VERSION_MINOR),
        ("PAGE_SHIFT", PAGE_SHIFT), ("LARGE_PAGE_SHIFT", LARGE_PAGE_SHIFT),
        ("NUM_CONTEXTS", NUM_CONTEXTS), ("KERNEL_QUEUE", KERNEL_QUEUE),
        ("NUM_QUEUES", NUM_QUEUES), ("VA_BITS", VA_BITS), ("PT_LEVELS", PT_LEVELS),
        ("PT_INDEX_BITS", PT_INDEX_BITS), ("PT_ENTRIES", PT_ENTRIES),
        ("DMA_ADDR_BITS", DMA_ADDR_BITS), ("MAX_RING_ENTRIES", MAX_RING_ENTRIES),
        ("MAX_FAULT_ENTRIES", MAX_FAULT_ENTRIES),
        ("QUEUE_BASE", QUEUE_BASE), ("QUEUE_STRIDE", QUEUE_STRIDE),
        ("COMMAND_SIZE", COMMAND_SIZE), ("FAULT_RECORD_SIZE", FAULT_RECORD_SIZE),
        ("FAULT_VALID", FAULT_VALID), ("FAULT_LAST", FAULT_LAST),
        ("SRC_APERTURE_SHIFT", SRC_APERTURE_SHIFT), ("DST_APERTURE_SHIFT", DST_APERTURE_SHIFT),
        ("APERTURE_MASK", APERTURE_MASK),
        ("ATOMIC_OP_SHIFT", ATOMIC_OP_SHIFT), ("ATOMIC_OP_MASK", ATOMIC_OP_MASK),
        ("PTE_ADDR_MASK", PTE_ADDR_MASK), ("PTE_FLAGS_MASK", PTE_FLAGS_MASK),
        ("PTE_RESERVED_MASK", PTE_RESERVED_MASK), ("PTE_PEER_SHIFT", PTE_PEER_SHIFT),
        ("PTE_PEER_MASK", PTE_PEER_MASK),
        ("SAN_VRAM_ALLOC", SAN_VRAM_ALLOC), ("SAN_ORDER_SHIFT", SAN_ORDER_SHIFT),
        ("SAN_ORDER_MASK", SAN_ORDER_MASK), ("SAN_PAGE_SHIFT", SAN_PAGE_SHIFT),
        ("POLL_WORDS_OFFSET", POLL_WORDS_OFFSET), ("REPLAY_WORDS_OFFSET", REPLAY_WORDS_OFFSET),
        ("WATCH_WORDS_OFFSET", WATCH_WORDS_OFFSET), ("POLL_AREA_SIZE", POLL_AREA_SIZE),
        ("WATCH_ACTIVE", WATCH_ACTIVE), ("REPLAY_COUNT_SHIFT", REPLAY_COUNT_SHIFT),
        ("REPLAY_COUNT_MASK", REPLAY_COUNT_MASK),
    ]
    out += [(f"REG_{r.name}", int(r)) for r in Reg]
    out += [(f"QREG_{r.name}", int(r)) for r in QReg]
    out += [(f"QSTATUS_{s.name}", int(s)) for s in QueueStatus if s]
    out += [(f"QCTRL_{c.name}", int(c)) for c in QueueControl]
    out += [(f"INTR_{s.name}", int(s)) for s in IntrStatus]
    out += [(f"IRQ_{v.name}", int(v)) for v in IrqVector]
    out.append(("IRQ_VECTORS", IRQ_VECTORS))
    out += [(f"ERR_{e.name}", int(e)) for e in ErrorCode]
    out += [(f"OP_{o.name}", int(o)) for o in Opcode]
    out += [(f"APERTURE_{a.name}", int(a)) for a in Aperture]
    out += [(f"CMD_{f.name}", int(f)) for f in CmdFlags]
    out.append(("MAX_COPY_PAGES", MAX_COPY_PAGES))
    out += [(f"ATOMIC_{a.name}", int(a)) for a in AtomicOp]
    out += [(f"PTE_{p.name}", int(p)) for p in Pte]
    out += [(f"CAPS_{c.name}", int(c)) for c in Caps]
    out += [(f"POLL_{w.name}", int(w)) for w in PollWord]
    out += [(f"ACCESS_{a.name}", int(a)) for a in Access]
    out += [(f"FAULT_{r.name}", int(r)) for r in FaultReason]
    out += [(f"SAN_{c.name}", int(c)) for c in SanCheck]
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
        "#ifdef __KERNEL__",
        "#include <linux/build_bug.h>",
        "#include <linux/stddef.h>",
        "#include <linux/types.h>",
        "#else",
        "#include <assert.h>",
        "#include <stddef.h>",
        "#include <linux/types.h>",
        "#endif",
        "",
    ]
    for name, value in _defines():
        suffix = "ULL" if value > 0xFFFFFFFF else ""
        lines.append(f"#define HMMGPU_{name:<24} 0x{value:x}{suffix}")
    lines.append("#define HMMGPU_QUEUE_REG(q, r)         (HMMGPU_QUEUE_BASE + "
                 "(q) * HMMGPU_QUEUE_STRIDE + (r))")
    lines.append("/* VA bit where a level's table index starts (level 0: the 4 KiB leaf) */")
    lines.append("#define HMMGPU_PT_LEVEL_SHIFT(l)       (HMMGPU_PAGE_SHIFT + "
                 "(l) * HMMGPU_PT_INDEX_BITS)")
    lines.append("#define HMMGPU_PT_INDEX(va, l)         (((va) >> HMMGPU_PT_LEVEL_SHIFT(l)) & "
                 "(HMMGPU_PT_ENTRIES - 1))")
    for layout in (COMMAND_LAYOUT, FAULT_RECORD_LAYOUT):
        lines += ["", *layout.c_struct(endian_types=True)]
    lines += ["", "#endif /* HMMGPU_HW_H */", ""]
    return "\n".join(lines)
