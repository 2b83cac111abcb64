"""The guest kernel a lab boots.

Three kinds, one shape:
- the pinned Debian cloud kernel in the toolbox (the default);
- a kernel build tree (`--kernel ~/linux`): its bzImage, .config and
  Module.symvers; hmmgpu.ko is built against it, its selftests are what runs;
- a bzImage plus its modules directory (`--kernel bzImage --modules
  /lib/modules/<release>`), whose `build` link is where modules are built.

Nothing here writes into a user's tree: everything built for a kernel goes
to $CACHE/kernels/ (host/kbuild.py).
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import re
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import HmmgpuError
from .kconfig import parse_config
from .paths import Paths
from .toolbox import Toolbox

# loaded by the guest's /init when they are modules (not built in), in this
# order, with the option that builds each; qemu_fw_cfg hands the guest's
# vmcoreinfo to QEMU, so that dump-guest-memory dumps carry it (drgn, crash)
BOOT_MODULES = {"failover": "FAILOVER", "net_failover": "NET_FAILOVER",
                "virtio_net": "VIRTIO_NET", "qemu_fw_cfg": "FW_CFG_SYSFS"}
OPTIONAL_BOOT_MODULES = {"qemu_fw_cfg"}
MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")


@dataclass
class GuestKernel:
    image: Path
    release: str
    config: dict[str, str]
    config_path: Path | None
    modules: Path | None  # a /lib/modules/<release> directory
    build: Path | None  # the directory `make -C` builds external modules in
    tree: Path | None = None  # a source tree: selftests, vmlinux, in-tree modules
    default: bool = False

    @property
    def vmlinux(self) -> Path | None:
        """The ELF with debug info, for gdb, drgn and crash (Debian's headers
        carry a vmlinux too, but with BTF only)."""
        for cand in [self.tree / "vmlinux" if self.tree else None,
                     self.build / "vmlinux" if self.build else None]:
            if cand and cand.is_file() and ".debug_info" in elf_section_names(cand):
                return cand
        return None

    @property
    def label(self) -> str:
        return f"Linux {self.release}" + ("" if self.default else f" ({self.tree or self.image})")

    def describe(self) -> dict[str, str]:
        """What a run records about its kernel (kernel.json in the run directory)."""
        vm = self.vmlinux
        return {"release": self.release, "image": str(self.image),
                "tree": str(self.tree or ""), "modules": str(self.modules or ""),
                "vmlinux": str(vm or ""), "default": str(self.default).lower()}

    def key(self) -> str:
        """Changes when the kernel is rebuilt: keys what is built for it."""
        h = hashlib.sha256(self.release.encode())
        for p in [self.image, self.config_path,
                  self.build / "Module.symvers" if self.build else None]:
            if p and p.exists():
                st = p.stat()
                h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()[:12]

    def find_module(self, name: str) -> Path | None:
        """A module of this kernel by name (virtio_net), compressed or not."""
        roots = [r for r in (self.modules, self.tree) if r]
        for root in roots:
            order = root / "modules.order"
            if order.exists():  # a tree lists its modules: no walk over the sources
                for line in order.read_text().splitlines():
                    rel = line.strip().removeprefix("kernel/")
                    stem = Path(rel).name.removesuffix(".o").removesuffix(".ko")
                    if stem == name:
                        for base in (root, root / "kernel"):
                            for suf in MODULE_SUFFIXES:
                                p = base / (str(Path(rel).with_suffix("")) + suf)
                                if p.exists():
                                    return p
            kdir = root / "kernel"
            if kdir.is_dir():
                for suf in MODULE_SUFFIXES:
                    found = sorted(kdir.rglob(name + suf))
                    if found:
                        return found[0]
        return None

    def boot_modules(self) -> list[Path]:
        """The network modules the guest needs at boot that are not built in,
        in load order."""
        out = []
        for name, opt in BOOT_MODULES.items():
            if self.config.get(opt) == "m":
                p = self.find_module(name)
                if p is None and name in OPTIONAL_BOOT_MODULES:
                    continue
                if p is None:
                    raise HmmgpuError(f"CONFIG_{opt}=m but {name}.ko is not in "
                                      f"{self.modules or self.tree}: build the modules "
                                      "(make modules) or pass --modules DIR")
                out.append(p)
        return out


def read_module(path: Path) -> bytes:
    """A module's ELF bytes, decompressed (.xz, .gz; .zst through zstd(1))."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        try:
            return subprocess.run(["zstd", "-dc", str(path)], capture_output=True,
                                  check=True).stdout
        except (OSError, subprocess.CalledProcessError) as e:
            raise HmmgpuError(f"{path} is zstd-compressed and zstd could not unpack it "
                              "(apt-get install zstd)") from e
    return data


