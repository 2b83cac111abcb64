"""The main job: boot the lab with two emulated GPUs, show that the device
answers (registers over MMIO, an MSI-X interrupt), run the kernel's hmm-tests
against the emulated GPUs (hmmgpu.ko) and then against the reference
test_hmm.ko in the same VM, and print both summaries side by side.

The reference runs in its coherent mode (special-purpose memory reserved at
boot), so both sides run all the cases. Exit status: 0 when the emulated GPUs
passed every case without a guest kernel failure or sanitizer report and the
reference's run completed; the reference's own failures are printed beside
them, not counted (selftest.verdict)."""

from __future__ import annotations

import time
from dataclasses import replace

from ..device import hwdef as hw
from .errors import HmmgpuError
from .lab import Lab, LabConfig
from .selftest import SELFTEST_MEMORY_MB, compare, run_in_lab, verdict, with_spm


def gpu_sysfs(lab: Lab) -> str:
    """The sysfs directory of the first emulated GPU in the guest."""
    for dev in lab.guest_pci_devices():
        if (int(dev["vendor"], 16), int(dev["device"], 16)) == (hw.PCI_VENDOR_ID,
                                                                hw.PCI_DEVICE_ID):
            return f"/sys/bus/pci/devices/{dev['slot']}"
    raise HmmgpuError("the guest does not see the emulated GPU")


def exercise_gpu(lab: Lab) -> list[str]:
    """Load the driver, check ID, scratch and a test interrupt; return report lines."""
    d = gpu_sysfs(lab)
    lab.ssh(f"insmod {lab.guest_bin('hmmgpu.ko')}")
    ident = int(lab.ssh(f"cat {d}/id").stdout, 16)
    version = lab.ssh(f"cat {d}/version").stdout.strip()
    lab.ssh(f"echo 0xc0ffee42 > {d}/scratch")
    scratch = int(lab.ssh(f"cat {d}/scratch").stdout, 16)
    before = int(lab.ssh(f"cat {d}/irq_counts").stdout.split()[hw.IrqVector.TEST])
    lab.ssh(f"echo {int(hw.IrqVector.TEST)} > {d}/test_doorbell")
    deadline = time.monotonic() + 10
    after = before
    while after == before and time.monotonic() < deadline:
        after = int(lab.ssh(f"cat {d}/irq_counts").stdout.split()[hw.IrqVector.TEST])
    checks = [
        (ident == hw.ID_MAGIC, f"ID register 0x{ident:08x}"),
        (version == f"{hw.VERSION_MAJOR}.{hw.VERSION_MINOR}", f"interface version {version}"),
        (scratch == 0xC0FFEE42, f"scratch round trip 0x{scratch:08x}"),
        (after == before + 1, f"test doorbell -> MSI-X vector {int(hw.IrqVector.TEST)} "
                              f"interrupts {before} -> {after}"),
    ]
    bad = [msg for ok, msg in checks if not ok]
    if bad:
        raise HmmgpuError("the emulated GPU misbehaved: " + "; ".join(bad))
    return [f"  ok  {msg}" for _, msg in checks]


def run_demo(cfg: LabConfig | None = None) -> int:
    with Lab(with_spm(replace(cfg or LabConfig(), gpus=2, memory_mb=SELFTEST_MEMORY_MB))) as lab:
        lab.boot()
        print(f"VM ready in {lab.boot_seconds:.1f} s ({lab.accel}, {lab.kernel.label})")
        print(f"emulated GPU {hw.PCI_VENDOR_ID:04x}:{hw.PCI_DEVICE_ID:04x} in the guest:")
        print("\n".join(exercise_gpu(lab)))
        results = []
        for mode, what in (("hmmgpu", "the emulated GPUs (hmmgpu.ko)"),
                           ("reference", "the kernel's reference test_hmm.ko")):
            print(f"hmm-tests against {what} ...", flush=True)
            results.append(run_in_lab(lab, mode))
            print(results[-1].summary())
            if not lab.qemu_alive():
                break
        print(compare(results))
        print("results: " + ", ".join(f"{r.json_path} {r.junit_path.name}" for r in results))
        print(f"logs: {lab.run_dir}")
        return 0 if verdict(["hmmgpu", "reference"], results) else 1
