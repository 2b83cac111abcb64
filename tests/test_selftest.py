"""The selftest runner's decisions, without a VM: the reference's special-
purpose memory and what a run's exit status means."""

from __future__ import annotations

from pathlib import Path

import pytest
from clirun import hmmgpu

from hmmgpu.host.errors import HmmgpuError
from hmmgpu.host.lab import LabConfig
from hmmgpu.host.selftest import SPM_KERNEL_ARG, SelftestResult, verdict, with_spm
from hmmgpu.host.tap import parse


def test_special_purpose_memory_is_reserved_above_4_gib_on_the_kernel_command_line() -> None:
    cfg = with_spm(LabConfig(memory_mb=4096, kernel_args="quiet"))
    assert cfg.kernel_args == "quiet memmap=512M$0x100000000" == f"quiet {SPM_KERNEL_ARG}"


@pytest.mark.parametrize("memory_mb", [2048, 2560, 2815])
def test_a_guest_without_512_mib_above_4_gib_is_refused_for_special_purpose_memory(
        memory_mb: int) -> None:
    with pytest.raises(HmmgpuError, match="above 4 GiB"):
        with_spm(LabConfig(memory_mb=memory_mb))


def result(mode: str, tap: str, kernel_failure: str = "") -> SelftestResult:
    return SelftestResult(mode, parse(tap), 1.0, Path("."), Path("x.json"), 0,
                          kernel_failure=kernel_failure)


PASS = "TAP version 13\n1..2\nok 1 a\nok 2 b\n"
FAIL = "TAP version 13\n1..2\nok 1 a\nnot ok 2 b\n"
CUT = "TAP version 13\n1..2\nok 1 a\n"


def test_side_by_side_the_emulated_gpus_decide_and_the_reference_must_complete() -> None:
    both = ["hmmgpu", "reference"]
    ref_warned = result("reference", FAIL, "WARNING: mm/memremap.c:158")
    assert verdict(both, [result("hmmgpu", PASS), ref_warned])
    assert not verdict(both, [result("hmmgpu", FAIL), result("reference", PASS)])
    assert not verdict(both, [result("hmmgpu", PASS, "WARNING: x"), result("reference", PASS)])
    assert not verdict(both, [result("hmmgpu", PASS), result("reference", CUT)])
    assert not verdict(both, [result("hmmgpu", PASS)])  # the VM ended before the reference


def test_alone_each_driver_is_under_test() -> None:
    assert verdict(["reference"], [result("reference", PASS)])
    assert not verdict(["reference"], [result("reference", FAIL)])
    assert not verdict(["hmmgpu"], [result("hmmgpu", FAIL)])


def test_spm_without_the_reference_is_one_plain_line() -> None:
    r = hmmgpu("selftest", "--spm")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        "hmmgpu: --spm is test_hmm.ko's coherent mode: use it with --reference or --compare"]