def modinfo(data: bytes, what: Path) -> dict[str, str]:
    """The .modinfo section of a module's ELF: {"vermagic": ..., "name": ...}."""
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise HmmgpuError(f"{what} is not a 64-bit ELF kernel module")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3a)

    def section(i: int) -> tuple[int, int, int]:
        name, _t, _f, _a, off, size = struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
        return name, off, size

    try:
        _n, stroff, _s = section(shstrndx)
        for i in range(shnum):
            name, off, size = section(i)
            if data[stroff + name:].split(b"\0", 1)[0] == b".modinfo":
                out = {}
                for item in data[off:off + size].split(b"\0"):
                    k, _, v = item.decode(errors="replace").partition("=")
                    if k:
                        out.setdefault(k, v)
                return out
    except struct.error:
        pass
    raise HmmgpuError(f"{what} has no .modinfo section: not a kernel module")


def elf_section_names(path: Path) -> set[str]:
    """Section names of a 64-bit little-endian ELF file, reading only its
    headers (a debug vmlinux is hundreds of MiB)."""
    try:
        with open(path, "rb") as f:
            hdr = f.read(64)
            if hdr[:4] != b"\x7fELF" or hdr[4] != 2:
                return set()
            shoff, = struct.unpack_from("<Q", hdr, 0x28)
            shentsize, shnum, shstrndx = struct.unpack_from("<HHH", hdr, 0x3a)
            f.seek(shoff)
            table = f.read(shentsize * shnum)
            _n, _t, _f, _a, stroff, strsize = struct.unpack_from("<IIQQQQ", table,
                                                                 shstrndx * shentsize)
            f.seek(stroff)
            names = f.read(strsize)
    except (OSError, struct.error):
        return set()
    out = set()
    for i in range(shnum):
        name, = struct.unpack_from("<I", table, i * shentsize)
        out.add(names[name:].split(b"\0", 1)[0].decode(errors="replace"))
    return out


def elf_symbols(data: bytes) -> dict[str, tuple[str, int, int]]:
    """A relocatable ELF's (a module's) symbols: name -> (section, offset in
    it, size). With the section addresses in /sys/module/<name>/sections,
    that places a module variable in guest memory (what gdb's
    add-symbol-file does)."""
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3a)
    secs = [struct.unpack_from("<IIQQQQII", data, shoff + i * shentsize) for i in range(shnum)]

    def cstr(off: int) -> str:
        return data[off:data.index(b"\0", off)].decode(errors="replace")

    shstr = secs[shstrndx][4]
    out = {}
    for _name, typ, _f, _a, off, size, link, _i in secs:
        if typ != 2:  # SHT_SYMTAB
            continue
        strtab = secs[link][4]
        for j in range(0, size, 24):
            st_name, _info, _other, shndx, value, sz = struct.unpack_from("<IBBHQQ", data, off + j)
            if st_name and 0 < shndx < shnum:
                out[cstr(strtab + st_name)] = (cstr(shstr + secs[shndx][0]), value, sz)
    return out


def check_module_for(kernel: GuestKernel, path: Path) -> str:
    """Refuse a module built for another kernel; returns its name."""
    if not path.is_file():
        raise HmmgpuError(f"no such module: {path}")
    info = modinfo(read_module(path), path)
    built_for = info.get("vermagic", "").split(" ")[0]
    if built_for != kernel.release:
        raise HmmgpuError(f"{path} was built for {built_for or 'an unknown kernel'} (vermagic)"
                          f", the guest runs {kernel.release}: rebuild it with "
                          f"make -C {kernel.build or '<kernel build dir>'} M=<your module dir>")
    return info.get("name") or path.name.split(".")[0]


def bzimage_release(path: Path) -> str:
    """The release string in a bzImage's setup header (boot protocol >= 2.0)."""
    with open(path, "rb") as f:
        head = f.read(0x10000)  # the version string sits after the setup code
    if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
        raise HmmgpuError(f"{path} is not a bzImage (no 'HdrS' boot header): pass a kernel "
                          "build tree or its arch/x86/boot/bzImage")
    ptr, = struct.unpack_from("<H", head, 0x20e)
    start = ptr + 0x200
    return head[start:start + 256].split(b" ", 1)[0].split(b"\0", 1)[0].decode()


