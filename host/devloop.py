"""`hmmgpu dev`: the edit loop. One VM stays up; on each save of a driver
source the module is rebuilt (incrementally, in the cache), unloaded and
reloaded in the running guest, and the chosen hmm-tests cases (or a command)
run again; the result is printed with any Oops/WARN and sanitizer report.

The build directory is shared into the guest (virtiofs), so a rebuilt .ko is
there for insmod without copying. A user's module directory is built where
it is, read-only, with its objects in the cache (kbuild's MO=); hmmgpu's own
driver is mirrored file by file (only when bytes change, so kbuild recompiles
only what the edit touched) next to the kernel's test_hmm_uapi.h.
"""

from __future__ import annotations

import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import CommandFailed, GuestKernelError, HmmgpuError
from .kbuild import make_modules, prepare_sources
from .lab import SHARE_MOUNT, Lab
from .paths import REPO
from .selftest import run_in_lab

WATCHED = (".c", ".h")
WATCHED_NAMES = ("Kbuild", "Makefile")


@dataclass
class Cycle:
    seconds: float  # from the change being seen to the result
    build_s: float
    ok: bool
    text: str


def sources(d: Path) -> list[Path]:
    """The files under `d` a module build reads (C, headers, Kbuild, Makefile)."""
    return [p for p in d.rglob("*")
            if p.is_file() and (p.suffix in WATCHED or p.name in WATCHED_NAMES)]


def snapshot(dirs: list[Path]) -> dict[Path, int]:
    """mtime of every source file under `dirs`."""
    return {p: p.stat().st_mtime_ns for d in dirs for p in sources(d)}


def mirror(src: Path, dest: Path) -> int:
    """Copy the sources of `src` into `dest` where their bytes differ; returns
    how many files were written (kbuild then rebuilds just those)."""
    n = 0
    for p in sources(src):
        q = dest / p.relative_to(src)
        body = p.read_bytes()
        if not q.exists() or q.read_bytes() != body:
            q.parent.mkdir(parents=True, exist_ok=True)
            q.write_bytes(body)
            n += 1
    return n


