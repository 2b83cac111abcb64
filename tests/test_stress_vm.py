"""Stress through the real stack: several processes on both GPUs at once
(guest/tools/hmm_stress: CPU writes, device READ/WRITE with faults,
migration both ways, device-exclusive access, fresh regions; every byte
checked against a shadow copy) while the guest kernel compacts memory and
drops its caches in a loop.

One minute in the suite; the soak is the same test for longer:
    HMMGPU_STRESS_SECONDS=600 ./hmmgpu test -k stress
"""

from __future__ import annotations

import os
import re

import pytest

from hmmgpu.host.lab import Lab, LabConfig
from hmmgpu.host.selftest import SELFTEST_MEMORY_MB

pytestmark = pytest.mark.vm

SECONDS = float(os.environ.get("HMMGPU_STRESS_SECONDS", "60"))
PER_GPU = 2


def run_stress(lab: Lab, seconds: float) -> None:
    """PER_GPU hmm_stress processes on each of the lab's two GPUs (hmmgpu.ko
    loaded) for `seconds` under compaction; asserts every byte, every kind of
    operation, VRAM given back, and a quiet sanitizer and console."""
    tool = lab.guest_bin("hmm_stress")
    n = 2 * PER_GPU
    script = (
        "cd /tmp; "
        "(while :; do echo 1 > /proc/sys/vm/compact_memory; "
        "echo 3 > /proc/sys/vm/drop_caches; sleep 1; done) & churn=$!; "
        "pids=; "
        f"for i in $(seq 0 {n - 1}); do "
        f"{tool} /dev/hmm_dmirror$((i % 2)) {seconds:g} $i > /tmp/stress$i.out 2>&1 & "
        "pids=\"$pids $!\"; done; "
        "rc=0; for p in $pids; do wait $p || rc=1; done; kill $churn; "
        f"for i in $(seq 0 {n - 1}); do echo \"$i $(cat /tmp/stress$i.out)\"; done; "
        "exit $rc")
    r = lab.ssh(script, check=False, timeout=seconds + 600)
    print(r.stdout)
    lines = r.stdout.strip().splitlines()
    assert r.ok and len(lines) == n, r.stdout + r.stderr
    ops = 0
    for line in lines:
        m = re.match(r"\d+ ok (\d+) busy=(\d+)", line)
        assert m, line  # a FAIL line names the op, the page and the word
        ops += int(m.group(1))
        for name in ("dev_read", "dev_write", "to_dev", "to_sys", "exclusive"):
            assert int(re.search(rf"{name}=(\d+)", line).group(1)) > 0, line
    assert ops > 100 * n, f"only {ops} operations in {seconds:g} s"
    # every device page came back when the processes exited
    vram = lab.ssh("cat /sys/bus/pci/drivers/hmmgpu/*/vram_pages").stdout.split()
    assert len(vram) == 4 and vram[0::2] == vram[1::2], f"VRAM pages held: {vram}"
    assert lab.sanitizer_reports() == []
    lab.check_console()


def test_processes_on_both_gpus_under_compaction_keep_every_byte(paths) -> None:
    with Lab(LabConfig(gpus=2, memory_mb=SELFTEST_MEMORY_MB), paths) as lab:
        lab.boot()
        lab.ssh(f"insmod {lab.guest_bin('hmmgpu.ko')}")
        run_stress(lab, SECONDS)
