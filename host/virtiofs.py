"""A host directory shared read-write into the guest: the toolbox's
virtiofsd serving it on a vhost-user socket, QEMU's vhost-user-fs-pci on the
other end (guest RAM is a shared memfd already, which vhost-user needs), and
`mount -t virtiofs` in the guest."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .child import start_serving, stop
from .toolbox import Toolbox


class Virtiofsd:
    def __init__(self, tb: Toolbox, shared: Path, run_dir: Path) -> None:
        self.tb = tb
        self.shared = shared.resolve()
        self.socket = run_dir / "virtiofs.sock"
        self.log = run_dir / "virtiofsd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        r = self.tb.root
        # as root it sandboxes itself in namespaces; a user runs it without
        # (files then belong to that user, as on the host)
        sandbox = "namespace" if os.geteuid() == 0 else "none"
        return [str(r / "lib64/ld-linux-x86-64.so.2"), "--library-path",
                str(r / "usr/lib/x86_64-linux-gnu"), str(r / "usr/libexec/virtiofsd"),
                f"--socket-path={self.socket}", f"--shared-dir={self.shared}",
                f"--sandbox={sandbox}", "--cache=auto"]

    def start(self) -> None:
        self.proc = start_serving(self.command(), self.socket, self.log,
                                  f"virtiofsd for {self.shared}", 10)

    def stop(self) -> None:
        stop(self.proc)
