"""Removal under load, 100 cycles of each kind (host/removal.py). A figure,
not a test (tests/test_removal_vm.py runs 20 of each and asserts).

    python bench/bench_removal.py [--cycles 100] [--mode unbind ...]

For each of unbind/bind, rmmod/insmod and QMP device_del/device_add of GPU 0
while hmm-tests loop on it: cycles, their time, the hmm-tests runs meanwhile,
and what was left behind (VRAM pages, interrupt lines, free memory against a
warm-up baseline, processes that did not exit). The anchor in the same run:
rmmod/insmod of test_hmm.ko, the kernel's reference driver, under the same
load (it has no device to unbind or unplug).
"""

from __future__ import annotations

import argparse
import sys

from hmmgpu.host.lab import Lab, LabConfig
from hmmgpu.host.removal import MODES, RemovalReport, RemovalRun


def run(mode: str, cycles: int, module: str = "hmmgpu") -> RemovalReport:
    config = LabConfig(gpus=1, memory_mb=2048, vram_mb=256, msix=mode != "unplug")
    with Lab(config) as lab:
        lab.boot()
        since = lab.console.size()
        report = RemovalRun(lab, mode, module=module,
                            progress=lambda line: print(f"  {line}", flush=True)).run(cycles)
        lab.check_console(since)
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=100)
    ap.add_argument("--mode", action="append", choices=MODES,
                    help="only these kinds (repeatable; default: all)")
    args = ap.parse_args()
    reports = [run(mode, args.cycles) for mode in args.mode or MODES]
    reports.append(run("unload", args.cycles, module="test_hmm"))
    print()
    for r in reports:
        print(r.summary())
    bad = [r for r in reports if r.stuck or r.vram[0] != r.vram[1] or not r.served_after]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
