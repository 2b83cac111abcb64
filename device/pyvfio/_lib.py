"""Loading libvfio-user and declaring the C prototypes pyvfio uses.

Only this module knows C signatures; context.py builds the Python API on top.
The constants mirror include/libvfio-user.h of the libvfio-user that
provisioning builds from Debian's qemu source package.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_bool,
    c_char_p,
    c_int,
    c_size_t,
    c_ssize_t,
    c_uint8,
    c_uint16,
    c_uint32,
    c_uint64,
    c_void_p,
)

# vfu_trans_t / vfu_dev_type_t
VFU_TRANS_SOCK = 0
VFU_DEV_TYPE_PCI = 0
LIBVFIO_USER_FLAG_ATTACH_NB = 1 << 0

# region flags
VFU_REGION_FLAG_READ = 1 << 0
VFU_REGION_FLAG_WRITE = 1 << 1
VFU_REGION_FLAG_RW = VFU_REGION_FLAG_READ | VFU_REGION_FLAG_WRITE
VFU_REGION_FLAG_MEM = 1 << 2
VFU_REGION_FLAG_ALWAYS_CB = 1 << 3

# capability flags
VFU_CAP_FLAG_EXTENDED = 1 << 0
VFU_CAP_FLAG_CALLBACK = 1 << 1
VFU_CAP_FLAG_READONLY = 1 << 2

# region indices of a PCI device
VFU_PCI_DEV_BAR0_REGION_IDX = 0
VFU_PCI_DEV_ROM_REGION_IDX = 6
VFU_PCI_DEV_CFG_REGION_IDX = 7
VFU_PCI_DEV_NUM_REGIONS = 10

# vfu_pci_type_t
VFU_PCI_TYPE_CONVENTIONAL = 0
VFU_PCI_TYPE_EXPRESS = 3

# enum vfu_dev_irq_type
VFU_DEV_INTX_IRQ = 0
VFU_DEV_MSI_IRQ = 1
VFU_DEV_MSIX_IRQ = 2
VFU_DEV_ERR_IRQ = 3
VFU_DEV_REQ_IRQ = 4

# vfu_reset_type_t
VFU_RESET_DEVICE = 0
VFU_RESET_LOST_CONN = 1
VFU_RESET_PCI_FLR = 2


class Iovec(Structure):
    _fields_ = [("iov_base", c_void_p), ("iov_len", c_size_t)]


class DmaInfo(Structure):
    """vfu_dma_info_t"""

    _fields_ = [
        ("iova", Iovec),
        ("vaddr", c_void_p),
        ("mapping", Iovec),
        ("page_size", c_size_t),
        ("prot", c_uint32),
    ]


vfu_ctx_p = c_void_p

LOG_FN = CFUNCTYPE(None, vfu_ctx_p, c_int, c_char_p)
REGION_ACCESS_FN = CFUNCTYPE(c_ssize_t, vfu_ctx_p, POINTER(c_uint8), c_size_t, ctypes.c_longlong,
                             c_bool, use_errno=True)
RESET_FN = CFUNCTYPE(c_int, vfu_ctx_p, c_int, use_errno=True)
QUIESCE_FN = CFUNCTYPE(c_int, vfu_ctx_p, use_errno=True)
DMA_FN = CFUNCTYPE(None, vfu_ctx_p, POINTER(DmaInfo))

_PROTOTYPES: dict[str, tuple[object, list[object]]] = {
    "vfu_create_ctx": (vfu_ctx_p, [c_int, c_char_p, c_int, c_void_p, c_int]),
    "vfu_realize_ctx": (c_int, [vfu_ctx_p]),
    "vfu_attach_ctx": (c_int, [vfu_ctx_p]),
    "vfu_get_poll_fd": (c_int, [vfu_ctx_p]),
    "vfu_run_ctx": (c_int, [vfu_ctx_p]),
    "vfu_destroy_ctx": (None, [vfu_ctx_p]),
    "vfu_setup_log": (c_int, [vfu_ctx_p, LOG_FN, c_int]),
    "vfu_setup_region": (c_int, [vfu_ctx_p, c_int, c_size_t, REGION_ACCESS_FN, c_int,
                                 POINTER(Iovec), c_uint32, c_int, c_uint64]),
    "vfu_setup_device_reset_cb": (c_int, [vfu_ctx_p, RESET_FN]),
    "vfu_setup_device_quiesce_cb": (None, [vfu_ctx_p, QUIESCE_FN]),
    "vfu_setup_device_dma": (c_int, [vfu_ctx_p, DMA_FN, DMA_FN]),
    "vfu_setup_device_nr_irqs": (c_int, [vfu_ctx_p, c_int, c_uint32]),
    "vfu_irq_trigger": (c_int, [vfu_ctx_p, c_uint32]),
    "dma_sg_size": (c_size_t, []),
    "vfu_addr_to_sgl": (c_int, [vfu_ctx_p, c_void_p, c_size_t, c_void_p, c_size_t, c_int]),
    "vfu_sgl_get": (c_int, [vfu_ctx_p, c_void_p, POINTER(Iovec), c_size_t, c_int]),
    "vfu_sgl_put": (None, [vfu_ctx_p, c_void_p, POINTER(Iovec), c_size_t]),
    "vfu_sgl_mark_dirty": (None, [vfu_ctx_p, c_void_p, c_size_t]),
    "vfu_pci_init": (c_int, [vfu_ctx_p, c_int, c_int, c_int]),
    "vfu_pci_set_id": (None, [vfu_ctx_p, c_uint16, c_uint16, c_uint16, c_uint16]),
    "vfu_pci_set_class": (None, [vfu_ctx_p, c_uint8, c_uint8, c_uint8]),
    "vfu_pci_get_config_space": (c_void_p, [vfu_ctx_p]),
    "vfu_pci_add_capability": (c_ssize_t, [vfu_ctx_p, c_size_t, c_int, c_void_p]),
    "vfu_pci_find_capability": (c_size_t, [vfu_ctx_p, c_bool, c_int]),
}

ENV_LIBRARY = "PYVFIO_LIBRARY"

_lib: ctypes.CDLL | None = None


class LibraryNotFound(RuntimeError):
    pass


def load(path: str | os.PathLike[str] | None = None) -> ctypes.CDLL:
    """Load libvfio-user once: from `path`, $PYVFIO_LIBRARY, or the system."""
    global _lib
    if _lib is not None:
        return _lib
    name = os.fspath(path) if path else os.environ.get(ENV_LIBRARY) or ctypes.util.find_library(
        "vfio-user")
    if not name:
        raise LibraryNotFound(
            f"libvfio-user not found: run 'hmmgpu setup' or set {ENV_LIBRARY}")
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as e:
        raise LibraryNotFound(f"cannot load libvfio-user from {name}: {e}") from e
    for fn, (restype, argtypes) in _PROTOTYPES.items():
        f = getattr(lib, fn)
        f.restype = restype
        f.argtypes = argtypes
    _lib = lib
    return lib
