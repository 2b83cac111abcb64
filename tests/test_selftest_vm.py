"""The kernel's own hmm-tests, unmodified, in the lab VM against the reference
test_hmm.ko: the baseline the emulated GPU is measured against."""

from __future__ import annotations

import json
import re

import pytest

from hmmgpu.host.lab import Lab, LabConfig
from hmmgpu.host.selftest import SELFTEST_MEMORY_MB, run_in_lab

pytestmark = pytest.mark.vm

# benchmark_thp_migration measures speed under its own 120 s timeout, which a
# TCG guest on a busy 2-core host can exceed; correctness cases all run.
TIMING_ONLY = ["-T", "benchmark_thp_migration"]


def test_reference_hmm_tests_run_completely_without_failures(paths) -> None:
    with Lab(LabConfig(gpus=0, memory_mb=SELFTEST_MEMORY_MB), paths) as lab:
        lab.boot()
        result = run_in_lab(lab, "reference", " ".join(TIMING_ONLY))
    print(result.summary())
    assert result.report.complete, result.summary()
    assert "benchmark_thp_migration" not in {c.name.rsplit(".", 1)[-1]
                                             for c in result.report.cases}
    assert not result.kernel_failure, result.kernel_failure
    assert result.report.failed == [], result.summary()
    counts = result.report.count()
    assert counts["pass"] > 0
    saved = json.loads(result.json_path.read_text())
    assert saved["totals"] == dict(counts) and saved["ok"] is True


# Skipped on both drivers, with the selftest's own reason: the stock kernel
# has no CONFIG_GUP_TEST (the test_hmm.ko reference skips it the same way).
SKIPPED = {"hmm_gup_test": "could not find gup_test driver"}


def device_private_cases(paths) -> list[str]:
    """Every hmm and hmm2 test of the pinned selftest source, as the
    device-private variant's case names: the list is the upstream file's."""
    src = (paths.linux_src / "tools/testing/selftests/mm/hmm-tests.c").read_text()
    tests = re.findall(r"^TEST_F(?:_TIMEOUT)?\((hmm2?),\s*(\w+)", src, re.M)
    assert len(tests) > 30, "hmm-tests.c not parsed"
    return sorted(f"{f}.{f}_device_private.{t}" for f, t in tests)


def timed_out(result) -> set[str]:
    """Cases kselftest's harness ended at its fixed 30 s per-case limit (under
    TCG on a busy host migrate_remap_fault's 24 rounds can take longer): a
    figure of speed, not of correctness, so the pass lists leave them out."""
    tap = (result.run_dir / f"hmm-tests-{result.mode}.tap").read_text()
    return set(re.findall(r"^# (\w+): Test terminated by timeout", tap, re.M))


# every device-private case but the timing one, hmm and hmm2
DEVICE_PRIVATE = " ".join([*TIMING_ONLY, "-v hmm_device_private", "-v hmm2_device_private"])


def check_device_private(paths, result) -> None:
    """Every device-private case of the upstream file ran; each passed, but
    SKIPPED with its reason and at most one kselftest timeout."""
    expected = [c for c in device_private_cases(paths)
                if not c.endswith(".benchmark_thp_migration")]
    assert not result.kernel_failure, result.kernel_failure
    assert result.report.complete, result.summary()
    assert sorted(c.name for c in result.report.cases) == expected, result.summary()
    slow = timed_out(result)
    assert len(slow) <= 1, f"timed out: {slow}"
    for c in result.report.cases:
        name = c.name.rsplit(".", 1)[-1]
        if name in SKIPPED:
            assert c.status == "skip" and SKIPPED[name] in c.reason, c
        elif name not in slow:
            assert c.status == "pass", f"{c.name}: {c.status}\n{result.summary()}"


def test_emulated_gpus_pass_every_device_private_case_and_the_sanitizer_stays_silent(
        paths) -> None:
    with Lab(LabConfig(gpus=2, memory_mb=SELFTEST_MEMORY_MB), paths) as lab:
        lab.boot()
        result = run_in_lab(lab, "hmmgpu", DEVICE_PRIVATE)
        irqs = lab.ssh("grep -c 'PCI-MSIX.*hmmgpu' /proc/interrupts").stdout
    print(result.summary())
    check_device_private(paths, result)
    assert int(irqs) == 2 * 4, "both GPUs serve interrupts"
    # the device's driver sanitizer watched the whole run and found nothing
    assert result.sanitizer == [], "\n".join(result.sanitizer)
