"""Exceptions of the harness. Each says what failed and where its log is; the
CLI prints them as one line."""

from __future__ import annotations

from pathlib import Path


class HmmgpuError(Exception):
    """Base class: a failure the user can act on, printed without traceback."""

    def __init__(self, message: str, log: Path | None = None) -> None:
        super().__init__(message)
        self.log = log

    def __str__(self) -> str:
        msg = super().__str__()
        return f"{msg} (log: {self.log})" if self.log else msg


class SetupError(HmmgpuError):
    """Provisioning could not complete."""


class CommandFailed(HmmgpuError):
    """A host command exited non-zero."""


class VmError(HmmgpuError):
    """The VM failed to start, stopped answering, or QMP failed."""


class GuestKernelError(VmError):
    """The guest kernel printed an Oops, BUG, WARNING or panic."""

    def __init__(self, message: str, excerpt: str, log: Path | None = None) -> None:
        super().__init__(message, log)
        self.excerpt = excerpt

    def __str__(self) -> str:
        return f"{super().__str__()}\n{self.excerpt}"


class GuestCommandFailed(VmError):
    """A command run in the guest over SSH exited non-zero."""

    def __init__(self, command: str, exit_code: int, stdout: str, stderr: str) -> None:
        super().__init__(f"guest command failed ({exit_code}): {command}\n{stderr or stdout}")
        self.command = command
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr
