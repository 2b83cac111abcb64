"""Building the guest side for a kernel: hmmgpu.ko, hmmgpu_oops.ko and
test_hmm.ko against that kernel's build directory, and hmm-tests from that
kernel's own selftests when it is a source tree (so a patched test is what
runs).

Everything is built out of tree into the cache; a user's tree is bound into
the toolbox read-only, so a build that tried to write there would fail
rather than modify it.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import subprocess
import time
from pathlib import Path

from .errors import CommandFailed, HmmgpuError
from .kernel import GuestKernel
from .paths import REPO, Paths
from .shell import run
from .toolbox import Toolbox

GUEST_TOOLS = ["mmio_bench", "gpu_smoke", "fault_bench", "gpu_atomic", "san_bugs",
               "mirror_threads", "mirror_remove", "mirror_reap", "hmm_stress"]
MODULE_DIRS = ["driver", "testmod", "gup_test"]  # under guest/
SELFTEST_MM = "tools/testing/selftests/mm"


def say(msg: str) -> None:
    print(f"[hmmgpu build] {msg}", flush=True)


def tree_hash(path: Path) -> str:
    """Sources under `path` (build products and dot files left out)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        if p.suffix in (".o", ".ko", ".cmd", ".so") or p.name.startswith("."):
            continue
        h.update(str(p.relative_to(path.parent)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def prepare_sources(work: Path, src: Path, module_root: Path = REPO / "guest") -> None:
    """Our module sources and the kernel's test_hmm.c, copied into `work`; the
    dmirror ABI (test_hmm_uapi.h) comes from `src`, the kernel's own source,
    never from us."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copytree(module_root, work / "guest",
                    ignore=shutil.ignore_patterns("*.o", "*.ko", "*.mod*", ".*.cmd"))
    shutil.copy(src / "lib" / "test_hmm_uapi.h", work / "guest" / "driver" / "test_hmm_uapi.h")
    ref = work / "test_hmm"
    ref.mkdir()
    for f in ["test_hmm.c", "test_hmm_uapi.h"]:
        shutil.copy(src / "lib" / f, ref / f)
    (ref / "Kbuild").write_text("obj-m := test_hmm.o\n")
    for f in ["gup_test.c", "gup_test.h"]:  # included by guest/gup_test's module
        shutil.copy(src / "mm" / f, work / "guest" / "gup_test" / f)


def modules_script(kdir: str, work: str) -> str:
    """Our modules and test_hmm.ko, prepared in `work`, against `kdir`."""
    dirs = [f"{work}/guest/{d}" for d in MODULE_DIRS] + [f"{work}/test_hmm"]
    return "".join(f"make -C {kdir} M={d} modules W=1\n" for d in dirs)


def hmm_tests_script(src: str, out: str) -> str:
    """hmm-tests, static, from `src`'s selftests (read in place, written to `out`)."""
    mm = f"{src}/{SELFTEST_MM}"
    return f"""mkdir -p {out}
cd {mm}
gcc -static -O2 -I{src} -I{src}/tools/testing/selftests -U_FORTIFY_SOURCE -no-pie \\
    hmm-tests.c vm_util.c hugepage_settings.c -lrt -lpthread -lm -o {out}/hmm-tests
"""


def tools_script(work: str, out: str) -> str:
    return f"""for tool in {' '.join(GUEST_TOOLS)}; do
    gcc -static -O2 -Wall -Werror -I{work}/guest/include -I{work}/guest/driver \\
        -o {out}/$tool {work}/guest/tools/$tool.c
done
"""


@functools.cache
def host_gcc() -> str:
    """The host gcc's version line (asked once: the edit loop builds often)."""
    try:
        out = subprocess.run(["gcc", "--version"], capture_output=True, text=True,
                             timeout=30).stdout.splitlines()
    except OSError:
        return ""
    return out[0].strip() if out else ""


def host_compiler_matches(kernel: GuestKernel) -> bool:
    """Was the kernel built with this host's gcc (CONFIG_CC_VERSION_TEXT)?"""
    want = kernel.config.get("CC_VERSION_TEXT", "").strip('"')
    return bool(want) and host_gcc() == want


def source_root(d: Path) -> Path:
    """What a module directory's build may read: its git work tree, else its
    parent (a Kbuild's -I$(src)/../include)."""
    for p in [d, *d.parents]:
        if (p / ".git").exists():
            return p
    return d.parent


def make_modules(tb: Toolbox, kernel: GuestKernel, dirs: list[Path], log: Path,
                 binds: list[Path], out: Path | None = None) -> None:
    """`make -C <kernel build dir> M=<dir> modules` for each dir: on the host
    when the kernel was built with the host's gcc, else in the toolbox (the
    kernel's tree bound read-only, `binds` read-write). With `out`, the
    objects go there (kbuild's MO=, Linux >= 6.13) and the sources, bound
    read-only, stay untouched."""
    if kernel.build is None:
        raise HmmgpuError(f"no build directory for {kernel.release}")
    kdir = kernel.build
    mo = [f"MO={tb.inside(out)}"] if out else []
    outside = [p for p in {kernel.build, kernel.tree} if p and tb.inside(p) == str(p)]
    if out:  # relative includes may reach up: bind the source's repository
        outside += [source_root(d) for d in dirs if tb.inside(d) == str(d)]
    if tb.inside(kdir) == str(kdir) and host_compiler_matches(kernel):
        for d in dirs:
            run(["make", "-C", kdir, f"M={d}", *mo, "modules", "W=1"], log, timeout=900)
        return
    script = "".join(f"make -C {tb.inside(kdir)} M={tb.inside(d)} {' '.join(mo)} modules W=1\n"
                     for d in dirs)
    tb.chroot(script, log, binds=[b for b in binds if tb.inside(b) == str(b)], ro=outside)


class KernelBuild:
    """The guest side built for one non-default kernel, in
    $CACHE/kernels/<release>-<key>/guest (rebuilt when the kernel or guest/
    changes)."""

    def __init__(self, paths: Paths, kernel: GuestKernel) -> None:
        self.paths = paths
        self.kernel = kernel
        self.tb = Toolbox(paths.toolbox)
        self.dir = paths.cache / "kernels" / f"{kernel.release}-{kernel.key()}"
        self.out = self.dir / "guest"
        self.log = self.dir / "build.log"

    @property
    def src(self) -> Path:
        """Where test_hmm.c and the dmirror ABI come from: the tree, else the
        pinned linux-source."""
        t = self.kernel.tree
        return t if t and (t / "lib" / "test_hmm.c").exists() else self.paths.linux_src

    @property
    def tree_selftests(self) -> bool:
        t = self.kernel.tree
        return bool(t and (t / SELFTEST_MM / "hmm-tests.c").exists())

    def key(self) -> str:
        parts = [self.kernel.key(), tree_hash(REPO / "guest"), str(self.src)]
        if self.tree_selftests:
            parts.append(tree_hash(self.kernel.tree / SELFTEST_MM))
            parts.append(tree_hash(self.kernel.tree / "lib" / "test_hmm.c"))
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]

    def ensure(self) -> Path:
        """Build what is stale; returns the directory of guest binaries."""
        stamp = self.dir / "key"
        key = self.key()
        if stamp.exists() and stamp.read_text() == key and self.out.is_dir():
            return self.out
        stamp.unlink(missing_ok=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log.write_text("")
        say(f"building hmmgpu.ko, test_hmm.ko{', hmm-tests' if self.tree_selftests else ''}"
            f" for {self.kernel.release} (log: {self.log})")
        t0 = time.monotonic()
        try:
            self._build()
        except CommandFailed as e:
            raise HmmgpuError(f"building the guest side for {self.kernel.release} failed: "
                              f"{str(e).splitlines()[0]}", self.log) from None
        stamp.write_text(key)
        say(f"built for {self.kernel.release} in {time.monotonic() - t0:.0f} s: "
            + ", ".join(sorted(p.name for p in self.out.iterdir())))
        return self.out

    def _build(self) -> None:
        k = self.kernel
        work = self.dir / "work"
        prepare_sources(work, self.src)
        own_test_hmm = k.find_module("test_hmm") if k.config.get("TEST_HMM") == "m" else None
        shutil.rmtree(self.out, ignore_errors=True)
        self.out.mkdir(parents=True)
        dirs = [work / "guest" / d for d in MODULE_DIRS]
        if own_test_hmm is None:
            dirs.append(work / "test_hmm")
        make_modules(self.tb, k, dirs, self.log, binds=[self.dir])
        for ko in work.glob("*/*/*.ko"):
            shutil.copy(ko, self.out / ko.name)
        for ko in work.glob("test_hmm/*.ko"):
            shutil.copy(ko, self.out / ko.name)
        if own_test_hmm is not None:  # CONFIG_TEST_HMM=m: the tree's own build of it
            from .kernel import read_module
            (self.out / "test_hmm.ko").write_bytes(read_module(own_test_hmm))
        if self.tree_selftests:
            outside = self.tb.inside(k.tree) == str(k.tree)
            self.tb.chroot(hmm_tests_script(self.tb.inside(k.tree), str(self.out)), self.log,
                           binds=[self.dir], ro=[k.tree] if outside else [])
