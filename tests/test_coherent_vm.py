"""Device-coherent memory through the VRAM BAR, in the VM: when the driver
uses it, and the reason it gives in dmesg when it cannot."""

from __future__ import annotations

import pytest

from hmmgpu.host.lab import Lab, LabConfig

pytestmark = pytest.mark.vm


def boot_and_load(paths, **cfg) -> tuple[str, str]:
    """dmesg of hmmgpu.ko's probe, and the dmirror minors it created."""
    with Lab(LabConfig(gpus=1, memory_mb=2048, **cfg), paths) as lab:
        lab.boot()
        lab.ssh(f"insmod {lab.guest_bin('hmmgpu.ko')}")
        dmesg = lab.ssh("dmesg | grep 'hmmgpu 0000'").stdout
        minors = lab.ssh("ls /dev | grep hmm_dmirror").stdout.split()
        if "hmm_dmirror2" in minors:  # the CPU reads what the device wrote, in place
            out = lab.ssh(f"cd /tmp && {lab.guest_bin('hmm-tests')} "
                          "-r hmm.hmm_device_coherent.migrate "
                          "-r hmm.hmm_device_coherent.migrate_multiple", check=False).stdout
            assert "pass:2 fail:0" in out, out[-2000:]
        lab.check_console()
    return dmesg, " ".join(minors)


def test_a_vram_bar_above_4g_becomes_coherent_memory_on_minor_2(paths) -> None:
    dmesg, minors = boot_and_load(paths, vram_mb=1024)
    assert "512 MiB device-coherent memory" in dmesg and "64bit pref" in dmesg, dmesg
    assert minors == "hmm_dmirror0 hmm_dmirror2"


@pytest.mark.parametrize("cfg, reason", [
    # 128 MiB fits the 32-bit window, where SeaBIOS places it: the PCI hole is UC
    ({"vram_mb": 128}, "BAR4 lies below 4 GiB, in the PCI hole the firmware maps uncached"),
    ({"vram_mb": 1024, "vram_bar": False}, "the device has no VRAM BAR"),
])
def test_without_a_usable_vram_bar_the_gpu_is_private_only_and_says_why(
        paths, cfg, reason) -> None:
    dmesg, minors = boot_and_load(paths, **cfg)
    assert f"no device-coherent memory: {reason}" in dmesg, dmesg
    assert minors == "hmm_dmirror0"
