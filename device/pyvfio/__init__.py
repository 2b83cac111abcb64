"""pyvfio: hmmgpu's ctypes binding to libvfio-user.

    ctx = Context("/tmp/gpu.sock")
    ctx.pci_init(); ctx.set_id(0x1234, 0x4847)
    ctx.setup_region(BAR0, 4096, access)
    ctx.setup_irqs(VFU_DEV_MSIX_IRQ, 4)
    ctx.realize()
    ... event loop: attach(), then run() whenever poll_fd is readable
"""

from ._lib import (
    LIBVFIO_USER_FLAG_ATTACH_NB,
    VFU_CAP_FLAG_EXTENDED,
    VFU_CAP_FLAG_READONLY,
    VFU_DEV_INTX_IRQ,
    VFU_DEV_MSI_IRQ,
    VFU_DEV_MSIX_IRQ,
    VFU_PCI_DEV_BAR0_REGION_IDX,
    VFU_PCI_DEV_CFG_REGION_IDX,
    VFU_PCI_TYPE_CONVENTIONAL,
    VFU_PCI_TYPE_EXPRESS,
    VFU_REGION_FLAG_ALWAYS_CB,
    VFU_REGION_FLAG_MEM,
    VFU_REGION_FLAG_READ,
    VFU_REGION_FLAG_RW,
    VFU_REGION_FLAG_WRITE,
    VFU_RESET_DEVICE,
    VFU_RESET_LOST_CONN,
    VFU_RESET_PCI_FLR,
    LibraryNotFound,
    load,
)
from .context import PROT_READ, PROT_WRITE, Context, DmaRegion, SgList, VfuError

__all__ = [
    "LIBVFIO_USER_FLAG_ATTACH_NB", "VFU_CAP_FLAG_EXTENDED", "VFU_CAP_FLAG_READONLY",
    "VFU_DEV_INTX_IRQ", "VFU_DEV_MSI_IRQ", "VFU_DEV_MSIX_IRQ", "VFU_PCI_DEV_BAR0_REGION_IDX",
    "VFU_PCI_DEV_CFG_REGION_IDX", "VFU_PCI_TYPE_CONVENTIONAL", "VFU_PCI_TYPE_EXPRESS",
    "VFU_REGION_FLAG_ALWAYS_CB", "VFU_REGION_FLAG_MEM", "VFU_REGION_FLAG_READ",
    "VFU_REGION_FLAG_RW", "VFU_REGION_FLAG_WRITE", "VFU_RESET_DEVICE", "VFU_RESET_LOST_CONN",
    "VFU_RESET_PCI_FLR", "LibraryNotFound", "load", "PROT_READ", "PROT_WRITE", "Context",
    "DmaRegion", "SgList", "VfuError",
]
