"""Tracing overhead: hmm-tests wall time on the emulated GPUs with DMA tracing
off and on, in the same VM, alternating.

    python bench/bench_trace.py [--rounds 2] [-- hmm-tests args]

"On" streams every GPU's trace to a file in the run directory (the full
record set: DMA, walks, TLB, faults, MMIO, interrupts, commands). Prints each
run, the medians, the ratio (goal <= 1.10), the trace volume and the wall time
each record added.
"""

from __future__ import annotations

import argparse
import statistics

from hmmgpu.device.trace import load
from hmmgpu.host.lab import Lab, LabConfig
from hmmgpu.host.paths import Paths
from hmmgpu.host.provision import Provisioner
from hmmgpu.host.selftest import SELFTEST_MEMORY_MB, run_in_lab


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2, help="off/on pairs (default 2)")
    p.add_argument("hmm_tests_args", nargs=argparse.REMAINDER)
    args = p.parse_args()
    extra = " ".join(a for a in args.hmm_tests_args if a != "--")
    paths = Paths.default()
    Provisioner(paths).ensure()
    walls: dict[str, list[float]] = {"off": [], "on": []}
    records = size = 0
    with Lab(LabConfig(gpus=2, memory_mb=SELFTEST_MEMORY_MB), paths) as lab:
        lab.boot()
        for rnd in range(args.rounds):
            for mode in ("off", "on"):
                files = []
                if mode == "on":
                    for g in lab.gpus:
                        f = lab.run_dir / f"bench-{rnd}-{g.id}.hmmtrace"
                        g.trace.start(f)
                        files.append(f)
                r = run_in_lab(lab, "hmmgpu", extra)
                for g in lab.gpus:
                    g.trace.stop()
                if not r.ok:
                    print(r.summary())
                    return 1
                walls[mode].append(r.wall_s)
                for f in files:
                    t = load(f)
                    records, size = records + len(t.records), size + f.stat().st_size
                    f.unlink()  # large; the numbers are what we keep
                print(f"round {rnd + 1}: tracing {mode}: {r.wall_s:.1f} s", flush=True)
    off, on = statistics.median(walls["off"]), statistics.median(walls["on"])
    print(f"hmm-tests wall time, median of {args.rounds}: tracing off {off:.1f} s, "
          f"on {on:.1f} s, ratio {on / off:.2f} (goal <= 1.10)")
    rounds = args.rounds
    print(f"trace volume per run: {records / rounds:,.0f} records, "
          f"{size / rounds / 2**20:.0f} MiB for both GPUs")
    per_run = records / rounds
    print(f"wall time added per record: {(on - off) / per_run * 1e6:.2f} us "
          f"((on - off) / records per run)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
