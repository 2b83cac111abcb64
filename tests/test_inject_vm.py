"""Fault injection through the real stack: QEMU, the device server, hmmgpu.ko
and the kernel's hmm-tests. Each injection is set over the GPU's control
socket while the guest works; the test asserts what user space sees, that
the guest kernel stays clean (every lab.ssh() checks the console for Oops and
WARN), and that the GPU works again once the injection is gone."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from hmmgpu.host.lab import Lab, LabConfig

pytestmark = pytest.mark.vm

CASES = ("anon_read", "migrate", "migrate_fault")
FENCE_TIMEOUT_MS = 3000


@pytest.fixture(scope="module")
def glab(paths) -> Iterator[Lab]:
    """One GPU, hmmgpu.ko with a short fence timeout (the hang's recovery)."""
    with Lab(LabConfig(gpus=1, memory_mb=2048), paths) as lab:
        lab.boot()
        lab.ssh(f"insmod {lab.guest_bin('hmmgpu.ko')} fence_timeout_ms={FENCE_TIMEOUT_MS}")
        yield lab


def hmm_tests(lab: Lab) -> tuple[dict[str, str], str, float]:
    """Run the cases: ({case: ok | not ok}, the output, seconds)."""
    args = " ".join(f"-r hmm.hmm_device_private.{c}" for c in CASES)
    t0 = time.monotonic()
    out = lab.ssh(f"cd /tmp && {lab.guest_bin('hmm-tests')} {args} 2>&1", check=False,
                  timeout=300).stdout
    took = time.monotonic() - t0
    results = {m[1]: m[0] for m in re.findall(r"^(ok|not ok) \d+ hmm\.\w+\.(\w+)", out, re.M)}
    assert sorted(results) == sorted(CASES), out
    return results, out, took


@pytest.fixture
def gpu(glab: Lab) -> Iterator:
    """GPU 0's control; every injection is removed afterwards, and the GPU
    must then pass the cases again."""
    ctl = glab.gpus[0].trace
    yield ctl
    ctl.uninject()
    results, out, _ = hmm_tests(glab)
    assert set(results.values()) == {"ok"}, f"not working again afterwards:\n{out}"
    assert glab.sanitizer_reports(clear=True) == []


@pytest.fixture
def sleeping(glab: Lab) -> Iterator[None]:
    """hmmgpu.ko without its fence poll (fence_spin_us=0): every fence wait
    sleeps on the interrupt, so no poll word holds one off and the
    interrupt injections below meet every completion."""
    param = "/sys/module/hmmgpu/parameters/fence_spin_us"
    old = glab.ssh(f"cat {param}").stdout.strip()
    glab.ssh(f"echo 0 > {param}")
    yield
    glab.ssh(f"echo {old} > {param}")


def test_a_dma_error_reaches_user_space_as_eio(glab: Lab, gpu) -> None:
    inj = gpu.inject("dma_error", count=1)
    results, out, _ = hmm_tests(glab)
    assert results["anon_read"] == "not ok" and "Expected ret (-5) == 0" in out
    assert results["migrate"] == results["migrate_fault"] == "ok"
    assert inj["count"] == 1 and gpu.injections() == []  # fired once, then gone


def test_lost_interrupts_are_recovered_by_the_driver_s_timeout(glab: Lab, gpu,
                                                                sleeping) -> None:
    gpu.inject("irq_lost")  # every vector, every time
    before = glab.ssh("cat /sys/bus/pci/drivers/hmmgpu/*/irq_counts").stdout.split()
    results, out, took = hmm_tests(glab)
    after = glab.ssh("cat /sys/bus/pci/drivers/hmmgpu/*/irq_counts").stdout.split()
    assert set(results.values()) == {"ok"}, out
    assert before == after  # not one interrupt arrived
    lost = gpu.injections()[0]["hits"]
    assert lost > 10, lost


def test_late_interrupts_are_waited_for(glab: Lab, gpu, sleeping) -> None:
    gpu.inject("irq_delay", delay_us=50_000)  # every vector, every time
    results, out, _ = hmm_tests(glab)
    assert set(results.values()) == {"ok"}, out
    assert gpu.injections()[0]["hits"] > 10


def test_a_hung_queue_is_timed_out_and_reset(glab: Lab, gpu) -> None:
    since = glab.console.size()
    gpu.inject("hang", queue=16, count=1)  # the kernel queue's next command
    results, out, took = hmm_tests(glab)
    assert took >= FENCE_TIMEOUT_MS / 1000, took
    assert "queue 16: submission timed out" in glab.console.text(since)
    # where the hang hit decides which case (if any) sees -ETIMEDOUT
    for case, result in results.items():
        assert result == "ok" or "Expected ret (-110) == 0" in out, (case, out)


def test_a_slow_device_is_slower_and_still_right(glab: Lab, gpu) -> None:
    _, _, fast = hmm_tests(glab)
    gpu.inject("slow", queue=16, delay_us=20_000)
    results, out, slow = hmm_tests(glab)
    assert set(results.values()) == {"ok"}, out
    hits = gpu.injections()[0]["hits"]
    assert hits > 5 and slow >= fast + hits * 0.02 * 0.9, (fast, slow, hits)


def test_faults_lost_to_a_full_fault_buffer_are_replayed_by_the_driver(glab: Lab, gpu) -> None:
    """The driver sees FAULT_OVERFLOW grow and replays its stalled queues, so
    the lost faults come again. User space gets its data; what it can see is
    the extra fault batches, in the count the dmirror ABI reports."""
    gpu.inject("fault_buffer_full", count=3)
    results, out, _ = hmm_tests(glab)
    assert gpu.injections() == []  # all three faults were lost, and recovered from
    failed = re.findall(r"^# hmm-tests.c:\d+:\w+:(Expected .*)$", out, re.M)
    assert all(re.fullmatch(r"Expected buffer->faults \(\d+\) == 1 \(1\)", f)
               for f in failed), out


def test_a_device_gone_fails_its_work_with_enodev_and_a_reload_recovers(
        glab: Lab, gpu) -> None:
    gpu.inject("gone")
    results, out, took = hmm_tests(glab)
    assert set(results.values()) == {"not ok"}
    assert out.count("Expected ret (-19) == 0") == len(CASES) and took < 10, (took, out)
    assert glab.ssh("dmesg | grep -c 'device gone'").stdout.strip() == "1"
    gpu.uninject()
    # the driver gave the device up: binding it again brings it back
    glab.ssh(f"rmmod hmmgpu && insmod {glab.guest_bin('hmmgpu.ko')} "
             f"fence_timeout_ms={FENCE_TIMEOUT_MS}")
