"""Where hmmgpu keeps what it provisions and what its runs produce.

Everything lives under one cache directory outside the repository:
$HMMGPU_CACHE, else $XDG_CACHE_HOME/hmmgpu, else ~/.cache/hmmgpu.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Paths:
    cache: Path

    @classmethod
    def default(cls) -> Paths:
        env = os.environ.get("HMMGPU_CACHE")
        if env:
            return cls(Path(env).absolute())
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = Path(xdg) if xdg else Path.home() / ".cache"
        return cls(base / "hmmgpu")

    # provisioning products
    @property
    def toolbox(self) -> Path:
        return self.cache / "toolbox"

    @property
    def sources(self) -> Path:
        return self.cache / "src"

    @property
    def libvfio_user_src(self) -> Path:
        return self.sources / "libvfio-user"

    @property
    def libvfio_user_build(self) -> Path:
        return self.cache / "libvfio-user-build"

    @property
    def libvfio_user(self) -> Path:
        return self.libvfio_user_build / "lib" / "libvfio-user.so.0"

    @property
    def gpio_sample(self) -> Path:
        return self.libvfio_user_build / "samples" / "gpio-pci-idio-16"

    @property
    def linux_src(self) -> Path:
        return self.sources / "linux"

    @property
    def checkpatch(self) -> Path:
        return self.linux_src / "scripts" / "checkpatch.pl"

    @property
    def qemu_src(self) -> Path:
        return self.sources / "qemu"

    @property
    def qemu_plugin(self) -> Path:
        """The TCG plugin that records guest CPU accesses to the GPU BARs."""
        return self.cache / "qemu-plugin" / "hmmgpu_mmio.so"

    @property
    def artifacts(self) -> Path:
        """Guest-side build products: modules, static test binaries."""
        return self.cache / "guest"

    @property
    def image(self) -> Path:
        return self.cache / "image"

    @property
    def versions(self) -> Path:
        """What setup installed, against hmmgpu.lock (host/pins.py)."""
        return self.cache / "versions.json"

    @property
    def stamps(self) -> Path:
        return self.cache / "stamps"

    @property
    def runs(self) -> Path:
        """Per-run logs, consoles, results."""
        return self.cache / "runs"

    @property
    def lock(self) -> Path:
        return self.cache / "setup.lock"
