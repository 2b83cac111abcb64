"""The device server's control socket: trace start/stop/mark/dump while the
VM runs, for the harness and the CLI.

One JSON object per line in each direction on a UNIX stream socket:
{"op": "start", "path": FILE or null, "capacity": N or null} -> {"ok": true, ...status}
{"op": "stop"} | {"op": "status"} -> status; {"op": "mark", "text": T} -> {"mark": id};
{"op": "dump", "path": FILE} -> {"records": n}; {"op": "sanitizer", "clear": bool} ->
{"count": n, "reports": [...]}; {"op": "inject", "add": {kind, scope...}} -> {"injection": {...}},
{"op": "inject", "remove": id or null} -> {"removed": n}, {"op": "inject"} -> {"active": [...]}
(device/inject.py). Errors: {"ok": false, "error": text}.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from typing import Any

from .inject import Injector
from .sanitizer import Sanitizer
from .trace import Recorder

log = logging.getLogger("hmmgpu.device")


def handle(recorder: Recorder, req: dict[str, Any], sanitizer: Sanitizer | None = None,
           injector: Injector | None = None) -> dict[str, Any]:
    op = req.get("op")
    if op == "sanitizer" and sanitizer is not None:
        return sanitizer.take(clear=bool(req.get("clear")))
    if op == "inject" and injector is not None:
        if "add" in req:
            if not isinstance(req["add"], dict):
                raise ValueError("inject add needs an object: {\"kind\": ..., scope}")
            return {"injection": injector.add(req["add"]).describe()}
        if "remove" in req:
            return {"removed": injector.remove(req["remove"])}
        return {"active": injector.list()}
    if op == "start":
        capacity = req.get("capacity")
        if capacity is not None and (not isinstance(capacity, int) or capacity < 1):
            raise ValueError(f"capacity must be a positive integer, not {capacity!r}")
        recorder.start(req.get("path"), capacity)
        return recorder.status()
    if op == "stop":
        return recorder.stop()
    if op == "status":
        return recorder.status()
    if op == "mark":
        return {"mark": recorder.mark(str(req.get("text", "")))}
    if op == "dump":
        if not req.get("path"):
            raise ValueError("dump needs a path")
        return {"records": recorder.dump(req["path"])}
    raise ValueError(f"unknown op {op!r}")


class ControlServer:
    def __init__(self, path: str, recorder: Recorder, sanitizer: Sanitizer | None = None,
                 injector: Injector | None = None) -> None:
        self.path = path
        self.recorder = recorder
        self.sanitizer = sanitizer
        self.injector = injector
        if os.path.exists(path):
            os.unlink(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(4)
        self._thread = threading.Thread(target=self._serve, name="hmmgpu-control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.sock.close()
        if os.path.exists(self.path):
            os.unlink(self.path)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            with conn, conn.makefile("rw") as f:
                for line in f:
                    try:
                        reply = {"ok": True, **handle(self.recorder, json.loads(line),
                                                      self.sanitizer, self.injector)}
                    except (ValueError, OSError, TypeError) as e:
                        reply = {"ok": False, "error": str(e)}
                    log.info("control %s -> %s", line.strip()[:200], reply)
                    f.write(json.dumps(reply) + "\n")
                    f.flush()
