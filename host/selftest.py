"""`hmmgpu selftest`: the kernel's hmm-tests in the lab VM.

hmm-tests runs directly (test_hmm.sh always exits 0), its TAP is parsed, and
the result is saved as JSON and as JUnit XML (what CI systems display) next to
the run's logs. A guest kernel WARNING, Oops or panic during the run fails it
whatever the TAP says.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import HmmgpuError
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
    tap_path: Path | None = None  # hmm-tests' output
    device_deaths: list[str] = field(default_factory=list)  # device servers that died

    @property
    def ok(self) -> bool:
        return (not self.report.failed and self.report.complete and not self.kernel_failure
                and not self.sanitizer and not self.device_deaths)

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
        for death in self.device_deaths:
            lines.append(f"  DEVICE: {death}")
        if self.sanitizer:
            lines.append(f"  DRIVER SANITIZER: {len(self.sanitizer)} report(s), first: "
                         f"{self.sanitizer[0]}")
        return "\n".join(lines)


MODULES = {"reference": "test_hmm.ko", "hmmgpu": "hmmgpu.ko"}

# test_hmm.ko's coherent devices (minors 2 and 3) need "special purpose
# memory": guest RAM the kernel was told to leave alone with memmap=, one
# DEVMEM_CHUNK_SIZE chunk per device at spm_addr_dev0/1 (lib/test_hmm.c:37,
# :686). It lies at the start of the RAM above 4 GiB.
SPM_BASE = 1 << 32
SPM_CHUNK = 256 << 20
SPM_KERNEL_ARG = f"memmap={2 * SPM_CHUNK >> 20}M${SPM_BASE:#x}"
SPM_MODULE_ARGS = f"spm_addr_dev0={SPM_BASE:#x} spm_addr_dev1={SPM_BASE + SPM_CHUNK:#x}"
# q35 puts RAM above 4 GiB only in guests of >= 2816 MiB, keeping 2 GiB below
Q35_HIGHMEM_FROM_MB, Q35_LOWMEM_MB = 2816, 2048
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


def with_spm(cfg: LabConfig) -> LabConfig:
    """`cfg` with special-purpose memory reserved for test_hmm.ko's coherent
    devices."""
    high_mb = cfg.memory_mb - Q35_LOWMEM_MB if cfg.memory_mb >= Q35_HIGHMEM_FROM_MB else 0
    if high_mb < 2 * SPM_CHUNK >> 20:
        raise HmmgpuError(f"test_hmm.ko's coherent mode needs {2 * SPM_CHUNK >> 20} MiB of guest "
                          f"RAM above 4 GiB; {cfg.memory_mb} MiB of RAM has {high_mb}")
    return replace(cfg, kernel_args=f"{cfg.kernel_args} {SPM_KERNEL_ARG}".strip())


def has_spm(lab: Lab) -> bool:
    return SPM_KERNEL_ARG in lab.config.kernel_args.split()


def check_spm(lab: Lab) -> None:
    """The reserved range is firmware RAM the kernel does not use: anything
    else (no RAM there, a kernel that ignored memmap=) would hand test_hmm.ko
    a range that is not memory."""
    end = SPM_BASE + 2 * SPM_CHUNK - 1
    firmware = lab.ssh("cd /sys/firmware/memmap 2>/dev/null && "
                       "for d in *; do echo $(cat $d/start $d/end) $(cat $d/type); done",
                       check=False).stdout
    ram = [(int(a, 16), int(b, 16)) for a, b, *t in (ln.split() for ln in firmware.splitlines())
           if " ".join(t) == "System RAM"]
    if firmware and not any(a <= SPM_BASE and end <= b for a, b in ram):
        raise HmmgpuError(f"special-purpose memory {SPM_BASE:#x}-{end:#x} is not guest RAM")
    for line in lab.ssh("cat /proc/iomem").stdout.splitlines():
        span, _, name = line.strip().partition(" : ")
        a, b = (int(x, 16) for x in span.split("-"))
        if name == "System RAM" and a <= end and SPM_BASE <= b:
            raise HmmgpuError(f"the guest kernel uses {a:#x}-{b:#x} as RAM: {SPM_KERNEL_ARG} "
                              "did not reserve it")


def load_driver(lab: Lab, mode: str) -> None:
    """Load `mode`'s driver (test_hmm.ko in coherent mode when the lab
    reserved special-purpose memory for it), unloading the other one."""
    for other in set(MODULES.values()) - {MODULES[mode]}:
        unload_module(lab, other.removesuffix(".ko"))
    args = ""
    if mode == "reference" and has_spm(lab):
        check_spm(lab)
        args = " " + SPM_MODULE_ARGS
    lab.ssh(f"test -d /sys/module/{MODULES[mode].removesuffix('.ko')} || "
            f"insmod {lab.guest_bin(MODULES[mode])}{args}")


def run_in_lab(lab: Lab, mode: str, hmm_tests_args: str = "",
               load: bool = True, label: str = "") -> SelftestResult:
    """Run hmm-tests in a booted lab against test_hmm.ko ("reference") or the
    emulated GPUs ("hmmgpu"); only one of the two modules is loaded at a time,
    as both provide /dev/hmm_dmirror*. `load=False`: against whatever driver
    the caller loaded (the edit loop's build of the user's module). The
    results are saved as hmm-tests-<label>.tap etc. (label: the mode)."""
    label = label or mode
    if mode not in MODULES:
        raise HmmgpuError(f"unknown selftest mode {mode!r}")
    if load:
        load_driver(lab, mode)
    load_gup_test(lab)
    if lab.config.gdb_port and mode == "hmmgpu":
        print(f"hmmgpu: hmmgpu.ko loaded; gdb: {lab.gdb_command()}", flush=True)
    since = lab.console.size()
    t0 = time.monotonic()
    cmd = f"cd /tmp && {lab.guest_bin('hmm-tests')} {hmm_tests_args}".strip()
    # test_hmm.ko in coherent mode WARNs by itself: when its one chunk runs
    # out it maps the same range again (lib/test_hmm.c:686 ->
    # mm/memremap.c:158). The reference is the anchor, not under test: its
    # WARN is its result's kernel failure and does not end the run.
    keep_going = lab.fail_fast_suspended() if mode == "reference" and has_spm(lab) \
        else contextlib.nullcontext()
    try:
        with keep_going:
            r = lab.guest.run(cmd, check=False, timeout=SELFTEST_TIMEOUT_S)
    except Exception as e:  # noqa: BLE001 - QEMU died under it (fail-fast, --timeout)
        if not lab.died_under_error():
            raise
        r = Result(cmd, "", f"connection lost: {e}", -1, time.monotonic() - t0)
    wall = time.monotonic() - t0
    tap_path = lab.run_dir / f"hmm-tests-{label}.tap"
    tap_path.write_text(r.stdout + r.stderr)
    kernel_failure = ""
    if failures := lab.console.failures(since):
        more = f" (and {len(failures) - 1} more reports: {lab.console.path})" \
            if len(failures) > 1 else ""
        kernel_failure = f"guest kernel: {failures[0].line}{more}\n{failures[0].excerpt}"
    if not kernel_failure and not lab.qemu_alive():
        kernel_failure = (f"{lab.gone_why()} during hmm-tests\n"
                          f"{lab.console.tail()}")
    report = parse(r.stdout)
    json_path = lab.run_dir / f"selftest-{label}.json"
    sanitizer = lab.sanitizer_reports(clear=True) if lab.qemu_alive() else []
    result = SelftestResult(mode, report, wall, lab.run_dir, json_path, r.exit_code,
                            lab.run_dir / f"selftest-{label}.xml", kernel_failure, sanitizer,
                            tap_path, lab.device_deaths())
    result.junit_path.write_text(to_junit(report, f"hmm-tests.{label}", wall, kernel_failure,
                                          sanitizer, result.device_deaths))
    json_path.write_text(json.dumps({
        "mode": mode, "accel": lab.accel, "wall_s": round(wall, 1),
        "command": cmd, "exit_code": r.exit_code, "ok": result.ok,
        "kernel_failure": kernel_failure, "sanitizer": result.sanitizer,
        "device_deaths": result.device_deaths, **report.to_dict()}, indent=2))
    return result



def run_selftest(modes: list[str], cfg: LabConfig | None = None,
                 hmm_tests_args: list[str] | None = None,
                 on_boot: Callable[[Lab], None] | None = None,
                 spm: bool = False) -> list[SelftestResult]:
    """Boot one lab (two GPUs when the emulated GPU is tested) and run
    hmm-tests once per mode, in order; a mode whose run ended the VM (a
    fail-fast kernel failure, --timeout) is the last. `spm`: test_hmm.ko
    gets special-purpose memory, so it runs the coherent cases too."""
    cfg = replace(cfg or LabConfig(), gpus=2 if "hmmgpu" in modes else 0,
                  memory_mb=SELFTEST_MEMORY_MB)
    if spm and "reference" in modes:
        cfg = with_spm(cfg)
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


def verdict(modes: list[str], results: list[SelftestResult]) -> bool:
    """Success of a selftest run: every mode ran and the driver under test
    passed. Side by side (--compare, the demo) the emulated GPUs are under
    test and test_hmm.ko is the anchor: its run must complete, its own
    failures (in coherent mode it has some, and a WARN) are shown, not ours."""
    if len(results) < len(modes):
        return False
    by_mode = {r.mode: r for r in results}
    if "hmmgpu" not in by_mode:
        return by_mode["reference"].ok
    ref = by_mode.get("reference")
    return by_mode["hmmgpu"].ok and (ref is None or ref.report.complete)


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
