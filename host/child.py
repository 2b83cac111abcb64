"""Helper processes of a lab that serve on a UNIX socket (the device servers,
virtiofsd): started with their output in a log file, up once the socket
exists, stopped with SIGTERM and, if that is ignored, SIGKILL."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from .errors import VmError


def start_serving(cmd: list[str], socket: Path, log: Path, what: str,
                  timeout: float) -> subprocess.Popen[bytes]:
    socket.unlink(missing_ok=True)
    with open(log, "ab") as out:  # also what it prints outside its own logging
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while not socket.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise VmError(f"{what} did not start", log)
        time.sleep(0.02)
    return proc


def stop(proc: subprocess.Popen[bytes] | None, timeout: float = 10) -> None:
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
