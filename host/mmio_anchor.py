"""The C anchor for the register round trip (bench/anchor/mmio_anchor.c).

A libvfio-user server in C with hmmgpu's BAR0 shape, built against the
project's libvfio-user and attached to a VM beside the emulated GPU, so the
same guest program can time the same mapped BAR0 load on both.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from ..device import hwdef as hw
from .child import start_serving
from .child import stop as stop_child
from .errors import SetupError
from .paths import REPO, Paths

SOURCE = REPO / "bench" / "anchor" / "mmio_anchor.c"
DEVICE_ID = hw.PCI_DEVICE_ID + 1  # not hmmgpu's: no driver binds it
ROOT_PORT_CHASSIS = 16  # clear of the GPUs' root ports (chassis 1..n)


def build(paths: Paths, dest: Path) -> Path:
    """Compile the anchor into dest; returns the binary."""
    lib = paths.libvfio_user
    binary = dest / "mmio_anchor"
    cmd = ["gcc", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Werror",
           "-I", str(paths.libvfio_user_src / "include"), str(SOURCE), "-o", str(binary),
           f"-L{lib.parent}", f"-l:{lib.name}", f"-Wl,-rpath,{lib.parent}"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        log = dest / "mmio_anchor-build.log"
        log.write_text(" ".join(cmd) + "\n" + res.stdout + res.stderr)
        raise SetupError("the C MMIO anchor did not build (is `hmmgpu setup` done?)", log)
    return binary


class AnchorServer:
    """One running anchor server; a context manager."""

    def __init__(self, binary: Path, socket: Path, log: Path,
                 mapped_bar: int | None = hw.VRAM_BAR) -> None:
        """mapped_bar: a BAR the client maps, as hmmgpu's VRAM BAR (None: no
        such BAR, and QEMU then posts BAR0 writes; see mmio_anchor.c)."""
        self.socket, self.log = socket, log
        cmd = [str(binary), str(socket), f"{hw.PCI_VENDOR_ID:04x}", f"{DEVICE_ID:04x}",
               str(hw.BAR0_SIZE)]
        if mapped_bar is not None:
            cmd.append(str(mapped_bar))
        self.proc = start_serving(cmd, socket, log, "the C MMIO anchor", 10)

    def qemu_args(self) -> list[str]:
        """Attach it behind its own PCIe root port, as the GPUs are."""
        dev = {"driver": "vfio-user-pci", "id": "anchor", "bus": "rp_anchor",
               "socket": {"path": str(self.socket), "type": "unix"}}
        return ["-device", f"pcie-root-port,id=rp_anchor,chassis={ROOT_PORT_CHASSIS},"
                           f"slot={ROOT_PORT_CHASSIS}",
                "-device", json.dumps(dev)]

    def close(self) -> None:
        stop_child(self.proc)

    def __enter__(self) -> AnchorServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
