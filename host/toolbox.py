"""The trixie toolbox: a Debian root with QEMU 11.1, the Linux 7.3 cloud
kernel and headers, and gcc, made by mmdebstrap (see provision.py).

This module knows how to use it: the guest kernel's version and files, how to
run a build inside it (chroot in a private mount namespace, so nothing stays
mounted on the host), and how to start its QEMU without chroot.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from .errors import SetupError
from .shell import run

QEMU_MIN_VERSION = (10, 1)


class Toolbox:
    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def kernel_version(self) -> str:
        found = sorted((self.root / "boot").glob("vmlinuz-*-cloud-amd64"))
        if not found:
            raise SetupError(f"no cloud kernel in {self.root}/boot: run 'hmmgpu setup'")
        return found[-1].name.removeprefix("vmlinuz-")

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.kernel_version}"

    @property
    def headers(self) -> str:
        """The headers' path inside the toolbox."""
        return f"/usr/src/linux-headers-{self.kernel_version}"

    @property
    def modules_dir(self) -> Path:
        return self.root / "lib" / "modules" / self.kernel_version

    def inside(self, path: Path) -> str:
        """`path` as a build in the toolbox sees it: relative to its root when it
        is inside, else the same path (bound in by chroot(binds=...))."""
        try:
            return "/" + str(path.resolve().relative_to(self.root.resolve()))
        except ValueError:
            return str(path)

    def chroot(self, script: str, logfile: Path, timeout: float = 1800,
               binds: Sequence[Path] = (), ro: Sequence[Path] = ()) -> None:
        """Run a shell script inside the toolbox with /proc, /sys and /dev.
        `binds` (read-write) and `ro` (read-only: a user's kernel tree) are
        host directories outside the toolbox, seen inside at the same path."""
        r = str(self.root)
        mounts = [f"mount -t proc proc {r}/proc", f"mount -t sysfs sys {r}/sys",
                  f"mount --rbind /dev {r}/dev"]
        for p in [*binds, *ro]:
            q = shlex.quote(str(p))
            t = shlex.quote(r + str(p))
            mounts += [f"mkdir -p {t}", f"mount --bind {q} {t}"]
            if p in ro:
                mounts.append(f"mount -o remount,bind,ro {t}")
        mount = " && ".join([*mounts, 'exec chroot ' + r + ' /bin/sh -ec "$1"'])
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LC_ALL": "C.UTF-8"}
        run(isolated(["sh", "-c", mount, "sh", script]), logfile, env=env, timeout=timeout)

    # ---- QEMU -------------------------------------------------------------------

    def qemu_command(self) -> list[str]:
        """The command prefix that starts a QEMU >= 10.1 with vfio-user-pci:
        the host's own when it qualifies, else the toolbox's."""
        host = shutil.which("qemu-system-x86_64")
        if host and qemu_qualifies([host]):
            return [host]
        r = self.root
        qemu = [str(r / "lib64/ld-linux-x86-64.so.2"), "--library-path",
                str(r / "usr/lib/x86_64-linux-gnu"), str(r / "usr/bin/qemu-system-x86_64"),
                "-L", str(r / "usr/share/qemu"), "-L", str(r / "usr/share/seabios")]
        return qemu

    def qemu_env(self) -> dict[str, str]:
        return {"QEMU_MODULE_DIR": str(self.root / "usr/lib/x86_64-linux-gnu/qemu")}


def isolated(cmd: list[str]) -> list[str]:
    """Run `cmd` in its own mount and PID namespace: whatever it mounts (a
    chroot's /proc, /dev, mmdebstrap's binds) vanishes with it, even when
    setup is killed (--kill-child: the namespace's init dies with us)."""
    ns = ["unshare", "-m", "--propagation", "private", "--pid", "--fork", "--kill-child"]
    if os.geteuid() != 0:
        ns.insert(1, "-r")
    return [*ns, *cmd]


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path` in this mount namespace."""
    prefix = str(path.resolve()).rstrip("/") + "/"
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if (point + "/").startswith(prefix):
            out.append(point)
    return out


def safe_rmtree(path: Path) -> None:
    """Remove a tree that a chroot once used, refusing while anything is
    mounted inside it (a bound /dev would take the host's with it)."""
    if not path.exists():
        return
    busy = mounts_under(path)
    if busy:
        raise SetupError(f"{busy[0]} is still mounted: unmount it (umount -R {busy[0]}) "
                         "before hmmgpu removes that tree")
    shutil.rmtree(path)


def qemu_version(cmd: list[str], env: dict[str, str] | None = None) -> tuple[int, int]:
    out = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=30,
                         env={**os.environ, **(env or {})}).stdout
    m = re.search(r"version (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def qemu_qualifies(cmd: list[str]) -> bool:
    try:
        if qemu_version(cmd) < QEMU_MIN_VERSION:
            return False
        out = subprocess.run([*cmd, "-device", "help"], capture_output=True, text=True,
                             timeout=30).stdout
        return "vfio-user-pci" in out
    except (OSError, subprocess.SubprocessError):
        return False
