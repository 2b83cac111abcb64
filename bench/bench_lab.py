"""Lab benchmarks: boot time and MMIO round trips. Figures, not tests.

    python bench/bench_lab.py boot [--runs 3]
    python bench/bench_lab.py mmio [--count 2000] [--rounds 5]
    python bench/bench_lab.py setup        # cold provisioning into a temp cache

Every figure is printed next to an anchor measured in the same run, as a ratio:
boot with one GPU vs the same VM without it. MMIO in the guest: the same mapped
32-bit load/store from the same guest program to our BAR0, to the BAR0 of a C
libvfio-user server of the same shape (bench/anchor/mmio_anchor.c: what the
Python server costs over C, everything else alike) and to QEMU's in-process
`edu` device's BAR0 (what vfio-user costs over device emulation inside QEMU).
MMIO without a VM:
one host client's BAR0 read from the Python server and from the C anchor, the
same request to each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hmmgpu.device import hwdef as hw
from hmmgpu.host import mmio_anchor
from hmmgpu.host.lab import Lab, LabConfig
from hmmgpu.host.paths import Paths
from hmmgpu.host.provision import Provisioner
from hmmgpu.host.vfio_client import VfioUserClient

EDU_IDS = ("1234", "11e8")  # QEMU's hw/misc/edu.c
EDU_LIVENESS = 0x04  # a read/write register of edu's BAR0


def bench_boot(runs: int) -> None:
    paths = Paths.default()
    Provisioner(paths).ensure()
    figures: dict[int, list[float]] = {0: [], 1: []}
    for _ in range(runs):
        for gpus in (1, 0):
            with Lab(LabConfig(gpus=gpus, memory_mb=1024), paths) as lab:
                lab.boot()
                figures[gpus].append(lab.boot_seconds)
    with_gpu, without = statistics.median(figures[1]), statistics.median(figures[0])
    print(f"boot to SSH ready ({lab.accel}, median of {runs}): with 1 GPU {with_gpu:.2f} s, "
          f"without {without:.2f} s, ratio {with_gpu / without:.2f} (goal: <= 8 s)")


def guest_bench(lab: Lab, resource: str, offset: int, count: int, op: str) -> float:
    out = lab.ssh(f"{lab.guest_bin('mmio_bench')} {resource} {offset} {count} {op}").stdout
    return float(out.split()[0]) / 1000.0


def host_bench(sock: Path, region: int, offset: int, count: int) -> float:
    with VfioUserClient(str(sock)) as c:
        c.negotiate()
        t0 = time.perf_counter()
        for _ in range(count):
            c.read(region, offset, 4)
        return (time.perf_counter() - t0) / count * 1e6


def bench_mmio(count: int, rounds: int) -> None:
    paths = Paths.default()
    Provisioner(paths).ensure()
    with tempfile.TemporaryDirectory() as tmp:
        binary = mmio_anchor.build(paths, Path(tmp))
        anchor = mmio_anchor.AnchorServer(binary, Path(tmp) / "anchor.sock",
                                          Path(tmp) / "anchor.log")
        cfg = LabConfig(gpus=1, memory_mb=1024,
                        extra_qemu_args=["-device", "edu", *anchor.qemu_args()])
        with anchor, Lab(cfg, paths) as lab:
            lab.boot()
            lab.pin_servers((anchor.proc.pid,))  # the anchor placed as our server is
            slots = {(d["vendor"], d["device"]): d["slot"] for d in lab.guest_pci_devices()}
            vendor = f"{hw.PCI_VENDOR_ID:04x}"
            devs = {name: f"/sys/bus/pci/devices/{slots[ids]}" for name, ids in (
                ("ours", (vendor, f"{hw.PCI_DEVICE_ID:04x}")),
                ("c", (vendor, f"{mmio_anchor.DEVICE_ID:04x}")), ("edu", EDU_IDS))}
            for d in devs.values():  # enable memory decoding
                lab.ssh(f"printf '\\002\\000' | dd of={d}/config bs=2 seek=2 count=1 "
                        "conv=notrunc 2>/dev/null")
            print(f"guest register access, mapped BAR0 ({lab.accel}, median of {rounds} "
                  f"alternating rounds of {count} accesses):")
            for op in ("read", "write"):
                t: dict[str, list[float]] = {name: [] for name in devs}
                for _ in range(rounds):
                    t["ours"].append(guest_bench(lab, f"{devs['ours']}/resource0",
                                                 hw.Reg.SCRATCH, count, op))
                    t["c"].append(guest_bench(lab, f"{devs['c']}/resource0",
                                              hw.Reg.SCRATCH, count, op))
                    t["edu"].append(guest_bench(lab, f"{devs['edu']}/resource0",
                                                EDU_LIVENESS, count, op))
                py, c, q = (statistics.median(t[k]) for k in ("ours", "c", "edu"))
                print(f"  {op:5}: Python server {py:7.1f} us, C libvfio-user server {c:7.1f} "
                      f"us, ratio {py / c:.2f} (goal <= 1.2); QEMU's edu device {q:5.1f} us")
        # The same region read, from a host-side client, no VM: servers compared alone.
        ours_sock = Path(tmp) / "gpu.sock"
        proc = subprocess.Popen([sys.executable, "-m", "hmmgpu.device.server", "--socket",
                                 str(ours_sock), "--log-file", str(Path(tmp) / "gpu.log"),
                                 "--library", str(paths.libvfio_user)])
        try:
            with mmio_anchor.AnchorServer(binary, Path(tmp) / "anchor.sock",
                                          Path(tmp) / "anchor.log") as anchor:
                while not ours_sock.exists():
                    time.sleep(0.02)
                n = count * 5
                py = host_bench(ours_sock, 0, hw.Reg.SCRATCH, n)
                c = host_bench(anchor.socket, 0, hw.Reg.SCRATCH, n)
            print(f"host client BAR0 read ({n}x): Python server {py:.1f} us, "
                  f"C libvfio-user server {c:.1f} us, ratio {py / c:.2f}")
        finally:
            proc.terminate()
            proc.wait()


def bench_setup() -> None:
    with tempfile.TemporaryDirectory(prefix="hmmgpu-cold-") as tmp:
        env = {**os.environ, "HMMGPU_CACHE": tmp}
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "hmmgpu.host.cli", "setup"], env=env, check=True)
        print(f"cold setup (empty cache): {time.monotonic() - t0:.0f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    b = sub.add_parser("boot")
    b.add_argument("--runs", type=int, default=3)
    m = sub.add_parser("mmio")
    m.add_argument("--count", type=int, default=2000)
    m.add_argument("--rounds", type=int, default=5)
    sub.add_parser("setup")
    args = p.parse_args()
    if args.what == "boot":
        bench_boot(args.runs)
    elif args.what == "mmio":
        bench_mmio(args.count, args.rounds)
    else:
        bench_setup()


if __name__ == "__main__":
    main()
