"""What a guest kernel needs for the lab, as a merge_config.sh fragment and as
the check that refuses a kernel missing something before it boots.

    hmmgpu kconfig > lab.config
    scripts/kconfig/merge_config.sh -m .config lab.config && make olddefconfig
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import HmmgpuError


@dataclass(frozen=True)
class Option:
    name: str
    value: str  # "y", "m" or a literal
    why: str
    required: bool = True  # False: recommended, the lab works without it
    accept: tuple[str, ...] = ()  # other values that satisfy the lab


LAB = [
    # HMM itself; ZONE_DEVICE depends on memory hot-plug and hot-remove
    Option("MEMORY_HOTPLUG", "y", "ZONE_DEVICE depends on it"),
    Option("MEMORY_HOTREMOVE", "y", "ZONE_DEVICE depends on it"),
    Option("SPARSEMEM_VMEMMAP", "y", "ZONE_DEVICE depends on it"),
    Option("ZONE_DEVICE", "y", "struct pages for device memory"),
    Option("DEVICE_PRIVATE", "y", "VRAM as MEMORY_DEVICE_PRIVATE (migrate_vma_*)"),
    Option("HMM_MIRROR", "y", "hmm_range_fault (no prompt: TEST_HMM=m selects it)"),
    Option("MIGRATION", "y", "migrate_vma_*"),
    Option("TRANSPARENT_HUGEPAGE", "y", "the THP migration cases", required=False),
    # the machine
    Option("PCI", "y", "the GPU is a PCIe device"),
    Option("PCI_MSI", "y", "MSI-X interrupts of the GPU"),
    Option("PCIEPORTBUS", "y", "the root ports the GPUs sit behind"),
    Option("HOTPLUG_PCI_PCIE", "y", "GPU hot-plug and removal", required=False),
    Option("VIRTIO_PCI", "y", "virtio-net, the host share"),
    Option("VIRTIO_NET", "y", "SSH into the guest", accept=("m",)),
    Option("SERIAL_8250_CONSOLE", "y", "the console log the harness reads"),
    Option("BLK_DEV_INITRD", "y", "the guest image is an initramfs"),
    Option("DEVTMPFS", "y", "/dev in the initramfs"),
    Option("TMPFS", "y", "/tmp, /run"),
    Option("UNIX", "y", "dropbear"),
    Option("INET", "y", "SSH"),
    Option("UNIX98_PTYS", "y", "interactive SSH sessions", required=False),
    Option("MODULES", "y", "hmmgpu.ko and your modules"),
    Option("MODULE_UNLOAD", "y", "reloading a module in the edit loop"),
    Option("FUSE_FS", "y", "the host directory share (virtiofs)", required=False,
           accept=("m",)),
    Option("VIRTIO_FS", "y", "the host directory share (virtiofs)", required=False,
           accept=("m",)),
    Option("DEBUG_FS", "y", "device state in /sys/kernel/debug", required=False),
    Option("FW_CFG_SYSFS", "y", "the guest's vmcoreinfo in QEMU's memory dumps",
           required=False, accept=("m",)),
    # the kernel's own tests
    Option("TEST_HMM", "m", "the reference test_hmm.ko of your tree", required=False),
    Option("GUP_TEST", "y", "hmm-tests' hmm_gup_test case", required=False),
    # symbols for gdb, drgn and crash
    Option("DEBUG_INFO_DWARF5", "y", "gdb/drgn/crash with your vmlinux", required=False),
    Option("KALLSYMS", "y", "symbolized traces and Oopses", required=False),
]

DEBUG = [
    Option("DEBUG_KERNEL", "y", "the debug options below"),
    Option("KASAN", "y", "out-of-bounds and use-after-free"),
    Option("KASAN_GENERIC", "y", "the software KASAN mode x86 supports"),
    Option("KASAN_INLINE", "y", "faster KASAN checks"),
    Option("PROVE_LOCKING", "y", "lockdep"),
    Option("DEBUG_ATOMIC_SLEEP", "y", "sleeping in a notifier callback"),
    Option("DEBUG_VM", "y", "mm's VM_BUG_ON and page state checks"),
    Option("DEBUG_PAGEALLOC", "y", "freed pages unmapped"),
    Option("DEBUG_PAGEALLOC_ENABLE_DEFAULT", "y", "... without a boot parameter"),
    Option("DEBUG_OBJECTS", "y", "object lifetime (timers, work, RCU heads)"),
    Option("DEBUG_OBJECTS_FREE", "y", "freeing active objects"),
    Option("DEBUG_OBJECTS_WORK", "y", "work items"),
    Option("DEBUG_OBJECTS_TIMERS", "y", "timers"),
    Option("DEBUG_LIST", "y", "list corruption"),
]


def fragment(debug: bool = False) -> str:
    out = ["# hmmgpu lab kernel options (hmmgpu kconfig" + (" --debug" if debug else "") + ")",
           "# merge with: scripts/kconfig/merge_config.sh -m .config <this file>"
           " && make olddefconfig"]
    for title, opts in (("lab", LAB), ("debug", DEBUG if debug else [])):
        if opts:
            out.append(f"# --- {title}")
        for o in opts:
            out.append(f"# {o.why}{'' if o.required else ' (recommended)'}")
            out.append(f"CONFIG_{o.name}={o.value}")
    return "\n".join(out) + "\n"


def parse_config(text: str) -> dict[str, str]:
    """A .config as {"ZONE_DEVICE": "y", ...}; options set to n are absent."""
    out = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            name, _, value = line.partition("=")
            out[name.removeprefix("CONFIG_")] = value
    return out


def missing(config: dict[str, str], options: list[Option] = LAB,
            required_only: bool = True) -> list[Option]:
    return [o for o in options if (o.required or not required_only)
            and config.get(o.name) not in (o.value, *o.accept)]


def check(config: dict[str, str], where: Path, share: bool = False) -> None:
    """Refuse a kernel that cannot run the lab, naming the first missing option."""
    need = [o for o in LAB if o.required or (share and o.name in ("FUSE_FS", "VIRTIO_FS"))]
    gone = [o for o in need if config.get(o.name) not in (o.value, *o.accept)]
    if gone:
        o = gone[0]
        more = f" (and {len(gone) - 1} more)" if len(gone) > 1 else ""
        raise HmmgpuError(f"{where}: CONFIG_{o.name} is not {o.value} ({o.why}){more}; "
                          "merge 'hmmgpu kconfig' into the config and rebuild")