def default_kernel(paths: Paths) -> GuestKernel:
    tb = Toolbox(paths.toolbox)
    rel = tb.kernel_version
    cfg = paths.toolbox / "boot" / f"config-{rel}"
    return GuestKernel(tb.vmlinuz, rel, parse_config(cfg.read_text()), cfg, tb.modules_dir,
                       paths.toolbox / tb.headers.lstrip("/"), default=True)


def _resolve_build_link(modules: Path) -> Path | None:
    """modules/build, also when it is an absolute link meant for another root
    (…/root/lib/modules/<rel>/build -> /usr/src/linux-headers-<rel>)."""
    link = modules / "build"
    if not link.is_symlink() and not link.is_dir():
        return None
    if link.is_dir():
        return link.resolve()
    target = Path(os.readlink(link))
    if target.is_absolute() and len(modules.parts) > 3 and modules.parent.name == "modules":
        root = modules.parent.parent.parent  # <root>/lib/modules/<rel>
        cand = root / target.relative_to("/")
        if cand.is_dir():
            return cand
    return None


def resolve_kernel(paths: Paths, kernel: str | None, modules: str | None) -> GuestKernel:
    """--kernel/--modules as the CLI gets them, or the default kernel."""
    if kernel is None:
        if modules:
            raise HmmgpuError("--modules goes with --kernel (a bzImage or a kernel tree)")
        return default_kernel(paths)
    path = Path(kernel).expanduser().absolute()
    mods = Path(modules).expanduser().absolute() if modules else None
    if mods is not None and not mods.is_dir():
        raise HmmgpuError(f"--modules {mods}: no such directory")
    if path.is_dir():
        return _tree(path, mods)
    if path.is_file():
        return _image(path, mods)
    raise HmmgpuError(f"--kernel {path}: no such file or directory")


def _tree(tree: Path, mods: Path | None) -> GuestKernel:
    if not (tree / "Makefile").exists() or not (tree / "Kconfig").exists():
        raise HmmgpuError(f"--kernel {tree}: not a kernel tree (no Makefile and Kconfig) "
                          "nor a bzImage")
    cfg = tree / ".config"
    if not cfg.exists():
        raise HmmgpuError(f"--kernel {tree}: no .config: configure it first (make defconfig; "
                          "then merge 'hmmgpu kconfig')")
    image = tree / "arch" / "x86" / "boot" / "bzImage"
    release_file = tree / "include" / "config" / "kernel.release"
    if not image.exists() or not release_file.exists():
        raise HmmgpuError(f"--kernel {tree}: not built yet (no arch/x86/boot/bzImage): run "
                          f"make -C {tree} -j$(nproc)")
    config = parse_config(cfg.read_text())
    if config.get("MODULES") == "y" and not (tree / "Module.symvers").exists():
        raise HmmgpuError(f"--kernel {tree}: no Module.symvers, so no module can be built "
                          f"against it: run make -C {tree} modules")
    return GuestKernel(image, release_file.read_text().strip(), config, cfg, mods, tree, tree)


def _image(image: Path, mods: Path | None) -> GuestKernel:
    release = bzimage_release(image)
    if mods is None:
        raise HmmgpuError(f"--kernel {image}: a bzImage needs --modules DIR (its "
                          f"/lib/modules/{release}, whose build/ link builds hmmgpu.ko)")
    if mods.name != release:
        raise HmmgpuError(f"--modules {mods} is not the modules directory of {release} "
                          f"(that is …/lib/modules/{release})")
    build = _resolve_build_link(mods)
    if build is None:
        raise HmmgpuError(f"--modules {mods}: no build/ link to the kernel's headers or tree,"
                          " so hmmgpu.ko cannot be built for it")
    cands = [build / ".config", mods.parent.parent.parent / "boot" / f"config-{release}"]
    cfg = next((c for c in cands if c.exists()), None)
    if cfg is None:
        raise HmmgpuError(f"no .config for {release} (looked in {build} and /boot)")
    if not re.fullmatch(r"[\w.+~-]+", release):
        raise HmmgpuError(f"{image}: unreadable release string {release!r}")
    return GuestKernel(image, release, parse_config(cfg.read_text()), cfg, mods, build)
