"""`hmmgpu selftest`: the kernel's hmm-tests in the lab VM.

hmm-tests runs directly (test_hmm.sh always exits 0), its TAP is parsed, and
the result is saved as JSON and as JUnit XML (what CI systems display) next to
the run's logs. A guest kernel WARNING, Oops or panic during the run fails it
whatever the TAP says.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import GuestKernelError, HmmgpuError
from .lab import Lab, LabConfig
from .ssh import Result
from .tap import TapReport, parse, to_junit

SELFTEST_MEMORY_MB = 4096
SELFTEST_TIMEOUT_S = 1800


@dataclass
class SelftestResult:
    mode: str
    report: TapReport
    wall_s: float
    run_dir: Path
    json_path: Path
    exit_code: int
    junit_path: Path | None = None
    kernel_failure: str = ""
    sanitizer: list[str] = field(default_factory=list)  # the device's driver-sanitizer reports

    @property
    def ok(self) -> bool:
        return (not self.report.failed and self.report.complete and not self.kernel_failure
                and not self.sanitizer)

    def summary(self) -> str:
        c = self.report.count()
        lines = [f"hmm-tests ({self.mode}): {len(self.report.cases)}/{self.report.planned} cases,"
                 f" pass {c['pass']}, fail {c['fail']}, skip {c['skip']}"
                 f" in {self.wall_s:.0f} s"]
        for case in self.report.failed:
            lines.append(f"  FAIL {case.name}")
        if not self.report.complete:
            lines.append(f"  INCOMPLETE: hmm-tests exited {self.exit_code} after "
                         f"{len(self.report.cases)} of {self.report.planned} cases")
        if self.kernel_failure:
            lines.append(f"  GUEST KERNEL: {self.kernel_failure}")
        if self.sanitizer:
            lines.append(f"  DRIVER SANITIZER: {len(self.sanitizer)} report(s), first: "
                         f"{self.sanitizer[0]}")
        return "\n".join(lines)


MODULES = {"reference": "test_hmm.ko", "hmmgpu": "hmmgpu.ko"}
# mm/gup_test.c built as a module (guest/gup_test): hmm_gup_test needs it, and
# the stock kernel has no CONFIG_GUP_TEST
GUP_TEST = "/sys/kernel/debug/gup_test"


def unload_module(lab: Lab, name: str, wait_s: float = 10) -> None:
    """rmmod `name` if it is loaded, retrying while it is busy (a killed test
    process may still be exiting); both drivers provide /dev/hmm_dmirror*, so
    one that stays loaded would silently take the other's run."""
    r = lab.ssh(f"test -d /sys/module/{name} || exit 0; "
                f"for i in $(seq {int(wait_s * 5)}); do rmmod {name} 2>/tmp/rmmod.err && exit 0; "
                "sleep 0.2; done; cat /tmp/rmmod.err; "
                f"grep '^{name} ' /proc/modules; exit 1", check=False)
    if r.exit_code:
        raise HmmgpuError(f"cannot unload {name} for the other driver's run: "
                          + " ".join(r.stdout.split()))


def load_gup_test(lab: Lab) -> None:
    """The gup_test debugfs file, from the kernel itself or our module."""
    lab.ssh("grep -q ' /sys/kernel/debug ' /proc/mounts || "
            "mount -t debugfs none /sys/kernel/debug")
    if lab.ssh(f"test -e {GUP_TEST}", check=False).exit_code:
        lab.ssh(f"insmod {lab.guest_bin('gup_test.ko')} && test -e {GUP_TEST}")


