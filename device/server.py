"""The hmmgpu vfio-user server: one emulated GPU on one UNIX socket.

Start-up reads top to bottom like the hardware: create the context, PCI
identity and capabilities, BAR0, MSI-X, DMA and reset callbacks, realize; then
an event loop accepts QEMU, serves its messages, and on disconnect (hot-unplug,
QEMU exit) resets the device and waits for the next client.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import struct
import sys
import threading
import time

from . import hwdef as hw
from . import pyvfio
from .control import ControlServer
from .gpu import Gpu
from .memory import Fabric, GuestMemory

log = logging.getLogger("hmmgpu.device")

PCI_CAP_ID_EXP = 0x10
PCI_CAP_ID_MSIX = 0x11
MSIX_FLAGS_HI = 3  # high byte of Message Control
MSIX_ENABLE_HI = 0x80  # Message Control bit 15, MSI-X Enable
PCI_EXP_CAP_SIZE = 0x3C
PCI_EXP_FLAGS_V2_ENDPOINT = 0x0002  # version 2, device/port type 0 (endpoint)
PCI_COMMAND = 0x04
PCI_REVISION_ID = 0x08
PCI_COMMAND_MASTER = 0x04
PCI_BASE_ADDRESS_0 = 0x10
# memory BAR type bits: 64-bit (type 2) and prefetchable; libvfio-user keeps a
# BAR's low bits when the guest writes it (lib/pci.c pci_hdr_write_bar)
PCI_BAR_MEM_64_PREFETCH = 0x04 | 0x08


# After a message that submitted work, the server busy-polls its socket this
# long before it sleeps in select(), and again after each message that came
# meanwhile (the driver is busy with the device): a driver that submitted
# usually submits again soon (the next ioctl after a little CPU work), and a
# thread woken from select() took 25-40 us to run again here (TCG, 2 CPUs).
# fault_bench's faulting READ, which follows a munmap and a memset, went from
# ~108 to 66-80 us median with 100-400 us of polling (50 was too short); the
# READ right after it, which found the server awake anyway, stayed at 39-52.
# QEMU's IOThreads poll for the same reason (poll-max-ns).
DEFAULT_POLL_US = 200


def poll_readable(fd: int, poll_ns: int) -> bool:
    """Busy-poll `fd` for up to `poll_ns`: True once it is readable. The GIL
    and the CPU go to others between looks (sched_yield)."""
    until = time.monotonic_ns() + poll_ns
    while True:
        if select.select([fd], [], [], 0)[0]:
            return True
        if time.monotonic_ns() >= until:
            return False
        os.sched_yield()


def vram_bar_size(vram_size: int) -> int:
    """A BAR is a power of two; the VRAM BAR is the smallest that holds the VRAM."""
    return 1 << max(vram_size - 1, hw.PAGE_SIZE - 1).bit_length()


def pcie_capability() -> bytes:
    cap = bytearray(PCI_EXP_CAP_SIZE)
    struct.pack_into("<BBH", cap, 0, PCI_CAP_ID_EXP, 0, PCI_EXP_FLAGS_V2_ENDPOINT)
    return bytes(cap)


def msix_capability(vectors: int, bar: int, table: int, pba: int) -> bytes:
    # Message Control holds table size - 1; table/PBA dwords are offset | BIR.
    return struct.pack("<BBHII", PCI_CAP_ID_MSIX, 0, vectors - 1, table | bar, pba | bar)


class GpuServer:
    def __init__(self, socket_path: str, library: str | None = None, msix: bool = True,
                 vram_size: int = hw.DEFAULT_VRAM_SIZE, control: str | None = None,
                 vram_bar: bool = True, vram_file: str | None = None,
                 fabric: Fabric | None = None, poll_us: int = DEFAULT_POLL_US) -> None:
        self.socket_path = socket_path
        self.poll_ns = poll_us * 1000
        self.ctx = pyvfio.Context(socket_path, library=library)
        self.mem = GuestMemory()
        self.gpu = Gpu(raise_irq=self._trigger, mem=self.mem, vram_size=vram_size,
                       bus_master=self._bus_master, vram_bar=vram_bar, vram_path=vram_file,
                       fabric=fabric)
        # commands run on this thread after the doorbell's reply (serve())
        self.gpu.engine.defer = True
        self._stop_r, self._stop_w = os.pipe()
        self.connected = False

        ctx = self.ctx
        ctx.pci_init(pyvfio.VFU_PCI_TYPE_EXPRESS, revision=hw.PCI_REVISION)
        ctx.set_id(hw.PCI_VENDOR_ID, hw.PCI_DEVICE_ID, hw.PCI_SUBSYS_VENDOR_ID, hw.PCI_SUBSYS_ID)
        ctx.set_class(hw.PCI_CLASS_BASE, hw.PCI_CLASS_SUB)
        ctx.add_capability(pcie_capability())
        ctx.setup_region(pyvfio.VFU_PCI_DEV_BAR0_REGION_IDX, hw.BAR0_SIZE, self._bar0_access,
                         pyvfio.VFU_REGION_FLAG_RW | pyvfio.VFU_REGION_FLAG_MEM)
        self._msix_cap: int | None = None
        if msix:
            self._msix_cap = ctx.add_capability(msix_capability(hw.IRQ_VECTORS, hw.MSIX_BAR,
                                               hw.MSIX_TABLE_OFFSET, hw.MSIX_PBA_OFFSET))
            # QEMU emulates the MSI-X table and PBA; the device never sees those accesses.
            ctx.setup_region(pyvfio.VFU_PCI_DEV_BAR0_REGION_IDX + hw.MSIX_BAR,
                             hw.MSIX_BAR_SIZE, self._msix_bar_access,
                             pyvfio.VFU_REGION_FLAG_RW | pyvfio.VFU_REGION_FLAG_MEM)
            ctx.setup_irqs(pyvfio.VFU_DEV_MSIX_IRQ, hw.IRQ_VECTORS)
        if vram_bar:
            # QEMU maps the VRAM file into the guest (the mmap area), so CPU
            # accesses never reach this process; the callback serves a client
            # that does not map, and the BAR's tail past the VRAM
            vram = self.gpu.vram
            ctx.setup_region(pyvfio.VFU_PCI_DEV_BAR0_REGION_IDX + hw.VRAM_BAR,
                             vram_bar_size(vram.size), self._vram_bar_access,
                             pyvfio.VFU_REGION_FLAG_RW | pyvfio.VFU_REGION_FLAG_MEM,
                             mmap_areas=[(0, vram.size)], fd=vram.fd)
        ctx.setup_dma(on_register=self._dma_register, on_unregister=self._dma_unregister)
        ctx.setup_reset(self._on_reset)
        ctx.setup_quiesce(self._on_quiesce)
        ctx.realize()
        self.config = ctx.config_space()
        # vfu_pci_init() ignores its revision argument (lib/pci.c): set the byte
        self.config[PCI_REVISION_ID] = hw.PCI_REVISION
        if vram_bar:  # QEMU reads the BAR's type from here when it realizes the device
            self.config[PCI_BASE_ADDRESS_0 + 4 * hw.VRAM_BAR] |= PCI_BAR_MEM_64_PREFETCH
        self.control = ControlServer(control, self.gpu.engine.trace, self.gpu.engine.sanitizer,
                                     self.gpu.engine.inject) if control else None

    # ---- callbacks -----------------------------------------------------------

    def _bar0_access(self, offset: int, data: bytes | None, count: int) -> bytes | None:
        return self.gpu.bar0_access(offset, data, count)

    def _vram_bar_access(self, offset: int, data: bytes | None, count: int) -> bytes | None:
        return self.gpu.vram_bar_access(offset, data, count)

    def _msix_bar_access(self, offset: int, data: bytes | None, count: int) -> bytes | None:
        return bytes(count) if data is None else None

    def _dma_register(self, region: pyvfio.DmaRegion) -> None:
        if region.vaddr is None:
            log.warning("DMA region %#x+%#x has no fd: not accessible to the device",
                        region.iova, region.length)
            return
        self.mem.add(region.iova, region.length, region.vaddr,
                     writable=bool(region.prot & pyvfio.PROT_WRITE))

    def _dma_unregister(self, region: pyvfio.DmaRegion) -> None:
        self.mem.remove(region.iova)

    def _on_quiesce(self) -> bool:
        # libvfio-user is about to change DMA mappings or reset: park the
        # engine between commands; serve() resumes it after the message.
        self.gpu.engine.pause()
        return True

    def _bus_master(self) -> bool:
        return bool(self.config[PCI_COMMAND] & PCI_COMMAND_MASTER)

    def _on_reset(self, kind: int) -> None:
        log.info("reset (%s)", {pyvfio.VFU_RESET_DEVICE: "device",
                                pyvfio.VFU_RESET_LOST_CONN: "client gone",
                                pyvfio.VFU_RESET_PCI_FLR: "FLR"}.get(kind, kind))
        self.gpu.reset()

    def _msix_enabled(self) -> bool:
        return self._msix_cap is not None and bool(
            self.config[self._msix_cap + MSIX_FLAGS_HI] & MSIX_ENABLE_HI)

    def _trigger(self, vector: int) -> bool:
        # Without MSI-X Enable the function has no interrupt to send (it has
        # no INTx pin). It also must not reach libvfio-user: its efds[] table
        # is shared by every IRQ index, so before MSI-X is set up efds[0] is
        # QEMU's ERR notifier (lib/irq.c irqs_set_data_eventfd), and writing
        # it makes QEMU stop the VM ("Unrecoverable error detected").
        if not self._msix_enabled():
            return False
        try:
            self.ctx.irq_trigger(vector)
            return True
        except pyvfio.VfuError as e:
            log.debug("MSI-X vector %d not delivered: %s", vector, e)
            return False

    # ---- event loop ------------------------------------------------------------

    def stop(self) -> None:
        os.write(self._stop_w, b"x")

    def _mmio_pending(self) -> bool:
        """A message waits on the vfio-user socket (the engine stops watching)."""
        return poll_readable(self.ctx.poll_fd, 0)

    def serve(self) -> None:
        self.gpu.engine.mmio_pending = self._mmio_pending
        self.gpu.engine.start()
        if self.control:
            self.control.start()
        log.info("serving hmmgpu %04x:%04x on %s", hw.PCI_VENDOR_ID, hw.PCI_DEVICE_ID,
                 self.socket_path)
        # hot: the driver submitted work, and each message since came within
        # poll_ns of the last: poll before sleeping
        hot = False
        try:
            while True:
                fd = self.ctx.poll_fd
                if hot:
                    hot = poll_readable(fd, self.poll_ns)
                ready, _, _ = select.select([fd, self._stop_r], [], [])
                if self._stop_r in ready:
                    return
                if not self.connected:
                    if self.ctx.attach():
                        self.connected = True
                        log.info("client attached")
                    continue
                try:
                    self.ctx.run()
                    self.gpu.engine.resume()
                    if self.gpu.engine.run_deferred() and self.poll_ns:
                        hot = True
                except pyvfio.VfuError as e:
                    log.info("client detached (%s); waiting for the next one", e.strerror)
                    self.connected = False
                    hot = False
                    self.mem.clear()
                    self.gpu.engine.resume()
        finally:
            self.gpu.engine.stop()
            self.gpu.engine.trace.stop()  # a streamed trace gets its trailer
            if self.control:
                self.control.close()
            self.ctx.destroy()


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    try:
        if text[-1:].upper() in units:
            return int(text[:-1]) * units[text[-1].upper()]
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None


def _peer(text: str) -> tuple[int, str]:
    fabric_id, sep, path = text.partition("=")
    if not sep or not fabric_id.isdigit() or int(fabric_id) > hw.MAX_FABRIC_ID or not path:
        raise argparse.ArgumentTypeError(f"not ID=PATH with ID 0-{hw.MAX_FABRIC_ID}: {text!r}")
    return int(fabric_id), path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hmmgpu device serve",
                                description="Serve one emulated hmmgpu over vfio-user.")
    p.add_argument("--socket", required=True, help="UNIX socket path QEMU connects to")
    p.add_argument("--library", help="path of libvfio-user.so "
                   "(default: $PYVFIO_LIBRARY, else the system's)")
    p.add_argument("--no-msix", action="store_true",
                   help="no MSI-X capability (interrupts are counted, not delivered); QEMU "
                        "11.1 aborts on device_del of a vfio-user device with MSI-X")
    p.add_argument("--log-file", help="log here instead of stderr")
    p.add_argument("--control", help="UNIX socket for trace control (start/stop/mark/dump)")
    p.add_argument("--trace", metavar="FILE", help="record a DMA trace into FILE from the start")
    p.add_argument("--no-sanitize", action="store_true",
                   help="switch the driver sanitizer off (it is on by default)")
    p.add_argument("--vram", type=_size, default=hw.DEFAULT_VRAM_SIZE,
                   help="VRAM size, e.g. 512M or 1G (default 1G)")
    p.add_argument("--no-vram-bar", action="store_true",
                   help="no VRAM BAR (BAR4): the VRAM is device-only and CAPS.VRAM_BAR is 0")
    p.add_argument("--vram-file", metavar="PATH",
                   help="keep the VRAM in this file (created; a peer opens it by this path) "
                        "instead of an anonymous memfd")
    p.add_argument("--fabric-id", type=int, default=0, choices=range(hw.MAX_FABRIC_ID + 1),
                   metavar="N", help="this device's id on the device-to-device fabric (0-15)")
    p.add_argument("--peer", action="append", default=[], type=_peer, metavar="ID=PATH",
                   help="a link to the device with fabric id ID, whose VRAM file is PATH "
                        "(repeatable)")
    p.add_argument("--poll-us", type=int, default=DEFAULT_POLL_US, metavar="US",
                   help="after a message that submitted work, busy-poll for the next one "
                        f"this long before sleeping (default {DEFAULT_POLL_US}; 0: never)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.poll_us < 0:
        p.error(f"--poll-us {args.poll_us}: give 0 or more microseconds")
    logging.basicConfig(
        filename=args.log_file, level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        peers = dict(args.peer)
        if args.fabric_id in peers:
            p.error(f"--peer {args.fabric_id}: that is this device's own --fabric-id")
        server = GpuServer(args.socket, args.library, msix=not args.no_msix,
                           vram_size=args.vram, control=args.control,
                           vram_bar=not args.no_vram_bar, vram_file=args.vram_file,
                           fabric=Fabric(args.fabric_id, peers), poll_us=args.poll_us)
        if args.trace:
            server.gpu.engine.trace.start(args.trace)
        server.gpu.engine.set_sanitizer(not args.no_sanitize)
    except (pyvfio.LibraryNotFound, pyvfio.VfuError, OSError) as e:
        print(f"hmmgpu device: {e}", file=sys.stderr)
        return 1
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: server.stop())
    t = threading.Thread(target=server.serve, name="vfio-user")
    t.start()
    while t.is_alive():
        t.join(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
