"""Talk to a running device server's control socket (device/control.py)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from .errors import HmmgpuError


class TraceControl:
    """Trace start/stop/mark/dump and sanitizer reports for one device server."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.timeout = timeout

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(self.timeout)
                s.connect(str(self.path))
                with s.makefile("rw") as f:
                    f.write(json.dumps({"op": op, **args}) + "\n")
                    f.flush()
                    line = f.readline()
        except OSError as e:
            raise HmmgpuError(f"device control socket {self.path}: {e.strerror or e}") from e
        if not line:
            raise HmmgpuError(f"device control socket {self.path}: no reply")
        reply = json.loads(line)
        if not reply.pop("ok", False):
            raise HmmgpuError(f"device {self.path.stem}: {reply.get('error')}")
        return reply

    def start(self, path: Path | None = None, capacity: int | None = None) -> dict[str, Any]:
        """Record; stream to `path` if given, else keep the newest records in memory."""
        return self.request("start", path=str(path) if path else None, capacity=capacity)

    def stop(self) -> dict[str, Any]:
        return self.request("stop")

    def status(self) -> dict[str, Any]:
        return self.request("status")

    def mark(self, text: str) -> int:
        return int(self.request("mark", text=text)["mark"])

    def dump(self, path: Path) -> int:
        """Write the records held in memory to `path`; returns how many."""
        return int(self.request("dump", path=str(path))["records"])

    def sanitizer(self, clear: bool = False) -> dict[str, Any]:
        """The driver sanitizer's reports so far ({"count", "reports"}); `clear` empties them."""
        return self.request("sanitizer", clear=clear)

    def inject(self, kind: str, **scope: Any) -> dict[str, Any]:
        """Start an injection (device/inject.py): kind and scope, e.g.
        inject("dma_error", start=addr, end=addr + 4096, count=1)."""
        return self.request("inject", add={"kind": kind, **scope})["injection"]

    def uninject(self, ident: int | None = None) -> int:
        """Remove one injection, or all; how many went."""
        return int(self.request("inject", remove=ident)["removed"])

    def injections(self) -> list[dict[str, Any]]:
        return self.request("inject")["active"]

    def alive(self) -> bool:
        try:
            self.status()
            return True
        except HmmgpuError:
            return False
