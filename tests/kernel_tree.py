"""A kernel tree built from the pinned linux-source with `hmmgpu kconfig
--debug`, for the tests marked kernel_build (and for a user who wants the
same: `python tests/kernel_tree.py DIR`).

The tree lives outside the toolbox and is built inside it (trixie's gcc),
with x86_64_defconfig plus the lab's debug fragment merged by the kernel's
own scripts/kconfig/merge_config.sh.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from hmmgpu.host.kconfig import DEBUG, LAB, fragment, missing, parse_config
from hmmgpu.host.paths import Paths
from hmmgpu.host.provision import Provisioner
from hmmgpu.host.toolbox import Toolbox

# what a kernel build needs beyond the toolbox's module builds
BUILD_PACKAGES = ["flex", "bison", "bc", "libelf-dev", "libssl-dev", "cpio", "python3"]
# BTF needs pahole; the debug kernel is for gdb, drgn and KASAN, not BPF
EXTRA = "# CONFIG_DEBUG_INFO_BTF is not set\nCONFIG_DEBUG_INFO_DWARF5=y\n"


def build_debug_tree(paths: Paths, dest: Path, jobs: int = 2) -> dict[str, float]:
    """Unpack the pinned linux-source into `dest` and build it; returns the
    step timings in seconds (also written to dest/hmmgpu-build.json)."""
    Provisioner(paths).ensure()
    tb = Toolbox(paths.toolbox)
    log = dest.parent / f"{dest.name}.log"
    times: dict[str, float] = {}
    spec = json.loads(paths.versions.read_text())["linux-source-7.3"]["spec"]
    majmin = spec.split("=")[0].removeprefix("linux-source-")
    dest.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    tb.chroot("DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "
              + " ".join(BUILD_PACKAGES), log)
    times["packages"] = time.monotonic() - t0
    t0 = time.monotonic()
    frag = dest.parent / f"{dest.name}.config"
    frag.write_text(fragment(debug=True) + EXTRA)
    d = str(dest)
    tb.chroot(f"""
rm -rf {d} /build/dl-src && mkdir -p /build/dl-src && cd /build/dl-src
apt-get download '{spec}'
dpkg-deb --fsys-tarfile linux-source-*.deb | tar -xO ./usr/src/linux-source-{majmin}.tar.xz \\
    | tar -xJ -C {dest.parent}
mv {dest.parent}/linux-source-{majmin} {d}
rm -rf /build/dl-src
""", log, binds=[dest.parent], timeout=1800)
    times["unpack"] = time.monotonic() - t0
    t0 = time.monotonic()
    tb.chroot(f"""
cd {d}
make x86_64_defconfig
scripts/kconfig/merge_config.sh -m .config {frag}
make olddefconfig
""", log, binds=[dest.parent])
    times["config"] = time.monotonic() - t0
    config = parse_config((dest / ".config").read_text())
    gone = missing(config, LAB + DEBUG, required_only=False)
    if gone:  # an option the fragment asks for that Kconfig dropped (a missing dependency)
        raise AssertionError("not in the merged config: " + ", ".join(o.name for o in gone))
    t0 = time.monotonic()
    tb.chroot(f"cd {d} && make -j{jobs} bzImage modules", log, binds=[dest.parent],
              timeout=4 * 3600)
    times["build"] = time.monotonic() - t0
    (dest / "hmmgpu-build.json").write_text(json.dumps(times))
    return times


if __name__ == "__main__":
    out = Path(sys.argv[1]).absolute()
    print(build_debug_tree(Paths.default(), out, int(sys.argv[2]) if len(sys.argv) > 2 else 2))
