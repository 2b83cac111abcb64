"""Running host commands with their output in a log file."""

from __future__ import annotations

import ctypes
import logging
import shlex
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from .errors import CommandFailed

log = logging.getLogger("hmmgpu")

PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before any fork


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when hmmgpu dies, so a killed
    setup leaves no build (or mount namespace) running behind it."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def run(cmd: Sequence[str], logfile: Path, *, cwd: Path | None = None,
        env: dict[str, str] | None = None, timeout: float | None = None,
        input: bytes | None = None) -> None:
    """Run `cmd`, appending its output to `logfile`; raise CommandFailed with
    the last lines of output when it fails."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    line = shlex.join(str(c) for c in cmd)
    log.debug("run: %s", line)
    with open(logfile, "ab") as f:
        f.write(f"\n$ {line}\n".encode())
        f.flush()
        try:
            p = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, stdout=f,
                               stderr=subprocess.STDOUT, timeout=timeout,
                               stdin=subprocess.DEVNULL if input is None else None,
                               input=input, preexec_fn=_die_with_parent)
        except subprocess.TimeoutExpired as e:
            raise CommandFailed(f"timed out after {timeout:.0f} s: {line}", logfile) from e
        except FileNotFoundError as e:
            raise CommandFailed(f"command not found: {cmd[0]}", logfile) from e
    if p.returncode != 0:
        tail = logfile.read_text(errors="replace").splitlines()[-15:]
        raise CommandFailed(f"exit {p.returncode}: {line}\n  " + "\n  ".join(tail), logfile)
