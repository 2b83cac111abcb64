"""A thread-safe, synchronous face for qemu.qmp's async QMPClient.

The client lives in its own event-loop thread, so the harness, its watchdog
and pytest can all call `cmd()` from any thread; events are collected as they
arrive and can be awaited by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from qemu.qmp import EventListener, QMPClient
from qemu.qmp.error import QMPError

from .errors import VmError

T = TypeVar("T")


class Qmp:
    def __init__(self, socket: Path, name: str, connect_timeout: float = 30) -> None:
        self.name = name
        self.socket = socket
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=f"qmp-{name}",
                                        daemon=True)
        self._thread.start()
        self.events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self.client = QMPClient(name)
        deadline = time.monotonic() + connect_timeout
        while not socket.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        while True:
            try:
                self._run(self.client.connect(str(socket)), timeout=5)
                break
            except (QMPError, OSError, TimeoutError) as e:
                if time.monotonic() > deadline:
                    self.close()
                    raise VmError(f"{name}: cannot connect to QMP at {socket}: {e}") from e
                time.sleep(0.1)
        self._listener = EventListener()
        self.client.register_listener(self._listener)
        self._collector = self._run(self._start_collector())

    async def _start_collector(self) -> asyncio.Task[None]:
        return asyncio.ensure_future(self._collect())

    async def _stop_collector(self) -> None:
        self._collector.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._collector

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _collect(self) -> None:
        async for event in self._listener:
            with self._cond:
                self.events.append(dict(event))
                self._cond.notify_all()

    def cmd(self, command: str, timeout: float = 30, **args: Any) -> Any:
        try:
            return self._run(self.client.execute(command, args or None), timeout)
        except (QMPError, TimeoutError, OSError) as e:
            raise VmError(f"{self.name}: QMP {command} {args or ''} failed: {e}") from e

    def wait_event(self, name: str, timeout: float,
                   match: Callable[[dict[str, Any]], bool] = lambda _e: True,
                   since: int = 0) -> dict[str, Any]:
        """Wait for event `name` among those received after index `since`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for e in self.events[since:]:
                    if e.get("event") == name and match(e):
                        return e
                left = deadline - time.monotonic()
                if left <= 0:
                    raise VmError(f"{self.name}: no QMP event {name} within {timeout:.0f} s")
                self._cond.wait(left)

    def close(self) -> None:
        if self.loop.is_running():
            try:
                self._run(self.client.disconnect(), timeout=5)
            except Exception:  # noqa: BLE001 - QEMU may already be gone
                pass
            if hasattr(self, "_collector"):
                self._run(self._stop_collector(), timeout=5)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
            self.loop.close()


def write_dump(qmp: Qmp, path: Path, fmt: str, timeout: float = 600) -> None:
    """dump-guest-memory into `path` (the guest pauses while it is written).
    Detached, then awaited through DUMP_COMPLETED, so a large guest cannot
    run into the command timeout."""
    path.parent.mkdir(parents=True, exist_ok=True)
    since = len(qmp.events)
    qmp.cmd("dump-guest-memory", paging=False, protocol=f"file:{path}", format=fmt,
            detach=True)
    ev = qmp.wait_event("DUMP_COMPLETED", timeout, since=since)
    err = ev.get("data", {}).get("error")
    if err:
        raise VmError(f"dump-guest-memory into {path} failed: {err}")
