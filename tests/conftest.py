"""Shared fixtures: provisioning, device servers, and booted labs.

Tests marked `vm` boot QEMU; everything else runs in-process or against a
real device server over its socket.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_rig import Rig

from hmmgpu.host.lab import Lab, LabConfig
from hmmgpu.host.paths import Paths
from hmmgpu.host.provision import Provisioner

# hmmgpu_trace: a failing VM test gets the GPUs' DMA trace in its report
pytest_plugins = ["hmmgpu.host.pytest_plugin", "pytester"]


@pytest.fixture(scope="session")
def paths() -> Paths:
    """The provisioned cache (provisions on first use, with progress on stderr)."""
    p = Paths.default()
    Provisioner(p).ensure()
    return p


@pytest.fixture(scope="session")
def libvfio_user(paths: Paths) -> str:
    from hmmgpu.device import pyvfio
    pyvfio.load(paths.libvfio_user)
    return str(paths.libvfio_user)


@pytest.fixture
def rig() -> Rig:
    """An in-process GPU with the Python reference driver (tests/engine_rig.py)."""
    return Rig()


@contextlib.contextmanager
def serving(paths: Paths, tmp_path: Path, *args: str) -> Iterator[Path]:
    """A real device server process with `args` on a fresh socket."""
    sock = tmp_path / "gpu.sock"
    log = tmp_path / "server.log"
    proc = subprocess.Popen([sys.executable, "-m", "hmmgpu.device.server", "--socket",
                             str(sock), "--log-file", str(log), "--library",
                             str(paths.libvfio_user), "--control",
                             str(sock.with_suffix(".ctl")), *args])
    deadline = time.monotonic() + 20
    # the control socket comes up after the vfio-user one: wait for both
    while not sock.exists() or not sock.with_suffix(".ctl").exists():
        assert proc.poll() is None, f"server died: {log.read_text() if log.exists() else ''}"
        assert time.monotonic() < deadline, "server did not create its socket"
        time.sleep(0.02)
    yield sock
    proc.terminate()
    assert proc.wait(10) == 0, "server did not exit cleanly on SIGTERM"
    assert not sock.exists(), "server left its socket behind"


@pytest.fixture
def server_socket(paths: Paths, tmp_path: Path) -> Iterator[Path]:
    """A real device server process on a fresh socket; yields the socket path."""
    with serving(paths, tmp_path) as sock:
        yield sock


@pytest.fixture(scope="module")
def lab(paths: Paths) -> Iterator[Lab]:
    with Lab(LabConfig(gpus=1, memory_mb=1024), paths) as lab:
        lab.boot()
        yield lab


@pytest.fixture(autouse=True)
def _no_guest_kernel_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a VM test whose guest console shows an Oops, BUG or WARNING, or
    whose GPUs' driver sanitizer reported something the test did not take."""
    if "lab" not in request.fixturenames:
        yield
        return
    lab: Lab = request.getfixturevalue("lab")
    request.getfixturevalue("hmmgpu_trace")
    since = lab.console.size()
    yield
    lab.check_console(since)
    reports = lab.sanitizer_reports(clear=True)
    assert not reports, "driver sanitizer:\n" + "\n".join(reports)
