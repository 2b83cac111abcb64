"""The guest image: a busybox initramfs with dropbear, built from the toolbox.

Two cpio archives are concatenated into the initrd (the kernel unpacks them in
turn): the base image (busybox, dropbear and its libraries, /init), built once
by provisioning and the same for every kernel, and a per-lab overlay with what
depends on the kernel and the run: the network modules /init loads (when that
kernel has them as modules), the SSH key, and the guest binaries.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

from .errors import SetupError
from .toolbox import Toolbox

DROPBEAR_LIBS = ["libtomcrypt.so.1", "libtommath.so.1", "libz.so.1", "libcrypt.so.1",
                 "libc.so.6", "libgmp.so.10"]
GUEST_BIN_DIR = "/opt/hmmgpu"  # where the guest finds modules and test binaries


class Cpio:
    """A writer for the "newc" cpio format the kernel's initramfs unpacker reads."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.ino = 1
        self.dirs: set[str] = set()

    def _entry(self, name: str, mode: int, body: bytes = b"") -> None:
        name = name.lstrip("/")
        fields = [self.ino, mode, 0, 0, 1, 0, len(body), 0, 0, 0, 0, len(name) + 1, 0]
        self.ino += 1
        hdr = b"070701" + b"".join(f"{v:08x}".encode() for v in fields)
        self.data += hdr + name.encode() + b"\0"
        self.data += b"\0" * (-len(self.data) % 4)
        self.data += body
        self.data += b"\0" * (-len(self.data) % 4)

    def mkdir(self, path: str) -> None:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d and d not in self.dirs:
                self.dirs.add(d)
                self._entry(d, stat.S_IFDIR | 0o755)

    def file(self, path: str, body: bytes, mode: int = 0o644) -> None:
        self.mkdir(os.path.dirname(path))
        self._entry(path, stat.S_IFREG | mode, body)

    def symlink(self, path: str, target: str) -> None:
        self.mkdir(os.path.dirname(path))
        self._entry(path, stat.S_IFLNK | 0o777, target.encode())

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return bytes(self.data)


def build_base_image(tb: Toolbox, image_src: Path, out_dir: Path, logfile: Path) -> None:
    root = tb.root
    c = Cpio()
    for d in ["dev", "proc", "sys", "tmp", "run", "root/.ssh", "etc/dropbear", "var/log",
              "usr/bin", "usr/sbin", "lib64", "usr/lib/x86_64-linux-gnu", "mnt"]:
        c.mkdir(d)
    c.symlink("/bin", "usr/bin")
    c.symlink("/sbin", "usr/sbin")
    c.symlink("/lib", "usr/lib")
    busybox = root / "usr/bin/busybox"
    c.file("/usr/bin/busybox", busybox.read_bytes(), 0o755)
    applets = subprocess.run([busybox, "--list-full"], capture_output=True, text=True,
                             check=True).stdout.split()
    for a in applets:
        name = "/" + a
        for old, new in (("/bin/", "/usr/bin/"), ("/sbin/", "/usr/sbin/")):
            if name.startswith(old):  # /bin and /sbin are symlinks into /usr
                name = new + name.removeprefix(old)
        if os.path.basename(name) != "busybox":
            c.symlink(name, "/usr/bin/busybox")
    c.file("/usr/sbin/dropbear", (root / "usr/sbin/dropbear").read_bytes(), 0o755)
    c.file("/lib64/ld-linux-x86-64.so.2",
           (root / "lib64/ld-linux-x86-64.so.2").resolve().read_bytes(), 0o755)
    for lib in DROPBEAR_LIBS:
        src = root / "usr/lib/x86_64-linux-gnu" / lib
        if not src.exists():
            raise SetupError(f"dropbear needs {lib}, missing from the toolbox", logfile)
        c.file(f"/usr/lib/x86_64-linux-gnu/{lib}", src.resolve().read_bytes(), 0o755)
    c.file("/etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    c.file("/etc/shadow", b"root:*:19000:0:99999:7:::\n", 0o600)
    c.file("/etc/group", b"root:x:0:\n")
    c.file("/etc/shells", b"/bin/sh\n")
    c.file("/etc/hostname", b"hmmgpu-guest\n")
    for f in sorted(image_src.iterdir()):
        mode = 0o755 if os.access(f, os.X_OK) else 0o644
        c.file(f"/{f.name}" if f.name == "init" else f"/etc/hmmgpu/{f.name}",
               f.read_bytes(), mode)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "base.cpio.tmp"
    tmp.write_bytes(c.finish())
    tmp.rename(out_dir / "base.cpio")
    with open(logfile, "a") as f:
        f.write(f"base image: {len(applets)} busybox applets, "
                f"{(out_dir / 'base.cpio').stat().st_size} bytes\n")


def write_initrd(base: Path, dest: Path, authorized_key: str, binaries: dict[str, Path],
                 boot_modules: list[Path] = (), files: dict[str, bytes] | None = None) -> Path:
    """The lab's initrd: the base image followed by an overlay with the boot
    modules, the SSH key, the guest binaries (name -> file) and `files`
    (guest path -> contents)."""
    from .kernel import read_module
    c = Cpio()
    c.file("/root/.ssh/authorized_keys", authorized_key.encode(), 0o600)
    for m in boot_modules:
        name = m.name.split(".ko")[0]
        c.file(f"/usr/lib/boot-modules/{name}.ko", read_module(m))
    for name, f in sorted(binaries.items()):
        c.file(f"{GUEST_BIN_DIR}/{name}", f.read_bytes(), 0o755)
    for path, body in sorted((files or {}).items()):
        c.file(path, body, 0o755)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as out, open(base, "rb") as b:
        shutil.copyfileobj(b, out)
        out.write(c.finish())
    return dest
