"""The kernel's own hmm-tests, unmodified, in the lab VM against the reference
test_hmm.ko: the baseline the emulated GPU is measured against."""

from __future__ import annotations

import json
import re

import pytest

from hmmgpu.host.lab import Lab, LabConfig
from hmmgpu.host.selftest import SELFTEST_MEMORY_MB, run_in_lab, with_spm

pytestmark = pytest.mark.vm

# benchmark_thp_migration measures speed under its own 120 s timeout, which a
# TCG guest on a busy 2-core host can exceed; correctness cases all run.
TIMING_ONLY = ["-T", "benchmark_thp_migration"]


def test_reference_runs_every_case_with_special_purpose_memory_through_its_own_warning(
        paths) -> None:
    """test_hmm.ko in its coherent mode, as --compare and the demo run it:
    RAM reserved with memmap= and handed over as spm_addr_dev0/1. Its
    coherent devices exist, so no case skips; its private cases all pass
    (hmm_gup_test with gup_test.ko); what it does with the coherent ones is
    its own (a WARN included), and with fail-fast on the run goes on."""
    cfg = with_spm(LabConfig(gpus=0, memory_mb=SELFTEST_MEMORY_MB, fail_fast=True))
    with Lab(cfg, paths) as lab:
        lab.boot()
        result = run_in_lab(lab, "reference", EVERY_VARIANT)
        alive = lab.qemu_alive()
        devices = lab.ssh("ls /dev/hmm_dmirror*").stdout.split()
    print(result.summary())
    assert alive, lab.killed_by_watchdog
    assert devices == [f"/dev/hmm_dmirror{i}" for i in range(4)]
    assert result.report.complete, result.summary()
    assert sorted(c.name for c in result.report.cases) == [
        c for c in cases(paths, PRIVATE + COHERENT) if not c.endswith(".benchmark_thp_migration")]
    assert not [c.name for c in result.report.cases if c.status == "skip"]
    slow = timed_out(result)
    assert len(slow) <= 1, f"timed out: {slow}"
    for c in result.report.cases:
        if "_device_private." in c.name and c.name.rsplit(".", 1)[-1] not in slow:
            assert c.status == "pass", f"{c.name}: {c.status}\n{result.summary()}"
    saved = json.loads(result.json_path.read_text())
    assert saved["totals"] == dict(result.report.count()) and saved["ok"] is result.ok


PRIVATE = ("hmm_device_private", "hmm2_device_private")
COHERENT = ("hmm_device_coherent", "hmm2_device_coherent")


def cases(paths, variants=PRIVATE) -> list[str]:
    """Every hmm and hmm2 test of the pinned selftest source, as the case
    names of `variants`: the list is the upstream file's."""
    src = (paths.linux_src / "tools/testing/selftests/mm/hmm-tests.c").read_text()
    tests = re.findall(r"^TEST_F(?:_TIMEOUT)?\((hmm2?),\s*(\w+)", src, re.M)
    assert len(tests) > 30, "hmm-tests.c not parsed"
    return sorted(f"{f}.{v}.{t}" for f, t in tests for v in variants
                  if v.startswith(f + "_"))


def timed_out(result) -> set[str]:
    """Cases kselftest's harness ended at its fixed 30 s per-case limit (under
    TCG on a busy host migrate_remap_fault's 24 rounds can take longer): a
    figure of speed, not of correctness, so the pass lists leave them out."""
    tap = result.tap_path.read_text()
    return set(re.findall(r"^# (\w+): Test terminated by timeout", tap, re.M))


def variant_args(variants) -> str:
    """hmm-tests arguments for every case of `variants` but the timing one."""
    return " ".join([*TIMING_ONLY, *(f"-v {v}" for v in variants)])


DEVICE_PRIVATE = variant_args(PRIVATE)
EVERY_VARIANT = variant_args(PRIVATE + COHERENT)


def check_cases(paths, result, variants=PRIVATE, skips: dict[str, str] | None = None,
                timing: bool = False) -> None:
    """Every case of `variants` in the upstream file ran (`timing`: the
    benchmark too); each passed, but those whose name contains a key of
    `skips` (skipped with that reason) and at most one kselftest timeout."""
    expected = [c for c in cases(paths, variants)
                if timing or not c.endswith(".benchmark_thp_migration")]
    assert not result.kernel_failure, result.kernel_failure
    assert result.report.complete, result.summary()
    assert sorted(c.name for c in result.report.cases) == expected, result.summary()
    slow = timed_out(result)
    assert len(slow) <= 1, f"timed out: {slow}"
    for c in result.report.cases:
        reason = next((r for k, r in (skips or {}).items() if k in c.name), None)
        if reason is not None:
            assert c.status == "skip" and reason in c.reason, c
        elif c.name.rsplit(".", 1)[-1] not in slow:
            assert c.status == "pass", f"{c.name}: {c.status}\n{result.summary()}"


def check_device_private(paths, result) -> None:
    check_cases(paths, result, PRIVATE)


def test_emulated_gpus_pass_every_case_of_hmm_tests_and_the_sanitizer_stays_silent(
        paths) -> None:
    """All 78 cases of the four variants, hmm_gup_test (gup_test.ko) and
    benchmark_thp_migration included, on two GPUs: the coherent ones through
    the VRAM BAR, double_map over the fabric. hmm-tests runs as `hmmgpu
    selftest` runs it, with no arguments."""
    with Lab(LabConfig(gpus=2, memory_mb=SELFTEST_MEMORY_MB), paths) as lab:
        lab.boot()
        result = run_in_lab(lab, "hmmgpu")
        irqs = lab.ssh("grep -c 'PCI-MSIX.*hmmgpu' /proc/interrupts").stdout
    print(result.summary())
    check_cases(paths, result, PRIVATE + COHERENT, timing=True)
    assert result.report.planned == len(result.report.cases)
    assert int(irqs) == 2 * 4, "both GPUs serve interrupts"
    # the device's driver sanitizer watched the whole run and found nothing
    assert result.sanitizer == [], "\n".join(result.sanitizer)
