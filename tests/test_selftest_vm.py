"""The kernel's own hmm-tests, unmodified, in the lab VM against the reference
test_hmm.ko: the baseline the emulated GPU is measured against."""

from __future__ import annotations

import json

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
