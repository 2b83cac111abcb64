"""The edit loop against the cycle it replaces. A figure, not a test.

    python bench/bench_devloop.py [--edits 3] [-t open_close -t anon_read ...]

Figure: from a one-line edit of the driver (a copy of guest/driver, as a
user's module directory) to the hmm-tests result, with the VM kept up
(`hmmgpu dev`). Anchor, measured in the same run: the full cycle without it
for the same edit and the same cases: rebuild the module from clean, boot a
fresh VM, load the module, run the cases.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from hmmgpu.host.devloop import DevLoop
from hmmgpu.host.lab import Lab, LabConfig
from hmmgpu.host.paths import REPO, Paths
from hmmgpu.host.provision import Provisioner

GOAL_S = 15.0


def copy_driver(paths: Paths, where: Path) -> Path:
    shutil.copytree(REPO / "guest", where / "guest",
                    ignore=shutil.ignore_patterns("*.o", "*.ko", "*.mod*", ".*"))
    shutil.copy(paths.linux_src / "lib" / "test_hmm_uapi.h", where / "guest" / "driver")
    return where / "guest" / "driver"


def one_line_edit(src: Path, n: int) -> None:
    main = src / "hmmgpu_main.c"
    text = main.read_text()
    marker = "\tret = alloc_chrdev_region("
    main.write_text(text.replace(marker, f'\tpr_debug("hmmgpu: edit {n}\\n");\n{marker}', 1))


def loop_cycle(paths: Paths, src: Path, share: Path, cases: list[str],
               edits: int) -> list[float]:
    times = []
    with Lab(LabConfig(gpus=2, share=share), paths) as lab:
        lab.boot()
        loop = DevLoop(lab, src, cases, out=lambda _s: None)
        first = loop.cycle()
        if not first.ok:
            sys.exit(f"the first build/run failed:\n{first.text}")
        for n in range(edits):
            one_line_edit(src, n)
            c = loop.cycle()
            if not c.ok:
                sys.exit(f"edit {n} failed:\n{c.text}")
            times.append(c.seconds)
    return times


def full_cycle(paths: Paths, src: Path, share: Path, cases: list[str], n: int) -> float:
    """Edit, build from clean, fresh boot, load, same cases."""
    one_line_edit(src, 100 + n)
    shutil.rmtree(share)
    share.mkdir()
    t0 = time.monotonic()
    with Lab(LabConfig(gpus=2, share=share), paths) as lab:
        lab.boot()
        c = DevLoop(lab, src, cases, out=lambda _s: None).cycle()
        if not c.ok:
            sys.exit(f"full cycle failed:\n{c.text}")
    return time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--edits", type=int, default=3)
    ap.add_argument("-t", dest="cases", action="append",
                    help="hmm-tests case (repeatable; default open_close anon_read migrate)")
    args = ap.parse_args()
    cases = args.cases or ["open_close", "anon_read", "migrate"]
    paths = Paths.default()
    Provisioner(paths).ensure()
    with tempfile.TemporaryDirectory(prefix="hmmgpu-bench-") as tmp:
        src = copy_driver(paths, Path(tmp))
        share = Path(tmp) / "dev"
        share.mkdir()
        loop = loop_cycle(paths, src, share, cases, args.edits)
        full = [full_cycle(paths, src, share, cases, n) for n in range(max(1, args.edits // 2))]
    lm, fm = statistics.median(loop), statistics.median(full)
    print(f"cases: {' '.join(cases)}")
    print("| measure | figure | anchor (same run) | ratio |")
    print("|---|---|---|---|")
    print(f"| save -> result, VM kept up (median of {len(loop)}) | {lm:.1f} s "
          f"| full cycle (clean build, fresh boot, same cases; median of {len(full)}): "
          f"{fm:.1f} s | {lm / fm:.2f} (goal <= {GOAL_S:.0f} s) |")


if __name__ == "__main__":
    main()
