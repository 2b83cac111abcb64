"""Coverage-guided fuzzing of the emulated GPU's guest interface (atheris).

    python bench/bench_fuzz.py [--operations 1000000] [--seed 1] [--findings DIR]

Every device module is instrumented; atheris (libFuzzer) mutates inputs that
host/fuzz.py decodes into register accesses, commands, PTE and ring writes,
fault servicing and VRAM BAR accesses on a fresh in-process GPU, checking
its invariants after each operation. Prints operations, their rate,
libFuzzer's edge coverage, the error codes the device answered with and the
findings; each finding's input is saved to DIR (a regression test replays it
with host.fuzz.run_input). The anchor in the same run: the same number of
operations from the seeded random decoder, uninstrumented.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

CHUNK = 200_000
COV = re.compile(r"cov: (\d+) ft: (\d+)")


def child(operations: int, seed: int, findings: Path, corpus: Path) -> None:
    """One fuzzing process: atheris's libFuzzer prints its coverage on stderr;
    our figures go to stdout as one JSON line at the end."""
    import atheris

    with atheris.instrument_imports(include=["hmmgpu.device"]):
        from hmmgpu.host import fuzz
    fuzz.quiet()
    stats = fuzz.Stats()
    start = time.monotonic()

    def one_input(data: bytes) -> None:
        try:
            fuzz.run_input(data, stats)
        except fuzz.Finding as f:
            stats.findings.append(f)
            findings.mkdir(parents=True, exist_ok=True)
            (findings / f"finding-{seed}-{len(stats.findings)}.bin").write_bytes(data)
        if stats.operations >= operations:
            print(json.dumps({"operations": stats.operations, "inputs": stats.inputs,
                              "seconds": time.monotonic() - start,
                              "codes": stats.codes, "opcodes": stats.opcodes,
                              "findings": [f.what for f in stats.findings]}), flush=True)
            os._exit(0)  # libFuzzer reports a sys.exit() as a crash

    atheris.Setup([sys.argv[0], f"-seed={seed}", "-max_len=512", "-rss_limit_mb=0",
                   str(corpus)], one_input)
    atheris.Fuzz()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--operations", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--findings", type=Path, default=Path("fuzz-findings"))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.operations, args.seed, args.findings, args.corpus)
        return

    from hmmgpu.host import fuzz
    fuzz.quiet()
    # the anchor: a tenth of the operations from the seeded random decoder,
    # uninstrumented, in this process
    anchor, rng, t0 = fuzz.Stats(), random.Random(args.seed), time.monotonic()
    while anchor.operations < args.operations // 10:
        try:
            fuzz.run_input(rng.randbytes(rng.randint(1, 256)), anchor)
        except fuzz.Finding as f:
            anchor.findings.append(f)
    anchor_rate = anchor.operations / (time.monotonic() - t0)

    # Each process fuzzes CHUNK operations and leaves its corpus to the next:
    # an instrumented run grows by ~40 KB per input (seen with any device
    # module instrumented, not without), so no process runs long.
    got = {"operations": 0, "inputs": 0, "seconds": 0.0, "codes": Counter(),
           "opcodes": Counter(), "findings": []}
    covs: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="hmmgpu-fuzz-") as corpus:
        for i in range(-(-args.operations // CHUNK)):
            n = min(CHUNK, args.operations - got["operations"])
            r = subprocess.run([sys.executable, __file__, "--child", "--operations", str(n),
                                "--seed", str(args.seed + i), "--findings", str(args.findings),
                                "--corpus", corpus], capture_output=True, text=True)
            lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
            if r.returncode or not lines:
                sys.exit(f"the fuzzer failed ({r.returncode}):\n{r.stderr[-3000:]}")
            part = json.loads(lines[-1])
            for k in ("operations", "inputs", "seconds", "findings"):
                got[k] += part[k]
            for k in ("codes", "opcodes"):
                got[k].update(part[k])
            covs += COV.findall(r.stderr)
            print(f"  {got['operations']} operations, coverage "
                  f"{covs[-1][0] if covs else '?'} edges", flush=True)
    rate = got["operations"] / got["seconds"]
    print(f"coverage-guided (atheris): {got['operations']} operations in {got['inputs']} "
          f"inputs, {got['seconds']:.0f} s, {rate:.0f} operations/s instrumented; "
          f"edge coverage {covs[-1][0] if covs else '?'} (features {covs[-1][1] if covs else '?'})")
    print(f"anchor, seeded random decoder uninstrumented, same process tree: "
          f"{anchor.operations} operations at {anchor_rate:.0f}/s; ratio {rate / anchor_rate:.2f}")
    print("error codes answered: " + ", ".join(
        f"{c} {n}" for c, n in got["codes"].most_common()))
    print("commands submitted: " + ", ".join(
        f"{c} {n}" for c, n in got["opcodes"].most_common()))
    print(f"findings: {len(got['findings'])} (anchor run: {len(anchor.findings)})"
          + (f", inputs in {args.findings}/" if got["findings"] else ""))
    for what in got["findings"][:20]:
        print(f"  {what}")


if __name__ == "__main__":
    main()
