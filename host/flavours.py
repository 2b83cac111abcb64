"""Other Debian flavours of the pinned kernel, for booting through --kernel.

`hmmgpu setup --debian-kernel amd64` fetches the generic flavour of the same
upload as the pinned cloud kernel (same version, so pinned by it), unpacks
image, modules and headers into the toolbox without installing them (no
initramfs, no maintainer scripts), and prints the --kernel/--modules pair:

    --kernel $CACHE/toolbox/usr/lib/modules/7.3.4+deb13-amd64/vmlinuz
    --modules $CACHE/toolbox/usr/lib/modules/7.3.4+deb13-amd64
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import CommandFailed, SetupError
from .paths import Paths
from .pins import Versions
from .shell import run
from .toolbox import Toolbox

PARTS = ["linux-base", "linux-binary", "linux-modules", "linux-headers"]


def flavour_release(tb: Toolbox, flavour: str) -> str:
    if not re.fullmatch(r"[a-z0-9-]+", flavour):
        raise SetupError(f"--debian-kernel {flavour!r}: a flavour is a Debian kernel flavour "
                         "name such as amd64 or rt-amd64")
    return tb.kernel_version.removesuffix("-cloud-amd64") + f"-{flavour}"


def fetch_flavour(paths: Paths, flavour: str) -> tuple[Path, Path]:
    """Unpack the flavour into the toolbox (once); returns (vmlinuz, modules dir)."""
    tb = Toolbox(paths.toolbox)
    release = flavour_release(tb, flavour)
    mods = paths.toolbox / "usr" / "lib" / "modules" / release
    image = mods / "vmlinuz"
    headers = paths.toolbox / "usr" / "src" / f"linux-headers-{release}"
    if image.exists() and (mods / "modules.order").exists() and (headers / "Makefile").exists():
        return image, mods
    cloud = f"linux-image-{tb.kernel_version}"
    version = Versions(paths.versions).data.get(cloud, {}).get("installed", "")
    version = version.split()[-1] if version else ""
    if not version:
        raise SetupError(f"no installed version of {cloud} recorded in {paths.versions}: "
                         "run 'hmmgpu setup' first")
    log = paths.cache / "logs" / f"setup-kernel-{flavour}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    dl = paths.toolbox / "build" / f"dl-{flavour}"
    specs = " ".join(f"'{p}-{release}={version}'" for p in PARTS)
    print(f"[hmmgpu setup] fetching Debian's {release} {version} (log: {log})", flush=True)
    try:
        tb.chroot(f"rm -rf /build/dl-{flavour} && mkdir -p /build/dl-{flavour} && "
                  f"cd /build/dl-{flavour} && apt-get download {specs}", log)
        for deb in sorted(dl.glob("*.deb")):
            run(["dpkg-deb", "-x", deb, paths.toolbox], log)
    except CommandFailed as e:
        raise SetupError(f"Debian's {release} {version} could not be fetched (is the flavour "
                         f"name right? is the archive reachable?)", log) from e
    run(["rm", "-rf", dl], log)
    if not image.exists():
        raise SetupError(f"{image} missing after unpacking {release}", log)
    return image, mods
