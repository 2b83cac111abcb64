"""The device fault round trip and where its time goes. A figure, not a test.

    python bench/bench_fault.py [--iterations 500] [--rounds 3]

fault_bench (guest/tools) READs a fresh page through GPU 0 (the device
faults: fault record, interrupt, hmm_range_fault, PTE, replay) and then the
same page again (no fault), ITERATIONS times, ROUNDS times in one VM.
Figure: the faulting READ's median ioctl time; anchor in the same run: the
READ without a fault; the ratio is the median of the rounds' (goal: <= 1.5;
the host is noisy, so one run of 500 is not enough). Each round also prints
hmmgpu.ko's own untraced timing of its faulting READs (debugfs fault_timing:
the doorbell, until the fault is seen, serving it, the replayed command
until done), and the untraced budget: the faulting READ against what the
goal allows it, in those parts. Then a run with the
device trace on, and
host/faultpath.py's breakdown of the round trip into its segments (tracing
adds its own cost to each event; the first run's figures are untraced),
and the budget: what the goal lets a fault add to the untraced anchor, the
guest's share of it, and what is left for the device against what it spends.
Then a run with the guest kernel's function_graph tracer on the submission
and the fault path (host/faultpath.py guest_breakdown): each READ as its
caller waits for it (the doorbell's MMIO write, then, with a fault, until
its waiter sees the fault, serving it, and the replayed command until done),
and the guest's serving split into the wait for the fault work,
hmm_range_fault, the PTE writes and the REPLAY. The doorbell write is a round
trip to the device server (QEMU posts no MMIO write to a vfio-user device
with a mappable region), and the server runs the commands while the guest
waits for it: the READ without a fault is done when the write returns, so a
fault adds the guest's serving and the replayed command after it.
Last, fault batching: a READ of 256 fresh pages (1 MiB) for each value of
hmmgpu.ko's fault_granule_kb, with the faults the dmirror ABI counts.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from hmmgpu.device.trace import load
from hmmgpu.host.faultpath import (
    FAULT_TIMING,
    DriverTiming,
    breakdown,
    driver_timing,
    guest_breakdown,
    guest_ftrace_script,
)
from hmmgpu.host.lab import Lab, LabConfig

GOAL = 1.5


GRANULES_KB = (0, 4, 64, 2048)  # 0: the rest of the request (the default)
BATCH_PAGES = 256


def fault_bench(lab: Lab, iterations: int, pages: int = 1) -> tuple[float, ...]:
    """(fault median, fault p99, no-fault median, no-fault p99 in us, faults per READ)."""
    out = lab.ssh(f"{lab.guest_bin('fault_bench')} /dev/hmm_dmirror0 {iterations} "
                  f"{pages}").stdout.split()
    return float(out[1]), float(out[2]), float(out[4]), float(out[5]), float(out[7])


def batching(lab: Lab, iterations: int) -> str:
    rows = [f"READ of {BATCH_PAGES} fresh pages ({BATCH_PAGES * 4} KiB), {iterations} each:",
            "  fault_granule_kb  faults/READ  faulting READ  same READ, no fault"]
    param = "/sys/module/hmmgpu/parameters/fault_granule_kb"
    for kb in GRANULES_KB:
        lab.ssh(f"echo {kb} > {param}")
        f50, _, n50, _, faults = fault_bench(lab, iterations, BATCH_PAGES)
        name = f"{kb}" if kb else "0 (request)"
        rows.append(f"  {name:>16}  {faults:11.0f}  {f50 / 1000:10.2f} ms  {n50 / 1000:10.2f} ms")
    lab.ssh(f"echo 0 > {param}")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=500)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--keep", metavar="FILE", help="keep the trace there")
    args = p.parse_args()
    with Lab(LabConfig(gpus=1, memory_mb=1024)) as lab, tempfile.TemporaryDirectory() as tmp:
        lab.boot()
        lab.ssh(f"insmod {lab.guest_bin('hmmgpu.ko')}")
        fault_bench(lab, 20)  # warm-up: first page tables, caches
        rounds, timings = [], []
        for _ in range(max(args.rounds, 1)):
            lab.ssh(f"for f in {FAULT_TIMING}; do echo > $f; done")  # drop older samples
            rounds.append(fault_bench(lab, args.iterations))
            timings.append(driver_timing(lab.ssh(f"cat {FAULT_TIMING}").stdout))
        path = Path(tmp) / "fault.hmmtrace"
        lab.gpus[0].trace.start(path)
        try:
            traced = fault_bench(lab, args.iterations)
        finally:
            lab.gpus[0].trace.stop()
        trace = load(path)
        if args.keep:
            Path(args.keep).write_bytes(path.read_bytes())
        start, stop = guest_ftrace_script()
        lab.ssh(start)
        try:
            fault_bench(lab, args.iterations // 2)
        finally:
            guest = guest_breakdown(lab.ssh(stop, timeout=300).stdout)
        batches = batching(lab, max(args.iterations // 20, 5))
    b = breakdown(trace)
    for i, ((f50, f99, n50, n99, _), t) in enumerate(zip(rounds, timings, strict=True), 1):
        print(f"round {i}: device fault round trip, {args.iterations} faults: median "
              f"{f50:.0f} us, p99 {f99:.0f} us; the same READ without a fault: median "
              f"{n50:.0f} us, p99 {n99:.0f} us; ratio {f50 / n50:.2f}")
        print(f"  {t.line() if t else 'no fault_timing samples (debugfs not mounted?)'}")
    f50 = statistics.median(r[0] for r in rounds)
    n50 = statistics.median(r[2] for r in rounds)
    ratio = statistics.median(r[0] / r[2] for r in rounds)
    print(f"device fault round trip over {len(rounds)} rounds: median {f50:.0f} us, without a "
          f"fault {n50:.0f} us; median ratio {ratio:.2f} (goal <= {GOAL})")
    if all(timings):
        t = DriverTiming(sum(x.samples for x in timings),
                         {k: statistics.median(x.us[k] for x in timings) for k in timings[0].us})
        print(t.budget(n50, GOAL, f50) + " (the rounds' medians)")
    print(f"traced run: fault median {traced[0]:.0f} us, without {traced[2]:.0f} us")
    print(b.table())
    print(b.budget(n50, GOAL))
    print(guest.table())
    print(guest.fault_adds())
    print(batches)


if __name__ == "__main__":
    main()