class DevLoop:
    """Build, reload and test one module directory in a booted lab (booted
    with `share=DevLoop.share_dir(...)`)."""

    def __init__(self, lab: Lab, module_dir: Path | None = None, cases: list[str] = (),
                 command: str = "", out: Callable[[str], None] = print) -> None:
        self.lab = lab
        self.ours = module_dir is None
        self.src = REPO / "guest" / "driver" if self.ours else module_dir.resolve()
        self.cases = list(cases)
        self.command = command
        self.out = out
        self.work = lab.config.share
        if self.work is None:
            raise HmmgpuError("the edit loop's lab needs share=<its build directory>")
        self.log = self.work / "build.log"
        if self.ours:
            # the first build prepares the tree (test_hmm_uapi.h from the kernel)
            tree = lab.kernel.tree
            own = tree is not None and (tree / "lib" / "test_hmm_uapi.h").exists()
            prepare_sources(self.work / "tree", tree if own else lab.paths.linux_src)
            self.build_dir = self.work / "tree" / "guest" / "driver"
        else:  # built from where it is (read-only) into the cache (kbuild's MO=)
            self.build_dir = self.work / "module"
            shutil.rmtree(self.build_dir, ignore_errors=True)
            self.build_dir.mkdir()
        self.loaded: list[str] = []

    @staticmethod
    def share_dir(cache: Path, kernel_release: str) -> Path:
        d = cache / "dev" / kernel_release
        d.mkdir(parents=True, exist_ok=True)
        return d

    def watched(self) -> list[Path]:
        return [self.src, REPO / "guest" / "include"] if self.ours else [self.src]

    def build(self) -> list[Path]:
        self.log.write_text("")
        if self.ours:  # our sources plus the kernel's test_hmm_uapi.h, mirrored
            mirror(self.src, self.build_dir)
            mirror(REPO / "guest" / "include", self.work / "tree" / "guest" / "include")
            make_modules(self.lab.tb, self.lab.kernel, [self.build_dir], self.log, [self.work])
        else:
            make_modules(self.lab.tb, self.lab.kernel, [self.src], self.log, [self.work],
                         out=self.build_dir)
        order = self.build_dir / "modules.order"
        names = [Path(line.strip()).with_suffix(".ko").name
                 for line in order.read_text().splitlines() if line.strip()] \
            if order.exists() else sorted(p.name for p in self.build_dir.glob("*.ko"))
        return [self.build_dir / n for n in names]

    def guest_path(self, ko: Path) -> str:
        return f"{SHARE_MOUNT}/{ko.relative_to(self.work)}"

    def reload(self, kos: list[Path]) -> None:
        lab = self.lab
        names = [k.name.removesuffix(".ko").replace("-", "_") for k in kos]
        for name in reversed(self.loaded or names):
            lab.ssh(f"! test -d /sys/module/{name} || rmmod {name}")
        # virtiofs may serve a cached page of the old .ko: drop caches first
        lab.ssh("echo 3 > /proc/sys/vm/drop_caches")
        for ko in kos:
            lab.ssh(f"insmod {shlex.quote(self.guest_path(ko))}")
        self.loaded = names

    def test(self) -> tuple[bool, str]:
        lab = self.lab
        if self.command:
            r = lab.ssh(self.command, check=False, timeout=None)
            return r.ok, (r.stdout + r.stderr).rstrip() + f"\n(exit {r.exit_code})"
        args = " ".join(f"-t {shlex.quote(c)}" for c in self.cases)
        res = run_in_lab(lab, "hmmgpu", args, load=self.ours)
        return res.ok, res.summary()

    def cycle(self) -> Cycle:
        t0 = time.monotonic()
        since = self.lab.console.size()
        try:
            kos = self.build()
        except CommandFailed:
            tail = [line for line in self.log.read_text(errors="replace").splitlines()
                    if not line.startswith("$ ")][-20:]
            return Cycle(time.monotonic() - t0, time.monotonic() - t0, False,
                         "BUILD FAILED:\n" + "\n".join(tail))
        build_s = time.monotonic() - t0
        try:
            self.reload(kos)
            ok, text = self.test()
        except GuestKernelError as e:
            ok, text = False, f"GUEST KERNEL: {e.args[0]}\n{e.excerpt}"
        except HmmgpuError as e:
            ok, text = False, str(e)
        failures = self.lab.console.failures(since)
        if failures and "GUEST KERNEL" not in text:
            ok = False
            text += f"\nGUEST KERNEL: {failures[0].line}\n{failures[0].excerpt}"
        if self.lab.qemu_alive():
            san = self.lab.sanitizer_reports(clear=True)
            if san:
                ok = False
                text += "\nDRIVER SANITIZER: " + "\n  ".join(san)
        return Cycle(time.monotonic() - t0, build_s, ok, text)

    def report(self, c: Cycle, why: str) -> None:
        self.out(f"--- {why}: {'PASS' if c.ok else 'FAIL'} in {c.seconds:.1f} s "
                 f"(build {c.build_s:.1f} s)\n{c.text}")

    def watch(self, poll_s: float = 0.3, cycles: int | None = None) -> None:
        """Run a cycle now, then one per change, until Ctrl-C (or `cycles`)."""
        self.report(self.cycle(), "initial build")
        before = snapshot(self.watched())
        done = 1
        self.out(f"watching {', '.join(str(d) for d in self.watched())} (Ctrl-C stops)")
        while cycles is None or done < cycles:
            time.sleep(poll_s)
            now = snapshot(self.watched())
            if now == before:
                continue
            changed = sorted({p.name for p in set(now) ^ set(before)}
                             | {p.name for p in now if before.get(p) != now[p]})
            before = now
            if not self.lab.qemu_alive():
                self.out("the VM is gone (see above); restart 'hmmgpu dev'")
                return
            self.report(self.cycle(), "changed " + ", ".join(changed))
            done += 1
