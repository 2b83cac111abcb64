"""Removal under load: take a GPU away from the driver while hmm-tests run on
it, N times, and count what was left behind.

Three ways to take it away, each a cycle:
- "unbind": the driver lets go of the PCI device and takes it back
  (sysfs unbind/bind), the module stays;
- "unload": rmmod as soon as the module is free (between two of the tests'
  fixtures, which open and close /dev/hmm_dmirror*), then insmod;
- "unplug": QMP device_del, then device_add (a GPU without MSI-X: QEMU 11.1
  aborts on device_del with MSI-X, see Lab.unplug_gpu).

Meanwhile a loop in the guest runs hmm-tests cases on GPU 0 and logs each
run's totals. After the cycles the loop stops and the report counts: runs
that passed whole, processes that did not exit, VRAM pages not free, interrupt
lines, and memory against a baseline taken after a few warm-up cycles of the
same work (first allocations of slabs and page tables are not leaks).
A guest Oops, WARN or hung task fails the run (Lab.ssh checks the console).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .demo import gpu_sysfs
from .errors import HmmgpuError
from .lab import Lab

MODES = ("unbind", "unload", "unplug")

# private memory, THPs included: the migrations an eviction has to race
LOAD_CASES = ("hmm.hmm_device_private.migrate", "hmm.hmm_device_private.anon_read",
              "hmm.hmm_device_private.migrate_fault",
              "hmm.hmm_device_private.migrate_anon_huge_fault")
LOOP_LOG = "/tmp/removal-load.log"
LOOP_PID = "/tmp/removal-load.pid"
MEMINFO_FIELDS = ("MemFree", "AnonPages", "SUnreclaim", "PageTables")
WARMUP_CYCLES = 3


@dataclass
class RemovalReport:
    module: str
    mode: str
    cycles: int
    seconds: float
    runs: int = 0                  # hmm-tests runs that finished during the cycles
    runs_passed: int = 0           # ... with every case passing
    served_after: bool = False     # a whole run passed after the last cycle
    stuck: list[str] = field(default_factory=list)   # processes that did not exit
    vram: tuple[int, int] = (0, 0)                     # free, total pages after
    irq_lines: tuple[int, int] = (0, 0)                # before, after
    irq_lines_unloaded: int = 0                        # after the final rmmod
    meminfo_kb: dict[str, int] = field(default_factory=dict)  # after - baseline

    @property
    def leaked_kb(self) -> int:
        """Free memory gone since the baseline (free pages and per-CPU lists)."""
        return -self.meminfo_kb.get("Free", 0)

    def summary(self) -> str:
        after = "and again after the last" if self.served_after else "NONE after the last"
        return (f"{self.module} {self.mode}: {self.cycles} cycles in {self.seconds:.1f} s, "
                f"{self.runs} hmm-tests runs meanwhile ({self.runs_passed} passed whole, "
                f"{after}), "
                f"VRAM free {self.vram[0]}/{self.vram[1]} pages, interrupt lines "
                f"{self.irq_lines[0]} -> {self.irq_lines[1]} ({self.irq_lines_unloaded} "
                f"after rmmod), memory {self.leaked_kb} KiB below the baseline "
                f"({', '.join(f'{k} {v:+d}' for k, v in self.meminfo_kb.items())}), "
                f"{len(self.stuck)} stuck processes")


def _meminfo(lab: Lab) -> dict[str, int]:
    """KiB: a few /proc/meminfo fields, and "Free": MemFree plus the pages
    parked on the per-CPU free lists (/proc/zoneinfo "count:"), which MemFree
    leaves out and which swing by tens of MiB between two idle moments."""
    out = lab.ssh("sync; echo 3 > /proc/sys/vm/drop_caches; cat /proc/meminfo; "
                  "echo zoneinfo; cat /proc/zoneinfo").stdout
    meminfo, _, zoneinfo = out.partition("\nzoneinfo\n")
    values = {}
    for line in meminfo.splitlines():
        name, _, rest = line.partition(":")
        if name in MEMINFO_FIELDS:
            values[name] = int(rest.split()[0])
    pcp_pages = sum(int(line.split()[1]) for line in zoneinfo.splitlines()
                    if line.strip().startswith("count:"))
    values["Free"] = values["MemFree"] + pcp_pages * 4
    return values


def _irq_lines(lab: Lab) -> int:
    return int(lab.ssh("grep -c hmmgpu /proc/interrupts", check=False).stdout.strip() or 0)


class RemovalRun:
    """N cycles of one mode on GPU 0 of a booted lab. `module`: "hmmgpu", or
    "test_hmm" as the anchor (the reference has no device: unload only)."""

    def __init__(self, lab: Lab, mode: str, progress: Callable[[str], None] | None = None,
                 module: str = "hmmgpu"):
        if mode not in MODES:
            raise HmmgpuError(f"removal mode {mode!r}: use one of {', '.join(MODES)}")
        if module not in ("hmmgpu", "test_hmm") or (module == "test_hmm" and mode != "unload"):
            raise HmmgpuError(f"removal: {module} {mode} cycles are not a thing "
                              "(test_hmm.ko has no PCI device: unload only)")
        if mode == "unplug" and lab.config.msix:
            raise HmmgpuError("unplug cycles need GPUs without MSI-X (LabConfig(msix=False))")
        self.lab, self.mode, self.module = lab, mode, module
        self.progress = progress or (lambda line: None)
        self.ko = lab.guest_bin(f"{module}.ko")

    # ---- the GPU -----------------------------------------------------------------

    def _wait_dev(self, timeout: float = 60) -> None:
        """Until the driver serves GPU 0 again (/dev/hmm_dmirror0)."""
        self.lab.ssh(f"for i in $(seq {int(timeout * 10)}); do "
                     "test -c /dev/hmm_dmirror0 && exit 0; sleep 0.1; done; exit 1",
                     timeout=timeout + 30)

    def _cycle(self) -> None:
        lab = self.lab
        if self.mode == "unbind":
            d = "/sys/bus/pci/drivers/hmmgpu"
            lab.ssh(f"sleep 0.3; echo {self.slot} > {d}/unbind; echo {self.slot} > {d}/bind; "
                    "test -c /dev/hmm_dmirror0", timeout=120)
        elif self.mode == "unload":
            # rmmod fails while a file is open: retry until a fixture boundary
            m = self.module
            lab.ssh(f"sleep 0.3; for i in $(seq 600); do rmmod {m} 2>/dev/null && break; "
                    f"sleep 0.05; done; test ! -d /sys/module/{m} && insmod {self.ko}",
                    timeout=120)
            self._wait_dev()
        else:
            lab.ssh("sleep 0.3")
            lab.unplug_gpu(0)
            lab.plug_gpu(0)
            self._wait_dev()

    # ---- the load ------------------------------------------------------------------

    def _start_load(self) -> None:
        cases = " ".join(f"-r {c}" for c in LOAD_CASES)
        self.lab.ssh(f"cd /tmp; rm -f {LOOP_LOG}; (while :; do "
                     f"{self.lab.guest_bin('hmm-tests')} {cases} 2>&1 | grep -a '# Totals'; "
                     f"done) >{LOOP_LOG} 2>&1 & echo $! > {LOOP_PID}")

    def _stop_load(self) -> list[str]:
        """Stop the loop; the hmm-tests processes still there after 30 s."""
        out = self.lab.ssh(
            f"kill $(cat {LOOP_PID}); for i in $(seq 300); do "
            "pidof hmm-tests >/dev/null || exit 0; sleep 0.1; done; "
            "for p in $(pidof hmm-tests); do echo $p $(cat /proc/$p/wchan); done",
            timeout=60).stdout
        return [line for line in out.splitlines() if line.strip()]

    def _runs(self) -> tuple[int, int]:
        lines = self.lab.ssh(f"cat {LOOP_LOG}").stdout.splitlines()
        totals = [line for line in lines if "# Totals" in line]
        passed = sum(" fail:0 " in line and " pass:0 " not in line for line in totals)
        return len(totals), passed

    def _wait_whole_pass(self, timeout: float = 120) -> bool:
        """After the cycles: does the GPU serve a whole hmm-tests run again?"""
        before = self._runs()[1]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(1)
            if self._runs()[1] > before:
                return True
        return False

    # ---- the run -------------------------------------------------------------------

    def run(self, cycles: int) -> RemovalReport:
        lab, m = self.lab, self.module
        lab.ssh(f"test -d /sys/module/{m} || insmod {self.ko}")
        self._wait_dev()
        self.slot = gpu_sysfs(lab).rsplit("/", 1)[1] if m == "hmmgpu" else ""
        irq_before = _irq_lines(lab)
        # warm-up: the same work, so that first-time allocations are in the baseline
        self._start_load()
        for _ in range(WARMUP_CYCLES):
            self._cycle()
        self._stop_load()
        baseline = _meminfo(lab)

        self._start_load()
        t0 = time.monotonic()
        for i in range(cycles):
            self._cycle()
            if (i + 1) % 10 == 0 or i + 1 == cycles:
                self.progress(f"{self.mode}: {i + 1}/{cycles} cycles")
        seconds = time.monotonic() - t0
        served_after = self._wait_whole_pass()
        stuck = self._stop_load()
        runs, passed = self._runs()
        free = total = 0
        if m == "hmmgpu":
            free, total = (int(x) for x in lab.ssh(
                "cat /sys/bus/pci/drivers/hmmgpu/*/vram_pages").stdout.split()[:2])
        irq_after = _irq_lines(lab)
        after = _meminfo(lab)  # loaded and idle, as the baseline was
        lab.ssh(f"rmmod {m}")
        return RemovalReport(
            module=m, mode=self.mode, cycles=cycles, seconds=seconds, runs=runs,
            runs_passed=passed, served_after=served_after, stuck=stuck, vram=(free, total),
            irq_lines=(irq_before, irq_after),
            irq_lines_unloaded=_irq_lines(lab),
            meminfo_kb={k: after[k] - baseline[k] for k in baseline})