def run_in_lab(lab: Lab, mode: str, hmm_tests_args: str = "",
               load: bool = True) -> SelftestResult:
    """Run hmm-tests in a booted lab against test_hmm.ko ("reference") or the
    emulated GPUs ("hmmgpu"); only one of the two modules is loaded at a time,
    as both provide /dev/hmm_dmirror*. `load=False`: against whatever driver
    the caller loaded (the edit loop's build of the user's module)."""
    if mode not in MODULES:
        raise HmmgpuError(f"unknown selftest mode {mode!r}")
    if load:
        for other in set(MODULES.values()) - {MODULES[mode]}:
            unload_module(lab, other.removesuffix(".ko"))
        lab.ssh(f"test -d /sys/module/{MODULES[mode].removesuffix('.ko')} || "
                f"insmod {lab.guest_bin(MODULES[mode])}")
    load_gup_test(lab)
    if lab.config.gdb_port and mode == "hmmgpu":
        print(f"hmmgpu: hmmgpu.ko loaded; gdb: {lab.gdb_command()}", flush=True)
    since = lab.console.size()
    t0 = time.monotonic()
    cmd = f"cd /tmp && {lab.guest_bin('hmm-tests')} {hmm_tests_args}".strip()
    try:
        r = lab.guest.run(cmd, check=False, timeout=SELFTEST_TIMEOUT_S)
    except Exception as e:  # noqa: BLE001 - QEMU died under it (fail-fast, --timeout)
        if lab.qemu_alive():
            raise
        r = Result(cmd, "", f"connection lost: {e}", -1, time.monotonic() - t0)
    wall = time.monotonic() - t0
    (lab.run_dir / f"hmm-tests-{mode}.tap").write_text(r.stdout + r.stderr)
    kernel_failure = ""
    try:
        lab.check_console(since)
    except GuestKernelError as e:
        kernel_failure = f"{e.args[0]}\n{e.excerpt}"
    if not kernel_failure and not lab.qemu_alive():
        kernel_failure = (f"{lab.killed_by_watchdog or 'QEMU exited'} during hmm-tests\n"
                          f"{lab.console.tail()}")
    report = parse(r.stdout)
    json_path = lab.run_dir / f"selftest-{mode}.json"
    sanitizer = lab.sanitizer_reports(clear=True) if lab.qemu_alive() else []
    result = SelftestResult(mode, report, wall, lab.run_dir, json_path, r.exit_code,
                            lab.run_dir / f"selftest-{mode}.xml", kernel_failure, sanitizer)
    result.junit_path.write_text(to_junit(report, f"hmm-tests.{mode}", wall, kernel_failure,
                                          sanitizer))
    json_path.write_text(json.dumps({
        "mode": mode, "accel": lab.accel, "wall_s": round(wall, 1),
        "command": cmd, "exit_code": r.exit_code, "ok": result.ok,
        "kernel_failure": kernel_failure, "sanitizer": result.sanitizer,
        **report.to_dict()}, indent=2))
    return result



def run_selftest(modes: list[str], cfg: LabConfig | None = None,
                 hmm_tests_args: list[str] | None = None,
                 on_boot: Callable[[Lab], None] | None = None) -> list[SelftestResult]:
    """Boot one lab (two GPUs when the emulated GPU is tested) and run
    hmm-tests once per mode, in order; a mode whose run ended the VM (a
    fail-fast kernel failure, --timeout) is the last."""
    cfg = replace(cfg or LabConfig(), gpus=2 if "hmmgpu" in modes else 0,
                  memory_mb=SELFTEST_MEMORY_MB)
    with Lab(cfg) as lab:
        lab.boot()
        if on_boot:
            on_boot(lab)
        args = " ".join(shlex.quote(a) for a in hmm_tests_args or [])
        results = []
        for mode in modes:
            results.append(run_in_lab(lab, mode, args))
            if not lab.qemu_alive():
                break
        return results


def compare(results: list[SelftestResult]) -> str:
    """Per-case status side by side, for cases whose status differs."""
    by_mode = {r.mode: {c.name: c.status for c in r.report.cases} for r in results}
    if len(by_mode) < 2:
        return ""
    modes = list(by_mode)
    names = sorted(set().union(*by_mode.values()))
    rows = [f"  {n:<60} " + " ".join(f"{by_mode[m].get(n, '-'):<9}" for m in modes)
            for n in names if len({by_mode[m].get(n) for m in modes}) > 1]
    head = f"  {'case (where the modes differ)':<60} " + " ".join(f"{m:<9}" for m in modes)
    return "\n".join([head, *rows]) if rows else "  same result for every case"
