"""Spotting guest kernel failures in a console log."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from hmmgpu.host.console import Console
from hmmgpu.host.errors import GuestCommandFailed, VmError
from hmmgpu.host.lab import NO_EXIT_STATUS, Lab, LabConfig
from hmmgpu.host.paths import Paths
from hmmgpu.host.ssh import Result

WARN = """[    5.1] hmmgpu_oops: loading
[    5.2] ------------[ cut here ]------------
[    5.2] hmmgpu_oops: deliberate warning
[    5.2] WARNING: CPU: 1 PID: 120 at hmmgpu_oops.c:22 hmmgpu_oops_init+0x1d/0x30
[    5.2] Call Trace:
"""


def test_warning_is_found_with_an_excerpt(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text("[    1.0] Linux version 7.3\n" + WARN)
    (f,) = Console(log).failures()
    assert f.line.startswith("[    5.2] WARNING: CPU: 1")
    assert "deliberate warning" in f.excerpt


def test_only_output_after_the_offset_counts(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text(WARN)
    c = Console(log)
    since = c.size()
    with open(log, "a") as f:
        f.write("[    9.0] all quiet\n")
    assert c.failures(since) == []
    assert len(c.failures()) == 1


def test_a_connection_lost_with_qemu_is_the_vms_death_not_a_command_failure(
        tmp_path: Path) -> None:
    """The SSH channel can close without an exit status (fabric: -1) a moment
    before QEMU is gone, as when QEMU 11.1 aborts under a dying device server
    (a CI run saw this ordering): Lab.ssh then says why the VM is gone, as it
    does when the connection breaks with an exception. With QEMU alive, the
    -1 stays the command's failure."""
    class DroppedGuest:
        def run(self, command: str, check: bool = False, timeout: float | None = None):
            return Result(command, "", "", NO_EXIT_STATUS, 0.0)

    lab = Lab(LabConfig(gpus=0), Paths(tmp_path))
    lab.guest = DroppedGuest()
    lab.qemu_log.write_text("qemu-system-x86_64: util/error.c:62: error_setv: "
                            "Assertion failed\n")
    lab.qemu = subprocess.Popen(["sh", "-c", "sleep 0.3; exit 134"])
    try:
        with pytest.raises(VmError, match=r"QEMU exited \(134\): qemu-system-x86_64: util/"):
            lab.ssh("sleep 5")
        lab.qemu = subprocess.Popen(["sleep", "30"])
        with pytest.raises(GuestCommandFailed):
            lab.ssh("true")
    finally:
        lab.qemu.kill()
        lab.qemu.wait()
